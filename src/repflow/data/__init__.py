"""Datasets, preprocessing, the resumable loader, and per-image caches (memory-mapped array stores)."""

from .cached import CachedDataset
from .datasets import Batch, ImageDataset, ImageFolderDataset, TensorImageDataset, read_file_list, synthetic_images
from .loader import ResumableBatchSampler, build_dataset, build_loader
from .store import ArrayStore, Field, StoreMismatchError

__all__ = [
    "ArrayStore",
    "Batch",
    "CachedDataset",
    "Field",
    "ImageDataset",
    "ImageFolderDataset",
    "ResumableBatchSampler",
    "StoreMismatchError",
    "TensorImageDataset",
    "build_dataset",
    "build_loader",
    "read_file_list",
    "synthetic_images",
]

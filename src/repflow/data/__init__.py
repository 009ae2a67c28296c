"""Datasets, preprocessing and the resumable loader."""

from .datasets import Batch, ImageDataset, ImageFolderDataset, TensorImageDataset, synthetic_images
from .loader import ResumableBatchSampler, build_dataset, build_loader

__all__ = [
    "Batch",
    "ImageDataset",
    "ImageFolderDataset",
    "ResumableBatchSampler",
    "TensorImageDataset",
    "build_dataset",
    "build_loader",
    "synthetic_images",
]

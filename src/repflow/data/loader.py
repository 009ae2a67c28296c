"""Building datasets and a resumable, distributed-aware loader.

The data order is a pure function of (seed, position): epoch ``e`` is a fixed permutation of the dataset
(with fixed flip bits), and the stream of epochs is cut into global batches from the current *image*
position. A global batch is split into ``accum x world`` micro-batches; micro-step ``a`` of rank ``r`` takes
chunk ``a * world + r``. So the union over ranks and accumulation steps is the same global batch whatever
the process count, and a run resumed at image ``n`` continues with image ``n`` of the stream, whatever its
new batch size, with no replay. Random crops (``data.crop: random``) are placed by uniforms drawn with the
epoch's permutation, so they are part of the same pure function.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from ..config import DataConfig
from ..runtime.cpus import available_cpus as cpu_count  # a module name tests can replace
from .datasets import (
    ImageDataset,
    ImageFolderDataset,
    TensorImageDataset,
    prepare_tensor_images,
    read_file_list,
    synthetic_images,
)
from .offline import FASHION_CLASSES, load_fashion_mnist, load_mnist


def build_dataset(cfg: DataConfig, num_classes_hint: int = 10) -> ImageDataset:
    if cfg.dataset in ("fashion_mnist", "mnist"):
        loader = load_fashion_mnist if cfg.dataset == "fashion_mnist" else load_mnist
        images, labels = loader(cfg.split, cfg.root)
        if cfg.subset:
            images, labels = images[: cfg.subset], labels[: cfg.subset]
        names = FASHION_CLASSES if cfg.dataset == "fashion_mnist" else tuple(str(i) for i in range(10))
        images = prepare_tensor_images(images, cfg.resolution, cfg.channels)
        return TensorImageDataset(images, labels, 10, names)
    if cfg.dataset == "synthetic":
        return synthetic_images(cfg.synthetic_size, cfg.resolution, cfg.channels, max(num_classes_hint, 1))
    if cfg.dataset in ("image_folder", "file_list"):
        if not cfg.root:
            what = "/path/to/images" if cfg.dataset == "image_folder" else "/path/to/list.txt"
            raise ValueError(f"data.dataset={cfg.dataset} needs data.root={what}")
        resize = (cfg.crop_resize or int(1.5 * cfg.resolution)) if cfg.crop == "random" else 0
        if cfg.dataset == "image_folder":
            ds = ImageFolderDataset(cfg.root, cfg.resolution, cfg.channels, crop_resize=resize)
        else:
            files, labels = read_file_list(cfg.root)
            ds = ImageFolderDataset(Path(cfg.root).parent, cfg.resolution, cfg.channels, files=files, labels=labels,
                                    crop_resize=resize)  # fmt: skip
        if cfg.subset:
            ds.files, ds.labels = ds.files[: cfg.subset], ds.labels[: cfg.subset]
        return ds
    raise ValueError(f"unknown dataset {cfg.dataset!r}")


class ResumableBatchSampler:
    """Infinite iterator over this rank's micro-batches of ``(index, flip)`` pairs (``(index, flip, (u, v))``
    with ``crops``: where a random crop's window lies), from image ``start_image``."""

    def __init__(
        self,
        size: int,
        global_batch: int,
        seed: int,
        hflip: bool = False,
        rank: int = 0,
        world: int = 1,
        accum: int = 1,
        start_image: int = 0,
        crops: bool = False,
    ):
        if size <= 0:
            raise ValueError("the dataset is empty")
        if global_batch % (world * accum):
            raise ValueError(
                f"global batch {global_batch} is not divisible by processes x accumulation = {world} x {accum}"
            )
        self.size, self.global_batch, self.seed, self.hflip = size, global_batch, seed, hflip
        self.rank, self.world, self.accum, self.start_image = rank, world, accum, start_image
        self.crops = crops
        self.micro = global_batch // (world * accum)
        self._epoch, self._perm, self._flip, self._window = -1, None, None, None

    def _epoch_order(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = torch.randperm(self.size, generator=g)
            self._flip = (torch.rand(self.size, generator=g) < 0.5) & self.hflip
            if self.crops:  # drawn after the flips: the order and flips stay those of a run without crops
                self._window = torch.rand(self.size, 2, generator=g, dtype=torch.float64)
            self._epoch = epoch
        return self._perm, self._flip

    def items(self, step: int, micro_step: int) -> list[tuple[int, bool]]:
        """This rank's items of micro-step ``micro_step`` of the ``step``-th batch after ``start_image``."""
        chunk = micro_step * self.world + self.rank
        start = self.start_image + step * self.global_batch + chunk * self.micro
        out = []
        for k in range(start, start + self.micro):
            perm, flip = self._epoch_order(k // self.size)
            j = k % self.size
            item = (int(perm[j]), bool(flip[j]))
            out.append((*item, tuple(self._window[j].tolist())) if self.crops else item)
        return out

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        step = 0
        while True:
            for a in range(self.accum):
                yield self.items(step, a)
            step += 1


def default_workers(dataset: ImageDataset, device: str = "cuda") -> int:
    """Worker processes for a dataset, sharing the node's CPUs between the processes torchrun started on it.

    - in-memory tensors: 0 (one vectorised index per batch; workers would only add IPC);
    - cached arrays only: 2 when a process has more than 2 CPUs, else 0. A memory-mapped read is one copy per
      row; a worker adds a shared-memory hand-over, which on a 2-core machine costs more than it hides
      (benchmarks/loader_throughput.py: 0 workers deliver the most there), while on a server the workers read
      while the main process drives the GPU;
    - image files: up to 8 (decoding dominates) while a GPU computes; when the CPU computes too, the workers
      take cores from it: none up to 4 CPUs (one decoding pass is a small part of a CPU step), else an eighth
      of them, at most 4.
    """
    if isinstance(dataset, TensorImageDataset):
        return 0
    from .cached import CachedDataset

    per_process = max(1, cpu_count() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if isinstance(dataset, CachedDataset) and not dataset.images:
        return CACHED_WORKERS if per_process > CACHED_WORKERS and device != "cpu" else 0
    if device == "cpu":
        return 0 if per_process <= 4 else min(4, per_process // 8 or 1)
    return max(1, min(8, per_process))


CACHED_WORKERS = 2


def loader_workers(dataset: ImageDataset, setting: int | str, device: str = "cuda") -> int:
    """``data.workers``: a number as is; ``auto`` (or the older -1) chosen for the dataset and device."""
    return default_workers(dataset, device) if setting in ("auto", -1) else int(setting)


def build_loader(dataset: ImageDataset, sampler: ResumableBatchSampler, workers: int | str = -1) -> DataLoader:
    """Pinned memory on CUDA, persistent workers that prefetch 4 batches each."""
    workers = loader_workers(dataset, workers)
    return DataLoader(
        dataset,
        sampler=sampler,
        batch_size=None,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )

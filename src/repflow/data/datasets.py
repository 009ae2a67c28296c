"""Datasets. Each returns whole batches: ``get_batch([(index, flip), ...])`` -> :class:`Batch` (image files with
random crops: ``(index, flip, (u, v))``, the window's place drawn by the sampler).

Fetching a batch at a time lets in-memory datasets index one tensor instead of collating thousands of
items, and lets the sampler decide flips, so augmentation is reproducible whatever the worker count.
Images stay uint8 until they reach the device.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from .transforms import center_crop_arr, pil_to_uint8, random_crop_arr, resize_uint8, to_mode

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Batch:
    images: Tensor  # (B, C, H, W) uint8
    labels: Tensor  # (B,) int64 (zeros for unconditional data)
    indices: Tensor  # (B,) dataset indices
    bad_files: list[str] = field(default_factory=list)  # unreadable files replaced in this batch
    # cached per-sample arrays read instead of recomputed (latent posteriors, encoder features), by name
    arrays: dict[str, Tensor] = field(default_factory=dict)

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        images = self.images.pin_memory() if self.images.numel() else self.images
        arrays = {k: v.pin_memory() for k, v in self.arrays.items()}
        return Batch(images, self.labels.pin_memory(), self.indices, self.bad_files, arrays)


class ImageDataset:
    num_classes: int = 0
    channels: int = 3
    resolution: int = 32
    class_names: tuple[str, ...] = ()
    labels: Tensor  # (N,) int64, readable without decoding any image (cached runs need only these)

    def __len__(self) -> int:
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A short hash of what the dataset holds (files and labels, or pixels): caches are checked against it."""
        raise NotImplementedError

    def get_batch(self, items: list[tuple[int, bool]]) -> Batch:
        raise NotImplementedError

    # DataLoader with batch_size=None hands each element of the batch sampler (a list) to __getitem__.
    def __getitem__(self, items: list[tuple[int, bool]]) -> Batch:
        return self.get_batch(items)


class TensorImageDataset(ImageDataset):
    """Images held in memory as one uint8 tensor (Fashion-MNIST, MNIST, synthetic data)."""

    def __init__(self, images: Tensor, labels: Tensor, num_classes: int, class_names: tuple[str, ...] = ()):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected (N, C, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
        self.images, self.labels = images, labels
        self.num_classes, self.class_names = num_classes, class_names
        self.channels, self.resolution = images.shape[1], images.shape[-1]

    def __len__(self) -> int:
        return self.images.shape[0]

    def fingerprint(self) -> str:
        h = hashlib.sha256(str(tuple(self.images.shape)).encode())
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def get_batch(self, items):
        idx = torch.tensor([i for i, _ in items], dtype=torch.long)
        flip = torch.tensor([f for _, f in items], dtype=torch.bool)
        images = self.images[idx]
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return Batch(images=images, labels=self.labels[idx], indices=idx)


def prepare_tensor_images(images: Tensor, resolution: int, channels: int) -> Tensor:
    """Resize (N, c, h, w) uint8 images to the target resolution and channel count."""
    images = resize_uint8(images, resolution)
    if images.shape[1] == 1 and channels == 3:
        images = images.expand(-1, 3, -1, -1).contiguous()
    if images.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    return images


# a folder whose decoded images fit in this many bytes keeps them after the first epoch, in each loader process (8
# workers on a GPU node: up to 8x this): on a small folder trained on a CPU, decoding and resizing every image every
# step was an eighth of the step time
MEMO_BYTES = 256 << 20


class ImageFolderDataset(ImageDataset):
    """ImageNet layout (``root/<class>/.../<image>``, labels in sorted class-folder order), a flat folder
    (unconditional), or an explicit list of files (optionally labelled). Unreadable files are replaced by the
    next readable one and reported in ``Batch.bad_files``. ``crop_resize`` > 0: items that carry a window
    ``(u, v)`` are cropped there after resizing the short side to ``crop_resize`` (RAE stage 1), others centre."""

    def __init__(
        self,
        root: str | Path,
        resolution: int,
        channels: int = 3,
        files: list[Path] | None = None,
        labels: list[int] | None = None,
        crop_resize: int = 0,
    ):
        self.root = Path(root)
        self.resolution, self.channels, self.crop_resize = resolution, channels, crop_resize
        if files is None:
            if not self.root.is_dir():
                raise FileNotFoundError(f"image folder '{self.root}' does not exist")
            class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
            if class_dirs:
                loose = sorted(f.name for f in self.root.iterdir() if f.is_file() and not f.name.startswith(".")
                               and f.name.lower().endswith(IMAGE_EXTENSIONS))  # fmt: skip
                if loose:  # class folders make the layout: images beside them would be left out, silently
                    raise FileNotFoundError(
                        f"'{self.root}' holds {len(loose)} image(s) ({loose[0]}, ...) beside its class folder(s) "
                        f"({', '.join(d.name for d in class_dirs[:3])}): they would be left out; move them into a "
                        "class folder, or the folders out for an unconditional run"
                    )
                self.class_names = tuple(d.name for d in class_dirs)
                per_class = [_images_in(d) for d in class_dirs]
                empty = [d.name for d, files in zip(class_dirs, per_class, strict=True) if not files]
                if empty and len(empty) < len(class_dirs):  # labels follow the sorted folders: a gap would shift them
                    raise FileNotFoundError(
                        f"class folder(s) {', '.join(empty[:3])}{' ...' if len(empty) > 3 else ''} under '{self.root}' "
                        f"hold no images ({len(empty)} of {len(class_dirs)}); remove them or add images"
                    )
                pairs = [(f, k) for k, files in enumerate(per_class) for f in files]
            else:
                self.class_names = ()
                pairs = [(f, 0) for f in _images_in(self.root)]
        elif labels is not None:
            self.class_names = tuple(str(k) for k in range(max(labels, default=-1) + 1))
            pairs = list(zip(map(Path, files), labels, strict=True))
        else:
            self.class_names, pairs = (), [(Path(f), 0) for f in files]
        if not pairs:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found under '{self.root}'")
        self.files = [f for f, _ in pairs]
        self.labels = torch.tensor([k for _, k in pairs], dtype=torch.long)
        self.num_classes = len(self.class_names)
        decoded = len(self.files) * max(resolution, crop_resize) ** 2 * channels
        self._memo: dict[int, Tensor] | None = {} if decoded <= MEMO_BYTES else None

    def fingerprint(self) -> str:
        """Paths relative to the root (so a moved dataset still matches its cache) and labels."""
        h, prefix = hashlib.sha256(), str(self.root) + os.sep
        for f, k in zip(self.files, self.labels.tolist(), strict=True):
            name = str(f)
            h.update(f"{name[len(prefix) :] if name.startswith(prefix) else name}\t{k}\n".encode())
        return h.hexdigest()[:16]

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int, window: tuple[float, float] | None = None) -> Tensor:
        if window is None and self._memo is not None:
            if index not in self._memo:
                self._memo[index] = self.decode(index)
            return self._memo[index]
        return self.decode(index, window)

    def keep_all(self) -> None:
        """Decode every image now when the folder keeps them (a steady-state step can then be timed)."""
        if self._memo is not None:
            for index in range(len(self)):
                with contextlib.suppress(Exception):  # an unreadable file is reported when a batch meets it
                    self.load(index)

    def decode(self, index: int, window: tuple[float, float] | None = None) -> Tensor:
        with Image.open(self.files[index]) as img:
            img.load()
            img = to_mode(img, self.channels)
        if window is not None and self.crop_resize:
            return pil_to_uint8(random_crop_arr(img, self.resolution, self.crop_resize, *window))
        return pil_to_uint8(center_crop_arr(img, self.resolution))

    def get_batch(self, items):
        images, indices, bad = [], [], []
        for index, flip, *window in items:
            for attempt in range(len(self)):  # substitute the next readable image
                j = (index + attempt) % len(self)
                try:
                    img = self.load(j, *window)
                    break
                except Exception:  # PIL raises many types for corrupt files
                    if str(self.files[j]) not in bad:  # a bad file before another is tried by both
                        bad.append(str(self.files[j]))
            else:
                raise ValueError(f"no readable image among the {len(self)} files under '{self.root}'")
            images.append(img.flip(-1) if flip else img)
            indices.append(j)
        idx = torch.tensor(indices, dtype=torch.long)
        return Batch(images=torch.stack(images), labels=self.labels[idx], indices=idx, bad_files=bad)


def _images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, following links, each directory once: a link back up the
    tree is not a loop), sorted; hidden files (``.DS_Store``, macOS ``._x.jpg`` forks) skipped. ``os.walk``
    reads file types from the directory entries, so a folder of a million files costs no million ``stat``
    calls (one ``stat`` per directory here)."""
    found, seen = [], set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".") and os.path.realpath(os.path.join(top, d)) not in seen]
        found.extend(Path(top) / n for n in names if not n.startswith(".") and n.lower().endswith(IMAGE_EXTENSIONS))
    return sorted(found)


def read_file_list(path: str | Path) -> tuple[list[Path], list[int] | None]:
    """A text file of image paths, one per line, optionally followed by an integer label (``PATH LABEL``,
    the Caffe/ImageNet list format). Relative paths are relative to the list's folder; ``#`` starts a comment."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file list '{path}' does not exist")
    files, labels, labelled = [], [], None
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            file, label = parts[0], int(parts[1])
            if label < 0:
                raise ValueError(f"{path}:{n}: labels must be >= 0, got {label}")
        elif len(parts) == 2 and parts[0].lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"{path}:{n}: labels must be integers, got {parts[1]!r}")
        else:  # a path (which may contain spaces)
            file, label = line, None
        if labelled is None:
            labelled = label is not None
        elif labelled != (label is not None):
            raise ValueError(f"{path}:{n}: either every line has a label or none does")
        p = Path(file).expanduser()
        files.append(p if p.is_absolute() else path.parent / p)
        if label is not None:
            labels.append(label)
    if not files:
        raise FileNotFoundError(f"file list '{path}' lists no images")
    return files, (labels or None)


def synthetic_images(n: int, resolution: int, channels: int, num_classes: int, seed: int = 0) -> TensorImageDataset:
    """Class-dependent coloured discs on a noisy background: learnable, deterministic, no files needed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % max(num_classes, 1)
    coords = torch.linspace(-1, 1, resolution)
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    k = max(num_classes, 1)
    angle = 2 * math.pi * labels.float() / k
    cx, cy = 0.5 * torch.cos(angle), 0.5 * torch.sin(angle)
    radius = 0.25 + 0.1 * torch.rand(n, generator=g)
    disc = ((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) < radius[:, None, None] ** 2
    colour = torch.stack([(labels + c) % 3 == 0 for c in range(channels)], 1).float()  # (N, C)
    background = 0.2 * torch.rand(n, channels, resolution, resolution, generator=g)
    images = background + disc[:, None].float() * (0.3 + 0.7 * colour[:, :, None, None])
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return TensorImageDataset(images, labels, num_classes, tuple(f"class{k}" for k in range(num_classes)))

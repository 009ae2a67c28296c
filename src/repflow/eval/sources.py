"""Where evaluated images come from: a folder of images, an ADM ``.npz`` or a dataset, streamed in batches.

Every source yields (B, 3, H, W) uint8 tensors (greyscale replicated to RGB, as clean-fid and ADM see it),
so 50K images at 256 px never have to sit in memory at once.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..data.datasets import IMAGE_EXTENSIONS
from ..data.transforms import upright


def to_rgb_uint8(images: Tensor) -> Tensor:
    """(B, 1 or 3, H, W) uint8 -> (B, 3, H, W) uint8."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1|3, H, W) uint8 images, got {tuple(images.shape)} {images.dtype}")
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


class ImageSource:
    description: str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def resolution(self) -> tuple[int, int]:
        """(H, W) of the images."""
        raise NotImplementedError

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        raise NotImplementedError


class TensorSource(ImageSource):
    def __init__(self, images: Tensor, description: str = "tensor"):
        self.images, self.description = to_rgb_uint8(images), description

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def resolution(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        yield from self.images.split(batch_size)


def list_images(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively, as clean-fid), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


SAMPLES_MANIFEST = "samples.json"  # written by `repflow sample` / `eval` next to the samples they generate
SAMPLE_NAME = re.compile(r"^\d{6,}\.png$")


class FolderSource(ImageSource):
    """Every image under a folder, sorted by path (in a folder ``repflow sample`` wrote: its numbered samples,
    not ``grid.png``). Unreadable files (truncated, empty, not an image) and images of another size than the
    first are skipped and listed in ``skipped``, as training skips bad images."""

    def __init__(self, folder: str | Path, limit: int = 0):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"sample folder '{self.folder}' does not exist")
        self.files = list_images(self.folder)
        if (self.folder / SAMPLES_MANIFEST).is_file():
            self.files = [p for p in self.files if p.parent == self.folder and SAMPLE_NAME.match(p.name)]
        if not self.files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found under '{self.folder}'")
        if limit:
            if limit > len(self.files):
                raise ValueError(f"asked for {limit} images but '{self.folder}' holds only {len(self.files)}")
            self.files = self.files[:limit]
        self.description = str(self.folder)
        self.skipped: dict[str, str] = {}  # path -> why
        self._size: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def resolution(self) -> tuple[int, int]:
        if self._size is None:
            for path in self.files:
                if self._read(path) is not None:
                    break
            else:
                raise ValueError(f"none of the {len(self.files)} image files under '{self.folder}' can be read")
        return self._size

    def _read(self, path: Path) -> np.ndarray | None:
        """The image as (H, W, 3) uint8, or None (and a note in ``skipped``) when it cannot be used."""
        try:
            with Image.open(path) as img:
                arr = np.asarray(upright(img).convert("RGB"))
        except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
            self.skipped[str(path)] = f"unreadable ({' '.join(str(err).split())[:80]})"
            return None
        if self._size is None:
            self._size = arr.shape[:2]
        elif arr.shape[:2] != self._size:
            self.skipped[str(path)] = f"{arr.shape[0]}x{arr.shape[1]}, not {self._size[0]}x{self._size[1]}"
            return None
        return arr

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        for lo in range(0, len(self.files), batch_size):
            arrays = [a for a in (self._read(p) for p in self.files[lo : lo + batch_size]) if a is not None]
            if arrays:
                yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)

    def skipped_summary(self) -> str:
        """One line about the skipped files ("" when none)."""
        if not self.skipped:
            return ""
        first = "; ".join(f"{Path(p).name}: {why}" for p, why in list(self.skipped.items())[:3])
        return f"skipped {len(self.skipped)} of {len(self.files)} files under {self.folder} ({first})"


def _npz_member(zf: zipfile.ZipFile, path: Path, key: str = "arr_0") -> str:
    name = f"{key}.npy"
    if name not in zf.namelist():
        keys = ", ".join(n[:-4] for n in zf.namelist() if n.endswith(".npy")) or "none"
        raise ValueError(f"{path} has no '{key}' array (it has: {keys}); expected ADM's arr_0 uint8 NxHxWx3")
    return name


def _read_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    else:
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    if fortran or dtype.hasobject:
        raise ValueError("arr_0 must be a C-ordered numeric array (object arrays are never unpickled)")
    return tuple(shape), dtype


class NpzSource(ImageSource):
    """ADM's sample / reference batch format: ``arr_0`` uint8 (N, H, W, 3), read in chunks from the zip."""

    def __init__(self, path: str | Path, limit: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"npz file '{self.path}' does not exist")
        try:
            with zipfile.ZipFile(self.path) as zf, zf.open(_npz_member(zf, self.path)) as f:
                shape, dtype = _read_header(f)
        except zipfile.BadZipFile as err:
            raise ValueError(f"{self.path} is not an .npz archive") from err
        if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
            raise ValueError(f"{self.path}: arr_0 must be uint8 NxHxWx3, got {dtype} {shape}")
        self.shape = shape
        self.count = min(limit, shape[0]) if limit else shape[0]
        if limit > shape[0]:
            raise ValueError(f"asked for {limit} images but {self.path} holds only {shape[0]}")
        self.description = str(self.path)

    def __len__(self) -> int:
        return self.count

    @property
    def resolution(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        item = int(np.prod(self.shape[1:]))
        with zipfile.ZipFile(self.path) as zf, zf.open(_npz_member(zf, self.path)) as f:
            _read_header(f)
            for lo in range(0, self.count, batch_size):
                n = min(batch_size, self.count - lo)
                raw = f.read(n * item)
                if len(raw) != n * item:
                    raise ValueError(f"{self.path}: arr_0 is truncated at image {lo + len(raw) // item}")
                arr = np.frombuffer(raw, dtype=np.uint8).reshape(n, *self.shape[1:])
                yield to_rgb_uint8(torch.from_numpy(arr.copy()).permute(0, 3, 1, 2))


def open_source(path: str | Path, limit: int = 0) -> ImageSource:
    """A folder of images or an ADM ``.npz``."""
    path = Path(path)
    if path.suffix == ".npz":
        return NpzSource(path, limit)
    if path.is_dir():
        return FolderSource(path, limit)
    if not path.exists():
        raise FileNotFoundError(f"'{path}' does not exist; pass a folder of images, an .npz or a run directory")
    raise ValueError(f"'{path}' is neither a folder of images nor an ADM .npz")

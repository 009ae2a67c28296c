"""What a folder of images holds (``repflow init`` and a preset pointed at a folder read it): the class
folders, the image count, the common sizes and whether every image is greyscale, from up to ``SURVEYED`` images
spread evenly over the folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

SURVEYED = 256  # images opened to learn sizes and colour (spread evenly over the folder)


@dataclass(frozen=True)
class Survey:
    """What a folder of images holds."""

    root: Path
    count: int
    classes: tuple[str, ...]  # () for a flat folder (unconditional)
    channels: int  # 1 when every surveyed image is greyscale, else 3
    side: int  # the median short side of the surveyed images, in pixels
    sizes: tuple[tuple[int, int], ...]  # (width, height) of the most common sizes, most common first


def survey(root: str | Path) -> Survey:
    from collections import Counter

    from .data import ImageFolderDataset

    ds = ImageFolderDataset(root, 8)
    step = max(1, len(ds.files) // SURVEYED)
    sizes, grey = [], True
    for f in ds.files[::step][:SURVEYED]:
        try:
            with Image.open(f) as img:
                sizes.append(img.size)
                grey = grey and _greyscale(img)
        except (OSError, ValueError, SyntaxError):
            continue  # training skips unreadable files too, and says so
    if not sizes:
        raise ValueError(f"no readable image among the {len(ds.files)} files under '{root}'")
    sides = sorted(min(s) for s in sizes)
    common = tuple(s for s, _ in Counter(sizes).most_common(3))
    return Survey(Path(root).resolve(), len(ds.files), tuple(getattr(ds, "class_names", ())), 1 if grey else 3,
                  sides[len(sides) // 2], common)  # fmt: skip


def _greyscale(img: Image.Image) -> bool:
    if img.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"):
        return True
    if img.mode not in ("RGB", "RGBA", "P"):
        return False
    small = img.convert("RGB").resize((32, 32))
    r, g, b = (band.tobytes() for band in small.split())  # 8-bit bands: one byte a pixel
    return all(abs(x - y) <= 2 and abs(x - z) <= 2 for x, y, z in zip(r, g, b, strict=True))

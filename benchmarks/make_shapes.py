"""A 3-class folder of colour shapes, the README's "own images" example: a random-coloured circle, square or
triangle on a random-coloured plain background, random size and place, drawn at 4x and downsampled (smooth edges).

    python benchmarks/make_shapes.py OUT_DIR [IMAGES_PER_CLASS] [--size 48]

Writes OUT_DIR/{circle,square,triangle}/00000.png ... (ImageNet layout: one sub-folder per class), seed 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")


def shape(cls: str, size: int, rng: np.random.Generator) -> Image.Image:
    bg = tuple(int(v) for v in rng.integers(0, 256, 3))
    fg = bg
    while sum(abs(a - b) for a, b in zip(bg, fg, strict=True)) < 200:  # the shape stands out from its background
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
    big = 4 * size
    img = Image.new("RGB", (big, big), bg)
    draw = ImageDraw.Draw(img)
    r = rng.uniform(0.1875, 0.375) * big
    cx, cy = rng.uniform(r + big / 48, big - big / 48 - r, 2)
    if cls == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fg)
    elif cls == "square":
        draw.rectangle([cx - 0.85 * r, cy - 0.85 * r, cx + 0.85 * r, cy + 0.85 * r], fill=fg)
    else:
        a = rng.uniform(0, 2 * np.pi / 3)
        corners = [(cx + r * np.cos(a + k * 2 * np.pi / 3), cy + r * np.sin(a + k * 2 * np.pi / 3)) for k in range(3)]
        draw.polygon(corners, fill=fg)
    return img.resize((size, size), Image.LANCZOS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("per_class", type=int, nargs="?", default=300)
    ap.add_argument("--size", type=int, default=48)
    args = ap.parse_args()
    if args.per_class < 1 or args.size < 8:
        ap.error("IMAGES_PER_CLASS must be >= 1 and --size >= 8")
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        (args.out / cls).mkdir(parents=True, exist_ok=True)
        for i in range(args.per_class):
            shape(cls, args.size, rng).save(args.out / cls / f"{i:05d}.png")
    print(f"{len(CLASSES) * args.per_class} images in {args.out}/{{{','.join(CLASSES)}}}")


if __name__ == "__main__":
    main()

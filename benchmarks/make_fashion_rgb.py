"""A 3-class colour folder made from Fashion-MNIST, the README's second "own images" example: each garment tinted
with a random colour on a random-coloured plain background (the grey value mixes the two), upscaled 28 -> 48 px.

    python benchmarks/make_fashion_rgb.py OUT_DIR [IMAGES_PER_CLASS] [--classes trouser,sneaker,bag] [--size 48]

Writes OUT_DIR/<class>/00000.png ... (ImageNet layout), the first images of each class of the training split, seed 0.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from repflow.data.offline import FASHION_CLASSES, load_fashion_mnist
from repflow.sample.runs import resolve_classes


def tinted(grey: np.ndarray, size: int, rng: np.random.Generator) -> Image.Image:
    bg = rng.integers(0, 256, 3)
    fg = bg
    while np.abs(fg - bg).sum() < 200:  # the garment stands out from its background
        fg = rng.integers(0, 256, 3)
    mix = grey.astype(np.float64)[..., None] / 255.0
    rgb = np.rint(bg * (1 - mix) + fg * mix).astype(np.uint8)
    return Image.fromarray(rgb).resize((size, size), Image.BICUBIC)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("per_class", type=int, nargs="?", default=300)
    ap.add_argument("--classes", default="trouser,sneaker,bag", help="Fashion-MNIST class names, comma-separated")
    ap.add_argument("--size", type=int, default=48)
    args = ap.parse_args()
    if not 1 <= args.per_class <= 6000 or args.size < 8:
        ap.error("IMAGES_PER_CLASS must lie in [1, 6000] (Fashion-MNIST's training split) and --size be >= 8")
    try:
        labels = resolve_classes(args.classes.split(","), list(FASHION_CLASSES), len(FASHION_CLASSES))
    except ValueError as e:
        ap.error(str(e))
    images, targets = load_fashion_mnist("train")
    rng = np.random.default_rng(0)
    for label in labels:
        folder = args.out / FASHION_CLASSES[label].lower().replace(" ", "_").replace("/", "_")
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate(np.flatnonzero(targets.numpy() == label)[: args.per_class]):
            tinted(images[index].reshape(images.shape[-2:]).numpy(), args.size, rng).save(folder / f"{i:05d}.png")
    print(f"{len(labels) * args.per_class} images in {args.out}/ ({', '.join(FASHION_CLASSES[k] for k in labels)})")


if __name__ == "__main__":
    main()

"""A dataset that serves cached per-image arrays (latent posteriors, encoder features) instead of images.

``get_batch([(index, flip), ...])`` reads row ``(index, flip)`` of every field of every store into
``Batch.arrays["<store>.<field>"]`` (e.g. ``"latents.mean"``). Images are decoded only when asked for
(``images=True``, e.g. when an encoder still runs online); otherwise ``Batch.images`` is empty and a training
step touches no image file at all.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .datasets import Batch, ImageDataset
from .store import SOURCE, ArrayStore


class CachedDataset(ImageDataset):
    def __init__(self, base: ImageDataset, stores: Mapping[str, ArrayStore], images: bool = False):
        for name, store in stores.items():
            if len(store) != len(base):
                raise ValueError(f"the {name} cache holds {len(store)} items but the dataset has {len(base)}")
        self.base, self.stores, self.images = base, dict(stores), images
        self.num_classes, self.channels = base.num_classes, base.channels
        self.resolution, self.class_names = base.resolution, base.class_names
        self.labels = base.labels

    def __len__(self) -> int:
        return len(self.base)

    def fingerprint(self) -> str:
        return self.base.fingerprint()

    def get_batch(self, items: list[tuple[int, bool]]) -> Batch:
        indices = [i for i, _ in items]
        flips = [f for _, f in items]
        arrays, source = {}, None
        for prefix, store in self.stores.items():
            for key, value in store.read(indices, flips).items():
                if key == SOURCE:  # the image actually encoded (a replaced bad file's substitute)
                    source = value if source is None else source
                else:
                    arrays[f"{prefix}.{key}"] = value
        if self.images:
            batch = self.base.get_batch(items)
            batch.arrays.update(arrays)
            return batch
        idx = source if source is not None else torch.tensor(indices, dtype=torch.long)
        empty = torch.empty((len(items), 0), dtype=torch.uint8)
        return Batch(images=empty, labels=self.labels[idx], indices=idx, arrays=arrays)


__all__ = ["CachedDataset"]

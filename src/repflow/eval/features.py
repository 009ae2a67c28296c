"""Running feature extractors over an image source: one pass over the images for every space, and a hash of
the images themselves.

The features of an image depend only on that image: every source yields the same uint8 pixels whatever the batch
size, each extractor works per image (its resize and preprocessing are per image), and the pixel hash is updated in
image order, so the hash is that of the whole (N, 3, H, W) array. What can still move with the batch size is the
float rounding inside the networks' kernels (a few 1e-7 relative on CPU); the statistics are then taken in float64.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from .extractors import INCEPTION, FeatureExtractor
from .sources import ImageSource

# an extractor and the outputs wanted from it
Request = tuple[FeatureExtractor, tuple[str, ...]]


@dataclass
class FeatureSet:
    spaces: dict[str, dict[str, np.ndarray]]  # space name -> output -> (N, D) float32
    count: int
    content_sha256: str  # of the images' uint8 pixels, (N, 3, H, W) in order

    def __len__(self) -> int:
        return self.count

    def get(self, space: str, output: str) -> np.ndarray:
        return self.spaces[space][output]

    @property
    def pool(self) -> np.ndarray:
        return self.spaces[INCEPTION]["pool"]


def extract_features(
    source: ImageSource, requests: list[Request], batch_size: int = 50, progress: bool = True, desc: str = "features"
) -> FeatureSet:
    """Features of every image in ``source`` for every request, reading the images once."""
    import torch

    parts: dict[str, dict[str, list[np.ndarray]]] = {ex.space.name: {o: [] for o in outs} for ex, outs in requests}
    digest, count = hashlib.sha256(), 0
    bar = tqdm(total=len(source), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    with torch.inference_mode():
        for batch in source.batches(batch_size):
            digest.update(batch.contiguous().numpy().tobytes())  # (B, 3, H, W) uint8
            for extractor, outputs in requests:
                for name, value in extractor(batch, outputs).items():
                    parts[extractor.space.name][name].append(value.numpy())
            count += batch.shape[0]
            bar.update(batch.shape[0])
    bar.close()
    if count == 0:
        raise ValueError(f"no images in {source.description}")
    spaces = {space: {o: np.concatenate(v) for o, v in outs.items()} for space, outs in parts.items()}
    return FeatureSet(spaces, count, digest.hexdigest())

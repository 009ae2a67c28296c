"""Running the FID Inception over an image source: pool_3, spatial and logit features for every image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from .inception import TFInception
from .sources import ImageSource


@dataclass
class FeatureSet:
    pool: np.ndarray  # (N, 2048) float32
    spatial: np.ndarray | None = None  # (N, 2023) float32
    logits: np.ndarray | None = None  # (N, 1008) float32

    def __len__(self) -> int:
        return int(self.pool.shape[0])


def extract_features(
    source: ImageSource,
    inception: TFInception,
    batch_size: int = 50,
    spatial: bool = True,
    logits: bool = True,
    progress: bool = True,
    desc: str = "inception",
) -> FeatureSet:
    """Features of every image in ``source`` (batches of ``batch_size`` on the Inception's device)."""
    device = next(inception.layers.parameters()).device
    pools, spatials, logit_list = [], [], []
    bar = tqdm(total=len(source), desc=desc, unit="img", disable=not progress, dynamic_ncols=True)
    with torch.inference_mode():
        for batch in source.batches(batch_size):
            out = inception(batch.to(device), spatial=spatial, logits=logits)
            pools.append(out.pool.float().cpu().numpy())
            if out.spatial is not None:
                spatials.append(out.spatial.float().cpu().numpy())
            if out.logits is not None:
                logit_list.append(out.logits.float().cpu().numpy())
            bar.update(batch.shape[0])
    bar.close()
    if not pools:
        raise ValueError(f"no images in {source.description}")
    return FeatureSet(
        pool=np.concatenate(pools),
        spatial=np.concatenate(spatials) if spatials else None,
        logits=np.concatenate(logit_list) if logit_list else None,
    )

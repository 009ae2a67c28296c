"""Sample grids from the EMA weights during and after training."""

from __future__ import annotations

import torch
from torch import Tensor

from ..build import build_network
from ..sample.generate import sample_images


@torch.no_grad()
def ema_preview(cfg, codec, weights: dict[str, Tensor], device: torch.device) -> tuple[Tensor, int | None]:
    """``train.sample_num`` samples (fixed seeds, balanced labels) from full EMA ``weights`` in a fresh,
    unsharded copy of the network, and the grid row length (one column per class when that fits)."""
    model = build_network(cfg)
    model.load_state_dict(weights)
    n = cfg.train.sample_num
    images, _ = sample_images(model.to(device), cfg, codec, range(n))
    k = cfg.model.num_classes
    return images, (k if 0 < k <= 16 and n % k == 0 else None)

"""Sample grids from the EMA weights during and after training."""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..sample.generate import sample_images
from .ema import EMA


@torch.no_grad()
def ema_preview(model: nn.Module, ema: EMA, cfg, codec) -> tuple[Tensor, int | None]:
    """``train.sample_num`` samples (fixed seeds, balanced labels) from the first EMA, and the grid row length
    (one column per class when that fits)."""
    shadow = copy.deepcopy(model)
    if ema.decays:
        shadow.load_state_dict(ema.state_dict(ema.decays[0]))
    n = cfg.train.sample_num
    images, _ = sample_images(shadow, cfg, codec, range(n))
    k = cfg.model.num_classes
    return images, (k if 0 < k <= 16 and n % k == 0 else None)

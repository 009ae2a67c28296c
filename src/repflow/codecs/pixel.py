"""The identity codec: the model works on pixels in [-1, 1] (JiT, small demos)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class PixelCodec:
    name = "pixel"
    stochastic = False
    scale, shift, factor = 1.0, 0.0, 1

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, z: Tensor) -> Tensor:
        return z.clamp(-1, 1)

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return images, torch.zeros_like(images)

    def sample(self, mean: Tensor, std: Tensor, eps: Tensor) -> Tensor:
        return mean + std * eps

    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        return channels, resolution, resolution

    def identity(self) -> dict[str, Any]:
        return {"kind": self.name}

    def to(self, device: torch.device | str) -> PixelCodec:
        return self

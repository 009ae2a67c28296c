"""The identity codec: the model works on pixels in [-1, 1] (JiT, small demos)."""

from __future__ import annotations

from torch import Tensor


class PixelCodec:
    name = "pixel"

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, z: Tensor) -> Tensor:
        return z.clamp(-1, 1)

    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        return channels, resolution, resolution

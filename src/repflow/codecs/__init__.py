"""Codecs map images (B, 3 or 1, H, W) in [-1, 1] to the space the model works in, and back.

The training loop and the samplers only ever see a codec, so pixel-space and latent-space methods share them.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .pixel import PixelCodec


class Codec(Protocol):
    name: str

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, z: Tensor) -> Tensor: ...

    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) the model sees for images of this many channels and this resolution."""
        ...


def build_codec(name: str = "pixel") -> Codec:
    if name == "pixel":
        return PixelCodec()
    raise ValueError(f"unknown codec {name!r}; choose from ['pixel']")


__all__ = ["Codec", "PixelCodec", "build_codec"]

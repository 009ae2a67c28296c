"""Codecs map images (B, C, H, W) in [-1, 1] to the space the model works in, and back.

The training loop and the samplers only ever see a codec, so pixel-space and latent-space methods share them.
A *stochastic* codec (a VAE) encodes to a posterior ``N(mean, std^2)`` in its own units; training draws
``z = mean + std * eps`` each step (with ``eps`` from the run's shared generator) and the model sees
``(z - shift) * scale``. ``moments`` is what ``repflow cache latents`` stores, so scale and shift can change
without re-encoding.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from ..config import CodecConfig
from .pixel import PixelCodec

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


class Codec(Protocol):
    name: str  # the kind: "pixel", "sd_vae"
    stochastic: bool  # True: encode to a posterior (moments / sample), False: encode is the whole story
    scale: float  # model space = (codec space - shift) * scale
    shift: float
    factor: int  # spatial downsampling: pixels per latent along each side

    def encode(self, images: Tensor) -> Tensor:
        """Images in [-1, 1] -> model space, deterministically (a VAE returns its scaled posterior mean)."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """Model space -> images in [-1, 1]."""
        ...

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and std in the codec's own units (what a latent cache stores)."""
        ...

    def sample(self, mean: Tensor, std: Tensor, eps: Tensor) -> Tensor:
        """A posterior draw in model space: ``(mean + std * eps - shift) * scale``."""
        ...

    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) the model sees for images of this many channels and this resolution."""
        ...

    def identity(self) -> dict[str, Any]:
        """What makes two encodings interchangeable (kind, shape factors, encoder weights): a cache checks it."""
        ...

    def to(self, device: torch.device | str) -> Codec: ...


CODECS = ("pixel", "sd_vae")


def build_codec(cfg: CodecConfig | str = "pixel", device: torch.device | str = "cpu", path: str = "") -> Codec:
    """The codec of a config (or a kind name). ``path`` overrides ``cfg.path`` (e.g. another VAE at sampling)."""
    cfg = CodecConfig(kind=cfg) if isinstance(cfg, str) else cfg
    if cfg.kind == "pixel":
        return PixelCodec()
    if cfg.kind == "sd_vae":
        from .sd_vae import SDVAECodec

        return SDVAECodec(path or cfg.path or DEFAULT_VAE, cfg.scale, cfg.shift, device=device, precision=cfg.precision)
    raise ValueError(f"unknown codec {cfg.kind!r}; choose from {list(CODECS)}")


__all__ = ["CODECS", "DEFAULT_VAE", "Codec", "PixelCodec", "build_codec"]

"""Codecs map images (B, C, H, W) in [-1, 1] to the space the model works in, and back (``codec.kind``).

The training loop and the samplers only ever see a codec, so pixel-space and latent-space methods share them.
Each codec registers its config section (its own fields and defaults) and a factory in ``CODECS``.
A *stochastic* codec (a VAE) encodes to a posterior ``N(mean, std^2)`` in its own units; training draws
``z = mean + std * eps`` each step (with ``eps`` from the run's shared generator) and the model sees
``(z - shift) * scale``. ``moments`` is what ``repflow cache latents`` stores, so scale and shift can change
without re-encoding. A deterministic codec is cached as its mean alone and trained on without noise.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from ..config import CodecConfig
from ..registry import CODECS
from .pixel import PixelCodec, PixelCodecConfig
from .rae import RAECodecConfig
from .sd_vae import DEFAULT_VAE, SDVAECodecConfig
from .vae import VAECodecConfig


class Codec(Protocol):
    name: str  # the kind: "pixel", "vae", "sd_vae", "rae"
    stochastic: bool  # True: encode to a posterior (moments / sample), False: encode is the whole story
    cacheable: bool  # worth caching with `repflow cache latents` (False for the identity)
    can_decode: bool  # False while a trained decoder is still missing (RAE before stage 1): no previews
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

    def sample(self, mean: Tensor, std: Tensor | None, eps: Tensor | None) -> Tensor:
        """A posterior draw in model space (the mean alone when ``std`` or ``eps`` is None)."""
        ...

    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        """(C, H, W) the model sees for images of this many channels and this resolution."""
        ...

    def identity(self) -> dict[str, Any]:
        """What makes two encodings interchangeable (kind, shape factors, encoder weights): a cache checks it."""
        ...

    def to(self, device: torch.device | str) -> Codec: ...


def build_codec(cfg: CodecConfig | str = "pixel", device: torch.device | str = "cpu", path: str = "") -> Codec:
    """The codec of a config section (or a kind name with its defaults). ``path`` overrides the codec's weights
    (e.g. another VAE decoder at sampling)."""
    if isinstance(cfg, str):
        cfg = CODECS.get(cfg).config()
    return CODECS.get(cfg.kind).target(cfg, device=device, path=path)


def codec_for(cfg: Any, device: torch.device | str = "cpu", vae: str = "") -> Codec:
    """The run's codec, as stored in its (resolved) config, so sampling decodes with the codec training used.
    ``vae`` swaps in other weights explicitly (e.g. sd-vae-ft-mse to decode a model trained on ft-ema latents)."""
    return build_codec(cfg.codec, device=device, path=vae)


__all__ = [
    "DEFAULT_VAE",
    "Codec",
    "PixelCodec",
    "PixelCodecConfig",
    "RAECodecConfig",
    "SDVAECodecConfig",
    "VAECodecConfig",
    "build_codec",
    "codec_for",
]

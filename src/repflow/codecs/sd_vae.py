"""The SD-VAE codec: the ``vae`` codec (:mod:`.vae`) on an ``AutoencoderKL`` with SD's defaults.

``stabilityai/sd-vae-ft-ema`` (or ``-mse``, or any local AutoencoderKL): 256 px images become 32x32x4 latents,
and the model sees ``(z - shift) * scale`` with ``codec.scale`` (0.18215, SD's) and ``codec.shift`` (0) as
set, whatever the VAE's config says. Runs and latent caches made with ``codec.kind=sd_vae`` keep loading: the
cache identity is the one it always had (latent layout and encoder hash).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from ..config import CodecConfig, checked, positive
from ..registry import CODECS
from .vae import VAECodec, locate_vae

DEFAULT_VAE = "stabilityai/sd-vae-ft-ema"


@dataclass(frozen=True)
class SDVAECodecConfig(CodecConfig):
    kind: str = "sd_vae"
    path: str = DEFAULT_VAE  # local directory or hub id (any diffusers AutoencoderKL)
    scale: float = checked(0.18215, positive)  # z_model = (z_vae - shift) * scale
    shift: float = 0.0
    cache: str = ""  # directory of cached latents (repflow cache latents); "" encodes on the fly
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # the VAE's: auto is bf16 autocast on GPU, fp32 on CPU
    chunk: int = checked(32, positive)  # images per VAE call (memory)

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        return {**data, "path": data.get("path") or DEFAULT_VAE}  # repflow <= 0.1 wrote "" for the default


class SDVAECodec(VAECodec):
    name = "sd_vae"
    legacy_identity = True

    def __init__(
        self,
        path: str,
        scale: float = 0.18215,
        shift: float = 0.0,
        device: torch.device | str = "cpu",
        precision: str = "auto",
        chunk: int = 32,
        vae=None,
    ):
        config = dict(vae.config) if vae is not None else locate_vae(path)[2]
        if config.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
            raise ValueError(f"'{path}' is a {config['_class_name']}, not an AutoencoderKL (codec.kind=vae reads "
                             "other autoencoders)")  # fmt: skip
        super().__init__(path, scale, shift, device=device, precision=precision, chunk=chunk, vae=vae)

    @property
    def scale(self) -> float:
        return self.normalisation[1]

    @property
    def shift(self) -> float:
        return self.normalisation[0]


@CODECS.register("sd_vae", SDVAECodecConfig)
def build_sd_vae(cfg: SDVAECodecConfig, device: torch.device | str = "cpu", path: str = "") -> SDVAECodec:
    return SDVAECodec(path or cfg.path, cfg.scale, cfg.shift, device=device, precision=cfg.precision, chunk=cfg.chunk)


__all__ = ["DEFAULT_VAE", "SDVAECodec", "SDVAECodecConfig", "locate_vae"]

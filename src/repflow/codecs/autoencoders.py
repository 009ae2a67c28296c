"""The diffusers autoencoder classes the ``vae`` codec drives, and how each one encodes, decodes and normalises.

Each entry says where its config keeps the latent width and the image channels, its downsampling factor, how
to get a posterior (or a deterministic latent) from images (B, C, H, W) and images back from a latent, and the
normalisation its diffusers pipeline applies, ``latents = (z - shift) * scale`` per channel:

- ``AutoencoderKL`` (SD, SDXL, SD3.5, FLUX.1, VA-VAE, E2E-VAE): ``scaling_factor`` and ``shift_factor``, or
  SDXL-style per-channel ``latents_mean`` / ``latents_std`` (then ``scale = scaling_factor / latents_std``).
- ``AutoencoderKLFlux2`` (FLUX.2): the latent's 2x2 patches are folded into channels (32 -> 128 channels at
  1/16 of the image side), then normalised by the VAE's own batch-norm statistics, as ``Flux2Pipeline`` does.
- ``AutoencoderKLQwenImage`` (Qwen-Image, a video VAE): images are clips of one frame (B, C, 1, H, W);
  ``latents_mean`` / ``latents_std`` per channel.
- ``AutoencoderDC`` (DC-AE, Sana): no posterior (the latent is deterministic), ``scaling_factor``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Normalisation = tuple["float | Tensor", "float | Tensor"]  # (shift, scale): floats or per-channel (C, 1, 1)


def patchify(z: Tensor, p: int) -> Tensor:
    """(B, C, H, W) -> (B, C p p, H/p, W/p), channel-major as ``Flux2Pipeline._patchify_latents``."""
    b, c, h, w = z.shape
    return z.view(b, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4).reshape(b, c * p * p, h // p, w // p)


def unpatchify(z: Tensor, p: int) -> Tensor:
    """The inverse of :func:`patchify` (``Flux2Pipeline._unpatchify_latents``)."""
    b, c, h, w = z.shape
    return z.reshape(b, c // (p * p), p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c // (p * p), h * p, w * p)


def channel_vector(values) -> Tensor:
    """A per-channel list of the config as a float64 (C, 1, 1) tensor."""
    return torch.tensor([float(v) for v in values], dtype=torch.float64).view(-1, 1, 1)


@dataclass(frozen=True)
class AutoencoderClass:
    name: str
    stochastic: bool = True  # encode gives a diagonal Gaussian posterior (DC-AE: a deterministic latent)
    channels_key: str = "latent_channels"
    image_channels_key: str = "in_channels"
    frames: bool = False  # a video VAE: images go in as clips of one frame
    patch: int = 1  # latent patches folded into channels after encoding (FLUX.2: 2)
    factor_of: Callable[[dict], int] = lambda c: 2 ** (len(c.get("block_out_channels", (64,))) - 1)
    # the normalisation its pipelines apply, from config.json (and the weights: a function loading the VAE); None:
    # the config has none
    normalisation_of: Callable[[dict, Callable], Normalisation | None] = lambda c, load_vae: None

    def latent_channels(self, config: dict) -> int:
        if self.channels_key not in config:
            raise ValueError(f"the {self.name} config has no '{self.channels_key}' (the latent width)")
        return int(config[self.channels_key]) * self.patch * self.patch

    def image_channels(self, config: dict) -> int:
        return int(config.get(self.image_channels_key, 3))

    def factor(self, config: dict) -> int:
        return self.factor_of(config) * self.patch

    def moments(self, vae, images: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and std (B, C, h, w) in the VAE's units (a deterministic latent: std is zero)."""
        x = images[:, :, None] if self.frames else images  # (B, C, 1, H, W) for a video VAE
        out = vae.encode(x)
        if self.stochastic:
            mean, std = out.latent_dist.mean, out.latent_dist.std
        else:
            mean = out.latent
            std = torch.zeros_like(mean[:, :1, ..., :1, :1])  # broadcasts: no posterior noise
        if self.frames:
            mean, std = mean[:, :, 0], std[:, :, 0]
        if self.patch > 1:
            mean, std = patchify(mean, self.patch), patchify(std, self.patch)
        return mean, std

    def decode(self, vae, z: Tensor) -> Tensor:
        """Images (B, C, H, W) of a latent in the VAE's units."""
        if self.patch > 1:
            z = unpatchify(z, self.patch)
        if self.frames:
            return vae.decode(z[:, :, None]).sample[:, :, 0]
        return vae.decode(z).sample


def _kl(config: dict, load_vae: Callable) -> Normalisation | None:
    if "scaling_factor" not in config:
        return None
    scale = float(config["scaling_factor"])
    if config.get("latents_mean") is not None and config.get("latents_std") is not None:  # SDXL-style
        return channel_vector(config["latents_mean"]), scale / channel_vector(config["latents_std"])
    return float(config.get("shift_factor") or 0.0), scale


def _flux2(config: dict, load_vae: Callable) -> Normalisation:
    vae = load_vae()
    bn = vae.bn  # batch-norm running statistics of the patchified latents, part of the weights
    std = (bn.running_var.double() + float(vae.config.batch_norm_eps)).sqrt()
    return bn.running_mean.double().view(-1, 1, 1), 1.0 / std.view(-1, 1, 1)


def _qwen(config: dict, load_vae: Callable) -> Normalisation | None:
    if config.get("latents_mean") is None or config.get("latents_std") is None:
        return None
    return channel_vector(config["latents_mean"]), 1.0 / channel_vector(config["latents_std"])


def _dc(config: dict, load_vae: Callable) -> Normalisation | None:
    return (0.0, float(config["scaling_factor"])) if "scaling_factor" in config else None


CLASSES = {
    c.name: c
    for c in (
        AutoencoderClass("AutoencoderKL", normalisation_of=_kl),
        AutoencoderClass("AutoencoderKLFlux2", patch=2, normalisation_of=_flux2),
        AutoencoderClass(
            "AutoencoderKLQwenImage", channels_key="z_dim", image_channels_key="input_channels", frames=True,
            factor_of=lambda c: 2 ** len(c.get("temperal_downsample", (False, True, True))), normalisation_of=_qwen,
        ),
        AutoencoderClass(
            "AutoencoderDC", stochastic=False,
            factor_of=lambda c: 2 ** (len(c.get("encoder_block_out_channels", (128,) * 6)) - 1), normalisation_of=_dc,
        ),
    )
}  # fmt: skip


def supported() -> list[str]:
    """The classes of :data:`CLASSES` this diffusers installation has."""
    from .._compat import require

    diffusers = require("diffusers")
    return [name for name in CLASSES if hasattr(diffusers, name)]


def autoencoder_class(config: dict, where: str) -> AutoencoderClass:
    """The entry for a config.json's ``_class_name``; anything else is refused in one line naming the choices."""
    name = config.get("_class_name", "AutoencoderKL")
    if name not in CLASSES:  # diffusers itself is imported only on refusal (slow): shapes need the config alone
        refuse(name, where)
    return CLASSES[name]


def refuse(name: str, where: str):
    """One line naming what ``where`` holds and the classes the codec drives with this diffusers."""
    raise ValueError(f"'{where}' holds a {name}; the vae codec drives {', '.join(supported())} "
                     f"(diffusers {_version()})")  # fmt: skip


def _version() -> str:
    import diffusers

    return diffusers.__version__


__all__ = ["CLASSES", "AutoencoderClass", "autoencoder_class", "patchify", "supported", "unpatchify"]

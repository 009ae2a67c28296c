"""The RAE codec (Zheng et al. 2025): a frozen representation encoder's patch tokens are the latent space.

``encode``: the encoder's patch tokens through its final LayerNorm *without* the affine (class and register
tokens dropped; RAE: the last block), laid out as (C, h, w), then normalised per element with dataset statistics
(``repflow rae stats``, or the official ``stat.pt`` / ``stats.pt``). RAEv2's multi-layer latent: the mean over
``layer_indices`` of those normalised tokens, plus (``token_mean``) the mean over tokens of the deepest one.
The encoder runs in ``precision`` (fp32 by default, as the official code). ``decode``: undo the
normalisation and run a ViT decoder (MAE-decoder style; diffusers' ``RAEDecoder``, so decoders move between
repflow and diffusers' ``AutoencoderRAE``) back to pixels. The latent grid is the image size over the
decoder's patch (256 px / 16 = 16 x 16); the encoder sees grid x its own patch (224 px for DINOv2-B/14).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..config import CodecConfig, EncoderConfig, checked, positive
from ..data.latent_stats import load_stats
from ..errors import ConfigError
from ..registry import CODECS


def block_list(v: tuple[int, ...]) -> str | None:
    """Block indices as the official ``get_intermediate_layers(n=[...])`` takes them (0-indexed), or all counted
    from the end (-1: the last block), each once, in increasing order."""
    if not v:
        return "must name at least one block"
    if any(a >= b for a, b in zip(v, v[1:], strict=False)) or (min(v) < 0 <= max(v)):
        return "must be increasing block indices, all >= 0 (0-indexed) or all < 0 (from the last block, -1)"
    return None


@dataclass(frozen=True)
class RAECodecConfig(CodecConfig):
    kind: str = "rae"
    encoder: str = "dinov2-vitb14-reg"  # a name from repflow.encoders (DINOv2 with registers, DINOv3, SigLIP, ...)
    encoder_path: str = ""  # its weights (file, directory or hub id; "" the name's default)
    encoder_format: Literal["auto", "timm", "transformers", "torchhub", "repflow"] = "auto"
    # the blocks averaged (0-indexed, or from the end: -1 the last). RAE and RAEv2's K1: [-1]; RAEv2's K7 on
    # DINOv3-L: [11, 13, 15, 17, 19, 21, 23]; K23: [1, 2, ..., 23]
    layer_indices: tuple[int, ...] = checked((-1,), block_list)
    token_mean: bool = False  # add the deepest block's token mean (RAEv2's DINOv3 / SigLIP2 multi-layer: true)
    decoder_patch: int = checked(16, positive)  # pixels per latent token along each side
    decoder: str = ""  # a `rae-decoder` run / checkpoint, a diffusers AutoencoderRAE directory or its hub id (cached)
    stats: str = ""  # per-element latent mean / var: `repflow rae stats`, or RAE's stat.pt / RAEv2's stats.pt
    stats_eps: float = checked(1e-5, positive)  # z = (z - mean) / sqrt(var + eps), as the official code
    cache: str = ""  # cached (unnormalised) latents: `repflow cache latents`
    # the encoder's (auto: bf16 autocast on GPU, what repflow <= 0.2 did; the official code encodes in fp32)
    precision: Literal["auto", "fp32", "bf16"] = "fp32"

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """repflow <= 0.2 wrote ``layers: k``, the mean of the last k blocks (no token mean)."""
        if "layers" not in data:
            return data
        data = dict(data)
        k = data.pop("layers")
        if type(k) is not int or k < 1:
            raise ConfigError(f"config key 'codec.layers' (the last k blocks; now codec.layer_indices) must be a "
                              f"positive integer, got {k!r}")  # fmt: skip
        return {**data, "layer_indices": list(range(-k, 0))}


def decoder_path(source: str) -> str:
    """``codec.decoder`` as a local path: a hub id (``ORG/NAME``, a diffusers AutoencoderRAE repository) is looked
    up in the local Hugging Face cache only (no multi-GB download when a run starts)."""
    from ..encoders import looks_like_hub_id

    if Path(source).expanduser().exists() or not looks_like_hub_id(source):
        return source
    from huggingface_hub import snapshot_download

    try:  # HF_HUB_CACHE read now, not when huggingface_hub was imported
        return snapshot_download(source, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE") or None)
    except (OSError, ValueError) as err:  # not cached (LocalEntryNotFoundError), incomplete, not a repository id
        raise FileNotFoundError(
            f"codec.decoder '{source}' is not a local path, nor a hub id in the local Hugging Face cache; download "
            f"it with `hf download {source} --local-dir DIR` and set codec.decoder=DIR"
        ) from err


class RAECodec:
    name = "rae"
    stochastic = False  # a deterministic encoder: cached and trained on without posterior noise
    cacheable = True

    def __init__(self, cfg: RAECodecConfig, device: torch.device | str = "cpu", decoder: str = ""):
        self.cfg, self.device = cfg, torch.device(device)
        self.factor = cfg.decoder_patch
        self.decoder_source = decoder or cfg.decoder
        if self.decoder_source and Path(self.decoder_source).exists():  # a hub id is resolved when first decoding
            from ..models.rae_decoder import check_decoder

            check_decoder(self.decoder_source)
        self._encoder = None
        self._decoder = None
        self._resolution = 0
        self.mean = self.std = None
        self.stats_meta: dict = {}
        if cfg.stats:
            mean, var, self.stats_meta = load_stats(cfg.stats)
            self.mean, self.std = mean.float(), (var.double() + cfg.stats_eps).sqrt().float()

    # -- the frozen encoder, built once the image size is known --------------------------------------------
    def encoder(self, resolution: int | None = None):
        resolution = resolution or self._resolution
        if not resolution:
            raise ValueError("the RAE codec builds its encoder for an image size: call model_shape(3, size) first")
        if self._encoder is None or resolution != self._resolution:
            from ..encoders import build_encoder, get_spec

            if resolution % self.factor:
                raise ConfigError(f"data.resolution={resolution} is not a multiple of codec.decoder_patch="
                                  f"{self.factor}")  # fmt: skip
            grid = resolution // self.factor
            spec = get_spec(self.cfg.encoder)
            ecfg = EncoderConfig(name=self.cfg.encoder, path=self.cfg.encoder_path, format=self.cfg.encoder_format)
            self._encoder = build_encoder(ecfg, grid * spec.patch_size, device=self.device)
            self._encoder.block_indices(self.cfg.layer_indices)  # blocks it lacks: refused before any training
            self._resolution = resolution
        return self._encoder

    # -- the codec protocol -----------------------------------------------------------------------------------
    def model_shape(self, channels: int, resolution: int) -> tuple[int, int, int]:
        if channels != 3:
            raise ValueError("the RAE codec's encoder sees RGB images: set data.channels=3")
        enc = self.encoder(resolution)
        grid = resolution // self.factor
        if self.mean is not None and tuple(self.mean.shape) != (enc.embed_dim, grid, grid):
            raise ConfigError(f"codec.stats holds {tuple(self.mean.shape)} statistics but the latent is "
                              f"{(enc.embed_dim, grid, grid)}; recompute them with `repflow rae stats`")  # fmt: skip
        return enc.embed_dim, grid, grid

    @torch.no_grad()
    def raw(self, images: Tensor) -> Tensor:
        """Unnormalised latent (B, C, h, w) of images in [-1, 1]."""
        resolution = images.shape[-1]
        c = self.cfg
        tokens = self.encoder(resolution).latent_tokens(images.to(self.device), c.layer_indices, c.token_mean,
                                                        c.precision)  # (B, N, C)  # fmt: skip
        grid = resolution // self.factor
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, grid, grid)

    def normalise(self, z: Tensor) -> Tensor:
        if self.mean is None:
            return z.float()
        return (z.float() - self.mean.to(z.device)) / self.std.to(z.device)

    def denormalise(self, z: Tensor) -> Tensor:
        if self.mean is None:
            return z.float()
        return z.float() * self.std.to(z.device) + self.mean.to(z.device)

    def encode(self, images: Tensor) -> Tensor:
        return self.normalise(self.raw(images))

    def moments(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """What a latent cache stores: the unnormalised latent (statistics may change without re-encoding)."""
        z = self.raw(images)
        return z, torch.zeros_like(z[:, :1, :1, :1])

    def sample(self, mean: Tensor, std: Tensor | None = None, eps: Tensor | None = None) -> Tensor:
        return self.normalise(mean)

    # -- latent statistics (`repflow codec stats`): per element of the unnormalised latent ---------------------
    def stats_rows(self, images: Tensor) -> Tensor:
        return self.raw(images)

    def stats_of(self, moments) -> tuple[Tensor, Tensor]:
        return moments.mean, moments.var

    # -- the decoder ------------------------------------------------------------------------------------------
    @property
    def can_decode(self) -> bool:
        return bool(self.decoder_source)

    def decoder(self):
        if self._decoder is None:
            if not self.decoder_source:
                raise ConfigError("codec.decoder is not set: train one (`repflow train rae-decoder-...`) or "
                                  "point it at a rae-decoder run or a diffusers AutoencoderRAE directory")  # fmt: skip
            from ..models.rae_decoder import load_decoder

            self._decoder = load_decoder(decoder_path(self.decoder_source), self.device)
        return self._decoder

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        dec = self.decoder()
        # the encoder's normalisation is undone for a decoder trained to it (diffusers' AutoencoderRAE): sampling
        # may decode before anything encoded, so the encoder is built for the size the latent grid implies
        encoder = self.encoder(z.shape[-1] * self.factor)
        return dec.images(self.denormalise(z.to(self.device)), encoder).clamp(-1, 1)

    def identity(self) -> dict[str, Any]:
        enc = self.encoder()
        blocks = enc.block_indices(self.cfg.layer_indices)
        if blocks == list(range(enc.depth - len(blocks), enc.depth)) and not self.cfg.token_mean:
            latent: dict[str, Any] = {"layers": len(blocks)}  # as repflow <= 0.2 wrote it: its caches stay valid
        else:
            latent = {"layer_indices": blocks, "token_mean": self.cfg.token_mean}
        return {"kind": self.name, "encoder": enc.identity(), **latent, "patch": self.factor}

    def to(self, device: torch.device | str) -> RAECodec:
        self.device = torch.device(device)
        if self._encoder is not None:
            self._encoder.to(self.device)
        if self._decoder is not None:
            self._decoder.to(self.device)
        return self


@CODECS.register("rae", RAECodecConfig)
def build_rae(cfg: RAECodecConfig, device: torch.device | str = "cpu", path: str = "") -> RAECodec:
    return RAECodec(cfg, device=device, decoder=path)


__all__ = ["RAECodec", "RAECodecConfig", "load_stats"]

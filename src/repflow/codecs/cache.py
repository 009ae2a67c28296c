"""``repflow cache latents``: encode a dataset once into VAE posterior moments (edm2 style).

The store (see :mod:`repflow.data.store`) holds, per image and optionally per mirror image, the posterior
``mean`` and ``std`` in the VAE's own units; training draws ``mean + std * eps`` every step, so the cache
loses nothing against encoding on the fly. A deterministic codec (a frozen representation encoder) stores
its latent as ``mean`` alone and trains on it with zero posterior noise. The manifest records the codec
identity (encoder weights hash, latent layout), the resolution, the image count and the dataset
fingerprint; a run whose settings differ is refused with a one-line message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import Config
from ..data.datasets import ImageDataset
from ..data.encode import EncodeReport, cache_images, cache_meta
from ..data.loader import build_dataset
from ..data.store import ArrayStore, Field
from ..data.transforms import uint8_to_model
from ..runtime.distributed import DistInfo
from . import Codec, build_codec

LATENTS = "latents"  # store name: the arrays reach the batch as "latents.mean" and "latents.std"


def latent_meta(cfg: Config, codec: Codec, dataset: ImageDataset) -> dict[str, Any]:
    """What a latent cache must match: checked when it is resumed and when a run opens it."""
    return cache_meta(LATENTS, "codec", codec.identity(), cfg.data.resolution, dataset)


def rebuild_hint(cfg: Config) -> str:
    return (
        f"rebuild it with `repflow cache latents CONFIG --out {cfg.codec.cache or 'DIR'}` using this run's "
        "data.* and codec.* settings, or point codec.cache elsewhere"
    )


def open_latent_cache(cfg: Config, codec: Codec, dataset: ImageDataset) -> ArrayStore:
    """The run's latent cache, refused if made for another codec, resolution or dataset (or lacking flips)."""
    if not codec.cacheable:
        raise ValueError(f"codec.cache is set but codec.kind={codec.name} encodes nothing; use codec.kind=vae")
    return ArrayStore.open(
        cfg.codec.cache, expect=latent_meta(cfg, codec, dataset), need_flips=cfg.data.hflip, hint=rebuild_hint(cfg)
    )


def cache_latents(
    cfg: Config, out: str | Path, *, dtype: str = "float32", dist: DistInfo | None = None, **options: Any
) -> EncodeReport:
    """Encode ``cfg.data`` with ``cfg.codec`` into ``out`` (resuming a cache interrupted there). ``options``: as
    :func:`repflow.data.encode.encode_dataset` (flips, batch_size, workers, shard_size, overwrite, progress)."""
    dist = dist or DistInfo()
    codec = build_codec(cfg.codec, device=dist.device)
    if not codec.cacheable:
        raise ValueError(f"codec.kind={cfg.codec.kind} has nothing to cache; set codec.kind=vae (and codec.path)")
    dataset = build_dataset(cfg.data, num_classes_hint=max(cfg.model.num_classes, 1))
    shape = codec.model_shape(cfg.data.channels, cfg.data.resolution)
    moments = ("mean", "std") if codec.stochastic else ("mean",)  # deterministic: the latent alone
    fields = {k: Field(shape, dtype) for k in moments}

    def encode(images):
        mean, std = codec.moments(uint8_to_model(images))
        return {"mean": mean, "std": std} if codec.stochastic else {"mean": mean}

    source = {"codec_path": getattr(codec, "path", "")}
    meta = latent_meta(cfg, codec, dataset)
    return cache_images(cfg.data, dataset, out, fields, encode, meta, source, dist=dist, desc="caching latents",
                        **options)  # fmt: skip


__all__ = ["LATENTS", "cache_latents", "latent_meta", "open_latent_cache"]

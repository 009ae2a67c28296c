"""``repflow cache features``: run a frozen encoder over a dataset once and keep its outputs.

One store per encoder (``encoders[i].cache``) with two float16 fields: ``patch`` (N, D) patch tokens and
``cls`` (D,) the global vector, for every image and (with ``--flip``) its mirror image, so a run with
``data.hflip`` reads the features of exactly the view it trains on. Training reads them as
``features<i>.patch`` / ``features<i>.cls`` instead of running the encoder; the manifest records the encoder's
weight hash, input size and width, the data resolution, the count and the dataset fingerprint, and a run
whose encoder or data differ is refused with a one-line message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..data.datasets import ImageDataset
from ..data.encode import EncodeReport, cache_images, cache_meta
from ..data.store import ArrayStore, Field
from ..data.transforms import uint8_to_model
from .base import FrozenEncoder


def store_name(i: int) -> str:
    """Arrays of encoder i reach the batch as ``features<i>.patch`` and ``features<i>.cls``."""
    return f"features{i}"


def feature_meta(cfg: Config, encoder: FrozenEncoder, dataset: ImageDataset) -> dict[str, Any]:
    return cache_meta("features", "encoder", encoder.identity(), cfg.data.resolution, dataset)


def open_feature_cache(cfg: Config, i: int, encoder: FrozenEncoder, dataset: ImageDataset) -> ArrayStore:
    hint = (
        f"rebuild it with `repflow cache features CONFIG --encoder {i} --out {cfg.encoders[i].cache}` using this "
        f"run's data.* and encoders[{i}] settings, or point encoders[{i}].cache elsewhere"
    )
    return ArrayStore.open(
        cfg.encoders[i].cache, expect=feature_meta(cfg, encoder, dataset), need_flips=cfg.data.hflip, hint=hint
    )


def cache_features(
    cfg: Config, encoder: FrozenEncoder, dataset: ImageDataset, out: str | Path, *, dtype: str = "float16",
    **options: Any,
) -> EncodeReport:  # fmt: skip
    """Encode ``dataset`` with a frozen ``encoder`` into ``out`` (resuming an interrupted cache there).
    ``options``: as :func:`repflow.data.encode.encode_dataset` (flips, batch_size, workers, dist, ...)."""
    device = next(encoder.buffers()).device
    dim = encoder.embed_dim
    fields = {"patch": Field((encoder.num_patches, dim), dtype), "cls": Field((dim,), dtype)}

    @torch.no_grad()
    def encode(images: torch.Tensor) -> dict[str, torch.Tensor]:
        out = encoder(uint8_to_model(images.to(device)))
        return {"patch": out.patch, "cls": out.cls}

    return cache_images(cfg.data, dataset, out, fields, encode, feature_meta(cfg, encoder, dataset),
                        {"source": encoder.source}, desc=f"caching {encoder.name} features", **options)  # fmt: skip


__all__ = ["cache_features", "feature_meta", "open_feature_cache", "store_name"]

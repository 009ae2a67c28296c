"""Factories: everything a run needs, built from its config. The CLI, the loop and the tests use these."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .codecs import DEFAULT_VAE, Codec, build_codec
from .config import Config, ConfigError
from .data import ImageDataset, build_dataset
from .flow.loss import FlowMatching
from .flow.path import build_path
from .flow.timesteps import TimeSampler, dimension_shift
from .models import FlowTransformer, build_model, resolve_arch
from .objectives import Objective


def codec_for(cfg: Config, device: torch.device | str = "cpu", vae: str = "") -> Codec:
    """The run's codec, as stored in its (resolved) config, so sampling decodes with the VAE training used.
    ``vae`` swaps in another VAE explicitly (e.g. sd-vae-ft-mse to decode a model trained on ft-ema latents)."""
    return build_codec(cfg.codec, device=device, path=vae)


def resolve_config(cfg: Config, dataset: ImageDataset, codec: Codec | None = None) -> Config:
    """Fill every derived field (architecture dims, classes, input size, channels, time shift, VAE path)."""
    codec = codec or codec_for(cfg)
    try:
        c, h, _ = codec.model_shape(cfg.data.channels, cfg.data.resolution)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    model = resolve_arch(cfg.model)
    num_classes = dataset.num_classes if model.num_classes < 0 else model.num_classes
    if num_classes > 0 and dataset.num_classes == 0:
        raise ConfigError(
            f"model.num_classes={num_classes} but the dataset has no class folders; set model.num_classes=0"
        )
    if dataset.num_classes and num_classes > dataset.num_classes:
        raise ConfigError(f"model.num_classes={num_classes} exceeds the dataset's {dataset.num_classes} classes")
    for key, derived in (("input_size", h), ("in_channels", c)):
        given = getattr(model, key)
        if given and given != derived:
            raise ConfigError(f"model.{key}={given} does not match the data ({derived}); leave it at 0")
    model = dataclasses.replace(model, num_classes=num_classes, input_size=h, in_channels=c)
    time = cfg.flow.time
    if time.shift_base_dim > 0:
        time = dataclasses.replace(time, shift=dimension_shift(c * h * h, time.shift_base_dim))
    flow = dataclasses.replace(cfg.flow, time=time)
    codec_cfg = cfg.codec
    if codec_cfg.kind == "sd_vae" and not codec_cfg.path:
        codec_cfg = dataclasses.replace(codec_cfg, path=DEFAULT_VAE)  # stored, so sampling loads the same VAE
    # frozen encoders see 224 px (448 px, with interpolated position embeddings, for 512 px data: REPA)
    encoders = tuple(
        e if e.resolution else dataclasses.replace(e, resolution=448 if cfg.data.resolution >= 512 else 224)
        for e in cfg.encoders
    )
    return dataclasses.replace(cfg, model=model, flow=flow, codec=codec_cfg, encoders=encoders)


def attach_caches(cfg: Config, dataset: ImageDataset, codec: Codec) -> ImageDataset:
    """Serve the run's caches (codec.cache: latent posteriors) instead of decoding images, after checking
    that each was made for this run's codec, resolution and dataset."""
    from .data.cache_latents import LATENTS, open_latent_cache
    from .data.cached import CachedDataset

    stores = {}
    if cfg.codec.cache:
        stores[LATENTS] = open_latent_cache(cfg, codec, dataset)
    return CachedDataset(dataset, stores) if stores else dataset


def build_network(cfg: Config) -> FlowTransformer:
    """The denoising network of a resolved config."""
    return build_model(cfg.model)


def build_objective(cfg: Config, model: nn.Module) -> Objective:
    t = cfg.flow.time
    flow = FlowMatching(
        path=build_path(cfg.flow.path),
        time_sampler=TimeSampler(kind=t.kind, mean=t.mean, std=t.std, shift=t.shift),
        prediction=cfg.flow.prediction,
        loss_space=cfg.flow.loss_space,
        min_denominator=cfg.flow.min_denominator,
        class_dropout=cfg.model.class_dropout if cfg.model.num_classes > 0 else 0.0,
        null_label=getattr(model, "null_label", 0),
    )
    return Objective(flow, terms=[])


__all__ = ["attach_caches", "build_dataset", "build_network", "build_objective", "codec_for", "resolve_config"]

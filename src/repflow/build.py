"""Factories: everything a run needs, built from its config. The CLI, the loop and the tests use these."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from .codecs import DEFAULT_VAE, Codec, build_codec
from .config import Config, ConfigError, RepaConfig
from .data import ImageDataset, build_dataset
from .flow.loss import FlowMatching
from .flow.path import build_path
from .flow.timesteps import TimeSampler, dimension_shift
from .models import FlowTransformer, build_model, resolve_arch
from .objectives import Objective, RegTerm, RepaTerm
from .objectives.repa import default_depth


def codec_for(cfg: Config, device: torch.device | str = "cpu", vae: str = "") -> Codec:
    """The run's codec, as stored in its (resolved) config, so sampling decodes with the VAE training used.
    ``vae`` swaps in another VAE explicitly (e.g. sd-vae-ft-mse to decode a model trained on ft-ema latents)."""
    return build_codec(cfg.codec, device=device, path=vae)


def needs_encoders(cfg: Config) -> bool:
    return cfg.repa.enabled or (cfg.reg.enabled and cfg.reg.source != "learnable")


def resolve_config(cfg: Config, dataset: ImageDataset, codec: Codec | None = None) -> Config:
    """Fill every derived field (architecture dims, classes, input size, channels, time shift, VAE path,
    encoder input sizes, REPA depth). REG's vector width needs the encoder itself: see resolve_encoder_dims."""
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
    codec_cfg = cfg.codec
    if codec_cfg.kind == "sd_vae" and not codec_cfg.path:
        codec_cfg = dataclasses.replace(codec_cfg, path=DEFAULT_VAE)  # stored, so sampling loads the same VAE
    cfg = dataclasses.replace(cfg, model=model, flow=dataclasses.replace(cfg.flow, time=time), codec=codec_cfg)
    return _resolve_representation(cfg)


def _resolve_representation(cfg: Config) -> Config:
    if needs_encoders(cfg) and not cfg.encoders:
        method = "repa" if cfg.repa.enabled else "reg"
        raise ConfigError(f"{method}.enabled needs a frozen encoder: add one under 'encoders' (e.g. dinov2-vitb14)")
    from .encoders import default_resolution  # light: the registry only

    grid = cfg.model.input_size // cfg.model.patch_size
    encoders = tuple(dataclasses.replace(e, resolution=default_resolution(e, grid)) for e in cfg.encoders)
    return dataclasses.replace(cfg, encoders=encoders, repa=_resolve_repa(cfg))


def _resolve_repa(cfg: Config) -> RepaConfig:
    repa = cfg.repa
    if repa.enabled:
        depth = repa.depth or default_depth(cfg.model.depth)
        if not 1 <= depth <= cfg.model.depth:
            raise ConfigError(f"repa.depth={depth} must lie in 1..{cfg.model.depth} (the model's blocks)")
        repa = dataclasses.replace(repa, depth=depth)
    return repa


def resolve_static(cfg: Config) -> Config:
    """What can be resolved without reading the data or loading weights (``--dry-run``): architecture
    dims and REPA's block. Classes, input size, channels and encoder widths follow when training starts."""
    cfg = dataclasses.replace(cfg, model=resolve_arch(cfg.model))
    return dataclasses.replace(cfg, repa=_resolve_repa(cfg))


def resolve_encoder_dims(cfg: Config, dims: list[int]) -> Config:
    """Record REG's vector width from the (first) encoder's actual width."""
    if not (cfg.reg.enabled and cfg.reg.source != "learnable"):
        return cfg
    if cfg.reg.dim and cfg.reg.dim != dims[0]:
        raise ConfigError(f"reg.dim={cfg.reg.dim} but encoder {cfg.encoders[0].name} gives {dims[0]}; leave it at 0")
    return dataclasses.replace(cfg, reg=dataclasses.replace(cfg.reg, dim=dims[0]))


def vector_streams(cfg: Config) -> dict[str, int]:
    """Streams denoised besides the image, with their widths (REG's class token)."""
    if cfg.reg.enabled and cfg.reg.source != "learnable":
        if cfg.reg.dim <= 0:
            raise ConfigError("reg.dim is not resolved; build the model from a trained checkpoint's config")
        return {"cls": cfg.reg.dim}
    return {}


def stream_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    """Per-sample shape of every generated stream, for the samplers."""
    m = cfg.model
    return {"x": (m.in_channels, m.input_size, m.input_size), **{k: (d,) for k, d in vector_streams(cfg).items()}}


def guidance_scales(cfg: Config, opts=None) -> dict[str, float]:
    opts = opts or cfg.sample
    cls_scale = opts.cfg if opts.cfg_cls < 0 else opts.cfg_cls
    return {k: (opts.cfg if k == "x" else cls_scale) for k in stream_shapes(cfg)}


def attach_caches(cfg: Config, dataset: ImageDataset, codec: Codec, encoders: list | None = None) -> ImageDataset:
    """Serve the run's caches (codec.cache: latent posteriors; encoders[i].cache: features) instead of
    recomputing them, after checking that each was made for this run's codec / encoder, resolution and data.
    Images are still decoded when something runs online (the codec or an encoder without a cache)."""
    from .data.cache_latents import LATENTS, open_latent_cache
    from .data.cached import CachedDataset
    from .encoders.cache import open_feature_cache, store_name

    stores = {}
    if cfg.codec.cache:
        stores[LATENTS] = open_latent_cache(cfg, codec, dataset)
    encoders = encoders or []
    for i, enc in enumerate(encoders):
        if cfg.encoders[i].cache:
            stores[store_name(i)] = open_feature_cache(cfg, i, enc, dataset)
    online = not cfg.codec.cache or any(not cfg.encoders[i].cache for i in range(len(encoders)))
    return CachedDataset(dataset, stores, images=online) if stores else dataset


def build_network(cfg: Config) -> FlowTransformer:
    """The denoising network of a resolved config."""
    learned = 1 if cfg.reg.enabled and cfg.reg.source == "learnable" else 0
    return build_model(cfg.model, vector_streams=vector_streams(cfg), learned_tokens=learned)


def build_encoders(cfg: Config, device=None, only: int | None = None) -> list:
    """The run's frozen encoders; one whose features are cached stays on the CPU (it only vouches for the
    cache's identity and width)."""
    from .encoders import build_encoder

    chosen = range(len(cfg.encoders)) if only is None else [only]
    return [
        build_encoder(cfg.encoders[i], cfg.encoders[i].resolution, device="cpu" if cfg.encoders[i].cache else device)
        for i in chosen
    ]


def build_objective(cfg: Config, model: nn.Module, encoder_dims: list[int] | None = None) -> Objective:
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
    terms: list = []
    if cfg.reg.enabled:
        terms.append(RegTerm(cfg.reg.weight, cfg.reg.source))
    if cfg.repa.enabled:
        if not encoder_dims:
            raise ConfigError("repa.enabled needs the encoders' widths to build its projectors")
        align = cfg.reg.source if cfg.reg.enabled and cfg.reg.source != "learnable" else ""
        terms.append(
            RepaTerm(
                cfg.model.hidden_size, encoder_dims, cfg.repa.depth, cfg.repa.weight, cfg.repa.projector_dim,
                front_tokens=getattr(model, "num_front_tokens", 0), align_front=align,
            )
        )  # fmt: skip
    return Objective(flow, terms=terms)


__all__ = [
    "attach_caches",
    "build_dataset",
    "build_encoders",
    "build_network",
    "build_objective",
    "codec_for",
    "guidance_scales",
    "resolve_config",
    "resolve_static",
    "resolve_encoder_dims",
    "stream_shapes",
]

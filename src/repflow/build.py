"""Factories: everything a run needs, built from its config. The CLI, the loop and the tests use these."""

from __future__ import annotations

import dataclasses

from torch import nn

from .codecs import Codec, build_codec
from .config import Config, ConfigError
from .data import ImageDataset, build_dataset
from .flow.loss import FlowMatching
from .flow.path import build_path
from .flow.timesteps import TimeSampler, dimension_shift
from .models import FlowTransformer, build_model, resolve_arch
from .objectives import Objective


def codec_for(cfg: Config) -> Codec:
    return build_codec("pixel")


def resolve_config(cfg: Config, dataset: ImageDataset) -> Config:
    """Fill every derived field (architecture dims, classes, input size, channels, time shift)."""
    c, h, _ = codec_for(cfg).model_shape(cfg.data.channels, cfg.data.resolution)
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
    return dataclasses.replace(cfg, model=model, flow=flow)


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


__all__ = ["build_dataset", "build_network", "build_objective", "codec_for", "resolve_config"]

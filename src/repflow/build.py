"""Assembling a run from its config: codec, data, encoders, the method. Training, sampling and evaluation
all build through these functions (they sit above ``methods`` and below ``train`` / ``sample``)."""

from __future__ import annotations

import dataclasses
import json

from .codecs import Codec, codec_for
from .config import Config, ConfigError
from .data import ImageDataset, build_dataset
from .errors import CheckpointError
from .flow.timesteps import dimension_shift
from .methods.base import Method, MethodEnv
from .models import resolve_arch
from .registry import METHODS


def method_class(cfg: Config) -> type[Method]:
    return METHODS.get(cfg.method.kind).target


def needs_encoders(cfg: Config) -> bool:
    return method_class(cfg).needs_encoders(cfg)


def resolve_static(cfg: Config) -> Config:
    """What can be resolved without reading the data or loading weights (``--dry-run``): architecture
    dims and what the method fills from them (REPA's block). Classes, input size, channels and encoder widths
    follow when training starts."""
    cfg = dataclasses.replace(cfg, model=resolve_arch(cfg.model))
    return method_class(cfg).resolve_static(cfg)


def resolve_config(cfg: Config, dataset: ImageDataset, codec: Codec | None = None) -> Config:
    """Fill every field derived from the data and the codec (architecture dims, classes, input size, channels,
    time shift, encoder input sizes) and what the method derives from them. Fields that need the encoders'
    weights (REG's width) are filled by ``Method.resolve`` once the encoders are loaded."""
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
    cfg = dataclasses.replace(cfg, model=model, flow=dataclasses.replace(cfg.flow, time=time))
    if needs_encoders(cfg) and not cfg.encoders:
        raise ConfigError(f"{cfg.method.kind} with these settings needs a frozen encoder: add one under 'encoders' "
                          "(e.g. dinov2-vitb14, or tiny offline)")  # fmt: skip
    from .encoders import default_resolution  # light: the registry only

    grid = cfg.model.input_size // max(cfg.model.patch_size, 1)
    encoders = tuple(dataclasses.replace(e, resolution=default_resolution(e, grid)) for e in cfg.encoders)
    return method_class(cfg).resolve_static(dataclasses.replace(cfg, encoders=encoders))


def check_guidance_has_classes(cfg: Config) -> None:
    """A run without classes cannot sample with classifier-free guidance (its previews and ``repflow sample``'s
    default would fail after training): refused when the run starts. A preset's or a shared YAML's ``sample.cfg``
    is the usual cause; AutoGuidance (``sample.guide``) and a network taking the scale as input need no labels.
    Checked after the method's own checks (MeanFlow's guidance in the target says more)."""
    m, s = cfg.model, cfg.sample
    if m.num_classes == 0 and s.cfg != 1 and not s.guide and not m.guidance_input and method_class(cfg).generates():
        raise ConfigError(f"sample.cfg={s.cfg:g} is classifier-free guidance, which needs classes, and this data has "
                          "no class folders (an unconditional model): set sample.cfg=1")  # fmt: skip


def attach_caches(cfg: Config, dataset: ImageDataset, codec: Codec, encoders: list | None = None,
                  images: bool = False) -> ImageDataset:  # fmt: skip
    """Serve the run's caches (codec.cache: latent posteriors; encoders[i].cache: features) instead of
    recomputing them, after checking that each was made for this run's codec / encoder, resolution and data.
    Images are still decoded when something runs online (the codec, an encoder without a cache) or ``images``."""
    from .codecs.cache import LATENTS, open_latent_cache
    from .data.cached import CachedDataset
    from .encoders.cache import open_feature_cache, store_name

    stores = {}
    codec_cache = getattr(cfg.codec, "cache", "")
    if codec_cache:
        stores[LATENTS] = open_latent_cache(cfg, codec, dataset)
    encoders = encoders or []
    for i, enc in enumerate(encoders):
        if cfg.encoders[i].cache:
            stores[store_name(i)] = open_feature_cache(cfg, i, enc, dataset)
    online = images or not codec_cache or any(not cfg.encoders[i].cache for i in range(len(encoders)))
    return CachedDataset(dataset, stores, images=online) if stores else dataset


def build_encoders(cfg: Config, device=None, only: int | None = None) -> list:
    """The run's frozen encoders; one whose features are cached stays on the CPU (it only vouches for the
    cache's identity and width)."""
    from .encoders import build_encoder

    chosen = range(len(cfg.encoders)) if only is None else [only]
    return [
        build_encoder(cfg.encoders[i], cfg.encoders[i].resolution, device="cpu" if cfg.encoders[i].cache else device)
        for i in chosen
    ]


def build_method(cfg: Config, env: MethodEnv) -> Method:
    return method_class(cfg)(cfg, env)


WEIGHTS_KEY = "repflow.trained_as"  # safetensors metadata: the resume key the weights were trained with


def weights_record(cfg: Config) -> str:
    """What a checkpoint's weights mean (the method's resume key), stored in every weights file."""
    return json.dumps(method_class(cfg).resume_key(cfg), sort_keys=True, default=str)


def check_weights_record(ckpt) -> None:
    """Refuse a checkpoint whose ``config.yaml`` no longer describes its weights (edited after training)."""
    stored = ckpt.metadata("model").get(WEIGHTS_KEY) if (ckpt.path / "model.safetensors").is_file() else None
    if stored is None:
        return  # written before repflow recorded it
    trained, now = json.loads(stored), json.loads(weights_record(ckpt.config))
    # keys the record lacks are fields a newer repflow added (their stored configs were upgraded to match)
    diff = [k for k in sorted(trained) if trained[k] != now.get(k)]
    if diff:
        k = diff[0]
        raise CheckpointError(
            f"{ckpt.path}/config.yaml does not describe its weights: {k} is {now.get(k)!r} there but the weights "
            f"were trained with {trained.get(k)!r} (edited after training?); restore the config of the run"
        )


__all__ = [
    "attach_caches",
    "build_dataset",
    "build_encoders",
    "build_method",
    "codec_for",
    "method_class",
    "needs_encoders",
    "resolve_config",
    "resolve_static",
]

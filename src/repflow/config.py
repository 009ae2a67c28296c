"""The configuration schema (frozen dataclasses), YAML presets and strict dotted overrides.

A run is described by one :class:`Config`. Presets are YAML files shipped in ``repflow/presets``; a preset may
name another with ``inherit:`` and override parts of it. Command-line overrides are ``key.sub=value`` with
the value parsed as YAML. Unknown keys and wrong types raise :class:`ConfigError` with one line naming the
key and the closest valid ones. The resolved config (every derived field filled in) is stored with the run
and in every checkpoint, so sampling and evaluation rebuild the model from the checkpoint alone.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(ValueError):
    """A configuration problem, explained in one line."""


@dataclass(frozen=True)
class DataConfig:
    dataset: Literal["fashion_mnist", "mnist", "image_folder", "file_list", "synthetic"] = "fashion_mnist"
    root: str = ""  # image_folder: the folder; file_list: the text file; else where the offline datasets are
    split: Literal["train", "test"] = "train"
    resolution: int = 32
    channels: Literal[1, 3] = 3  # greyscale data is replicated to 3 channels unless this is 1
    hflip: bool = False
    subset: int = 0  # use only the first N images (0: all)
    workers: int = -1  # DataLoader workers; -1: chosen from the CPU count
    synthetic_size: int = 512  # images in the synthetic dataset (tests)


@dataclass(frozen=True)
class CodecConfig:
    """Pixels <-> model space. ``pixel``: the identity; ``sd_vae``: a diffusers AutoencoderKL."""

    kind: Literal["pixel", "sd_vae"] = "pixel"
    path: str = ""  # sd_vae: local directory or hub id, e.g. stabilityai/sd-vae-ft-ema
    scale: float = 0.18215  # z_model = (z_vae - shift) * scale
    shift: float = 0.0
    cache: str = ""  # directory of cached latents (repflow cache latents); "" encodes on the fly
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # the VAE's: auto is bf16 autocast on GPU, fp32 on CPU


@dataclass(frozen=True)
class EncoderConfig:
    """A frozen representation encoder (DINOv2, CLIP, SigLIP, MAE, or repflow's tiny ViT)."""

    name: str = "dinov2-vitb14"  # see `repflow.encoders.ENCODERS`
    path: str = ""  # local file / directory or hub id; "" uses the name's default hub id
    format: Literal["auto", "timm", "transformers", "torchhub", "repflow"] = "auto"
    resolution: int = 0  # input size; 0: 224, or 448 when the data is 512 px
    cache: str = ""  # directory of cached features (repflow cache features); "" runs the encoder each step


@dataclass(frozen=True)
class RepaConfig:
    """REPA: align the hidden state after block ``depth`` through an MLP projector with encoder patch tokens."""

    enabled: bool = False
    weight: float = 0.5  # lambda
    depth: int = 0  # 1-indexed block; 0: 4 for models up to B, 8 for L and XL
    projector_dim: int = 2048


@dataclass(frozen=True)
class RegConfig:
    """REG: denoise the encoder's global vector jointly with the image, as one extra token."""

    enabled: bool = False
    weight: float = 0.03  # beta
    source: Literal["cls", "patch_mean", "learnable"] = "cls"
    dim: int = 0  # width of the global vector; 0: from the encoder (filled in the resolved config)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "SiT-S/2"  # a name from models.presets; depth/width/heads/patch of 0 are taken from it
    depth: int = 0
    hidden_size: int = 0
    num_heads: int = 0
    patch_size: int = 0
    mlp_ratio: float = 4.0
    qk_norm: bool = False
    num_classes: int = -1  # -1: from the dataset; 0: unconditional
    class_dropout: float = 0.1  # label drop rate for classifier-free guidance (a null row is added if > 0)
    input_size: int = 0  # spatial size the network sees; 0: from data resolution and codec
    in_channels: int = 0  # 0: from data channels and codec
    time_scale: float = 1.0  # t is embedded as time_scale * t (1.0 matches SiT/REPA/REG checkpoints)


@dataclass(frozen=True)
class TimeConfig:
    kind: Literal["uniform", "logit_normal", "lognormal"] = "uniform"
    mean: float = 0.0  # logit-normal location (t = sigmoid(mean + std * n), t = 1 is noise)
    std: float = 1.0
    shift: float = 1.0  # t <- s t / (1 + (s - 1) t); 1 disables
    shift_base_dim: int = 0  # if > 0, s = sqrt(data_dim / shift_base_dim) (RAE uses 4096)


@dataclass(frozen=True)
class FlowConfig:
    path: Literal["linear", "cosine"] = "linear"
    prediction: Literal["v", "x", "eps"] = "v"  # what the network outputs
    loss_space: Literal["v", "x", "eps"] = "v"  # where the squared error is taken
    min_denominator: float = 0.05  # divisions by t (or alpha) are clipped here (JiT uses 0.05)
    time: TimeConfig = field(default_factory=TimeConfig)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64  # global batch (all processes, all accumulation steps)
    grad_accum: int = 1
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    adam_eps: float = 1e-8
    schedule: Literal["constant", "linear", "cosine"] = "constant"  # after warmup
    warmup_steps: int = 0
    lr_final: float = 0.0  # end value of the linear / cosine decay
    grad_clip: float = 1.0  # 0 disables
    ema_decays: tuple[float, ...] = (0.9999,)
    ema_warmup: bool = False  # decay min(d, (1 + n) / (10 + n)) after n steps: useful for short runs
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    parallel: Literal["ddp", "fsdp"] = "ddp"  # under torchrun: replicate (DDP) or fully shard (FSDP2)
    compile: bool = False
    grad_checkpointing: bool = False
    log_every: int = 50
    ckpt_every: int = 1000
    keep_ckpts: int = 2
    sample_every: int = 0  # EMA sample grid every N steps (0: only at the end)
    sample_num: int = 64


@dataclass(frozen=True)
class SampleConfig:
    sampler: Literal["euler", "heun", "sde", "dopri5"] = "heun"
    steps: int = 50
    cfg: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # guidance is applied for t in [lo, hi]
    sde_t_last: float = 0.04  # SDE: stochastic steps down to here, then one noise-free mean step to 0
    rtol: float = 1e-4  # dopri5
    atol: float = 1e-4
    ema: float = -1.0  # EMA decay to sample from; -1: the first EMA, 0: the raw weights
    batch_size: int = 64
    seed: int = 0
    cfg_cls: float = -1.0  # REG: guidance scale of the class token; -1: same as cfg


@dataclass(frozen=True)
class Config:
    name: str = "run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    encoders: tuple[EncoderConfig, ...] = ()  # frozen encoders for REPA / REG (REG uses the first)
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    repa: RepaConfig = field(default_factory=RepaConfig)
    reg: RegConfig = field(default_factory=RegConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


# ----------------------------------------------------------------------------------------------------------
# Building configs from dictionaries, with one-line errors.


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (allowing int -> float and list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[0]):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config key '{key}' must be one of {_type_name(tp)}, got {value!r}{hint}")
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = [value] if args[-1] is Ellipsis else value
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' expects a list of {len(args)} values, got {value!r}")
        if args[-1] is Ellipsis:
            if dataclasses.is_dataclass(args[0]):
                return tuple(from_dict(args[0], v, prefix=f"{key}[{i}].") for i, v in enumerate(value))
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"config key '{key}' expects {len(args)} values, got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}' has the wrong type: {value!r}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        try:  # YAML reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool) and (type(value) is not tp):
        raise ConfigError(f"config key '{key}' expects {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(_unknown_key_message(full, [f"{prefix}{n}" for n in names]))
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, prefix=f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _unknown_key_message(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:  # compare the last component too (train.lrr -> train.lr)
        leaf = key.rsplit(".", 1)[-1]
        close = [
            v
            for v in valid
            if v.rsplit(".", 1)[-1]
            in difflib.get_close_matches(leaf, [x.rsplit(".", 1)[-1] for x in valid], n=3, cutoff=0.5)
        ]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown config key '{key}'{hint}"


def to_dict(cfg: Any) -> dict:
    """Plain nested dict (tuples as lists) suitable for YAML/JSON."""

    def convert(v: Any) -> Any:
        if isinstance(v, tuple):
            return [convert(x) for x in v]
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        return v

    return convert(dataclasses.asdict(cfg))


def to_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_yaml(text: str) -> Config:
    return from_dict(Config, yaml.safe_load(text) or {})


# ----------------------------------------------------------------------------------------------------------
# Presets and overrides.


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping at the top level")
    return data


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _resolve_source(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"config file '{path}' does not exist")
        return path
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if preset.is_file():
        return preset
    close = difflib.get_close_matches(name_or_path, list_presets(), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `repflow presets` lists them"
    raise ConfigError(f"no preset or YAML file named '{name_or_path}'{hint}")


def load_dict(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict:
    """Read a preset or YAML file into a dict, following ``inherit:`` chains."""
    path = _resolve_source(name_or_path)
    if str(path) in _seen:
        raise ConfigError(f"config inheritance loops through '{path}'")
    data = _read_yaml(path)
    parent = data.pop("inherit", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise ConfigError(f"{path}: 'inherit' must name one preset or file")
    if parent.endswith((".yaml", ".yml")) and (path.parent / parent).is_file():
        parent = str(path.parent / parent)  # relative to the inheriting file
    return _merge(load_dict(parent, _seen + (str(path),)), data)


def parse_overrides(items: list[str]) -> dict:
    """``["train.lr=3e-4", "model.qk_norm=true"]`` -> nested dict, values parsed as YAML."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise ConfigError(f"override '{item}' has an empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier override of '{part}'")
        node[parts[-1]] = value
    return out


def load_config(name_or_path: str | None = None, overrides: list[str] | None = None) -> Config:
    """Preset or YAML file (or the defaults), then dotted overrides; strictly validated."""
    data = load_dict(name_or_path) if name_or_path else {}
    data = _merge(data, parse_overrides(overrides or []))
    return from_dict(Config, data)


def replace(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that accepts dotted keys: ``replace(cfg, **{"train.lr": 1e-3})``."""
    nested: dict[str, dict] = {}
    flat = {}
    for key, value in changes.items():
        head, _, rest = key.partition(".")
        if rest:
            nested.setdefault(head, {})[rest] = value
        else:
            flat[key] = value
    for head, sub in nested.items():
        flat[head] = replace(getattr(cfg, head), **sub)
    return dataclasses.replace(cfg, **flat)

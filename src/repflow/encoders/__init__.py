"""Frozen representation encoders behind one protocol (see ``base.FrozenEncoder``).

``build_encoder(cfg, resolution)`` picks the weights format from ``cfg.format`` or, in ``auto`` mode, from
``cfg.path``: a directory -> transformers; a file -> timm / official torch.hub layout (DINOv2, DINOv3) or a
repflow tiny-encoder file; a hub id -> timm (``timm/...``) or transformers; nothing -> the name's default hub
weights (DINOv2 and DINOv3 through timm, others through transformers), which needs a network or a filled hub
cache.
"""

from __future__ import annotations

from pathlib import Path

from ..config import EncoderConfig
from ..errors import CheckpointError
from .base import EncoderOutput, FrozenEncoder
from .registry import ENCODERS, EncoderSpec, get_spec, register_encoder

__all__ = [
    "ENCODERS",
    "EncoderOutput",
    "EncoderSpec",
    "FrozenEncoder",
    "build_encoder",
    "default_resolution",
    "get_spec",
    "register_encoder",
]


def default_resolution(cfg: EncoderConfig, model_grid: int) -> int:
    """Encoder input size giving one encoder patch per model token: 16 x 14 = 224 for SiT-*/2 at 256 px,
    32 x 14 = 448 at 512 px (REPA's choice); an explicit ``cfg.resolution`` wins."""
    return cfg.resolution or model_grid * get_spec(cfg.name).patch_size


def resolve_format(spec: EncoderSpec, cfg: EncoderConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    path = Path(cfg.path) if cfg.path else None
    if spec.family == "tiny":
        return "repflow"
    if path is not None and path.is_dir():
        return "transformers"
    if path is not None and path.is_file():
        return "timm"  # timm's DINOv2 filter also reads the official torch.hub layout
    timm_only = ("dinov2", "dinov3", "convnext")  # families whose default weights come through timm
    if cfg.path.startswith(("timm/", "hf-hub:timm/")) or (not cfg.path and spec.family in timm_only):
        return "timm"
    return "transformers"


def looks_like_hub_id(path: str) -> bool:
    """``namespace/name`` (optionally ``timm/`` or ``hf-hub:`` prefixed), not a filesystem path."""
    path = path.removeprefix("hf-hub:")
    suffixes = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
    return path.count("/") in (1, 2) and not path.startswith(("/", ".", "~")) and not path.endswith(suffixes)


def build_encoder(cfg: EncoderConfig, resolution: int, device=None) -> FrozenEncoder:
    """A frozen encoder for ``cfg`` taking ``resolution`` x ``resolution`` inputs."""
    from .convnext import timm_convnext_encoder
    from .dinov2 import timm_encoder, transformers_encoder
    from .dinov3 import timm_dinov3_encoder
    from .hf import hf_vision_encoder
    from .tiny import tiny_encoder

    spec = get_spec(cfg.name)
    fmt = resolve_format(spec, cfg)
    if cfg.path and not Path(cfg.path).exists() and not looks_like_hub_id(cfg.path):
        raise FileNotFoundError(f"encoder weights '{cfg.path}' do not exist (give a file, a directory or a hub id)")
    source = f"{fmt}:{cfg.path or spec.timm_name or spec.hf_id or 'packaged'}"
    try:
        if fmt == "repflow":
            enc = tiny_encoder(spec, resolution, cfg.path, source)
        elif spec.family == "dinov2" and fmt in ("timm", "torchhub"):
            enc = timm_encoder(spec, resolution, cfg.path, source)
        elif spec.family == "dinov3" and fmt in ("timm", "torchhub"):
            enc = timm_dinov3_encoder(spec, resolution, cfg.path, source)
        elif spec.family == "convnext" and fmt == "timm":
            enc = timm_convnext_encoder(spec, resolution, cfg.path, source)
        elif spec.family in ("dinov2", "dinov3"):
            enc = transformers_encoder(spec, resolution, cfg.path or spec.hf_id, source)
        elif fmt == "transformers":
            enc = hf_vision_encoder(spec, resolution, cfg.path or spec.hf_id, source)
        else:
            raise ValueError(f"encoder {cfg.name} ({spec.family}) cannot be loaded in format {fmt!r}")
    except CheckpointError:  # a refused file: its own line says why
        raise
    except OSError as err:  # hub misses (offline), unreadable directories
        raise FileNotFoundError(
            f"could not load encoder {cfg.name} from {source} ({str(err).splitlines()[0]}); "
            "download the weights once and point encoders[i].path at the local file or directory"
        ) from err
    except (RuntimeError, KeyError) as err:  # a state dict of another architecture: hundreds of lines from torch
        first = " ".join(str(err).split())[:200]
        raise ValueError(
            f"the weights at {cfg.path or source} do not fit encoder {cfg.name} ({first}...); check that "
            f"encoders[i].name names the architecture of the file (e.g. dinov2-vits14 vs dinov2-vitb14)"
        ) from err
    return enc.to(device) if device is not None else enc

"""REG (Wu et al. 2025): denoise the encoder's global vector jointly with the image, as one extra token.

The class token ``cls`` (DINOv2's ``x_norm_clstoken``) is noised with the image's t and its own noise (the
flow loss does that for every stream); its velocity loss is weighted by beta = 0.03. The network side is a
vector stream: Linear + LayerNorm in as token 0 (no position embedding), a zero-initialised Linear out after
the final adaLN. At sampling the class token is generated jointly with the image, guided with its own scale.
With REPA on, REPA aligns the class token too (257 tokens for DINOv2-B at 224 px).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor

from ..config import Config, ConfigError, SampleConfig, Section, checked, nonnegative
from ..registry import TERMS
from .base import MethodEnv, TrainBatch
from .flow import Term

SOURCES = ("cls", "patch_mean", "learnable")


@dataclass(frozen=True)
class RegConfig(Section):
    """REG: denoise the encoder's global vector jointly with the image, as one extra token."""

    PREFIX: ClassVar[str] = "reg."
    enabled: bool = False
    weight: float = checked(0.03, nonnegative)  # beta
    source: Literal["cls", "patch_mean", "learnable"] = "cls"
    dim: int = checked(0, nonnegative)  # width of the global vector; 0: from the encoder (filled when training)
    # separate: the class token has its own scale (sample.cfg_cls; -1 = cfg, 0 = unconditional), guided whenever
    # its scale is not 1. official: as Martinser/REG, guided only when cfg > 1; cfg_cls <= 0 = conditional only.
    cls_guidance: Literal["separate", "official"] = "separate"


def global_vector(batch: TrainBatch, encoder: int, source: str) -> Tensor:
    """The global vector of encoder ``encoder``: its class token, or the mean of its patch tokens."""
    if source == "cls":
        return batch.features[f"{encoder}.cls"]
    if source == "patch_mean":
        return batch.features[f"{encoder}.patch"].mean(dim=1)
    raise ValueError(f"REG global vector source {source!r} has no encoder target; choose from {SOURCES[:2]}")


def denoises_vector(cfg: Config) -> bool:
    """REG with an encoder target (not the learnable-token ablation)."""
    return cfg.reg.enabled and cfg.reg.source != "learnable"


@TERMS.register("reg", RegConfig)
class RegTerm(Term):
    section = "reg"

    def __init__(self, weight: float = 0.03, source: str = "cls"):
        super().__init__()
        if source not in SOURCES:
            raise ValueError(f"unknown REG source {source!r}; choose from {SOURCES}")
        self.weight, self.source = weight, source

    @classmethod
    def build(cls, cfg: Config, env: MethodEnv, network) -> RegTerm:
        return cls(cfg.reg.weight, cfg.reg.source)

    @classmethod
    def needs_encoders(cls, cfg: Config) -> bool:
        return denoises_vector(cfg)

    @classmethod
    def network_streams(cls, cfg: Config) -> dict[str, int]:
        if not denoises_vector(cfg):
            return {}
        if cfg.reg.dim <= 0:
            raise ConfigError("reg.dim is not resolved; build the model from a trained checkpoint's config")
        return {"cls": cfg.reg.dim}

    @classmethod
    def front_token(cls, cfg: Config) -> str:
        return "learned" if cfg.reg.source == "learnable" else "stream"

    @classmethod
    def learned_tokens(cls, cfg: Config) -> int:
        return 1 if cfg.reg.source == "learnable" else 0  # the ablation: a learned token, nothing to denoise

    @classmethod
    def guidance(cls, cfg: Config, opts: SampleConfig, scales: dict[str, float]) -> dict[str, float]:
        if "cls" not in scales:
            return scales
        if cfg.reg.cls_guidance == "official":  # REG's samplers: nothing is guided unless cfg > 1
            if opts.cfg <= 1:
                return {k: 1.0 for k in scales}
            return {**scales, "cls": opts.cfg_cls if opts.cfg_cls > 0 else 1.0}
        return {**scales, "cls": opts.cfg if opts.cfg_cls < 0 else opts.cfg_cls}

    @classmethod
    def resolve(cls, cfg: Config, env: MethodEnv) -> Config:
        """Record the vector's width from the (first) encoder's actual width."""
        if not denoises_vector(cfg):
            return cfg
        width = env.encoder_dims[0]
        if cfg.reg.dim and cfg.reg.dim != width:
            raise ConfigError(f"reg.dim={cfg.reg.dim} but encoder {cfg.encoders[0].name} gives {width}; leave it at 0")
        return cfg.replace(reg=dataclasses.replace(cfg.reg, dim=width))

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        return {f"reg.{k}": getattr(cfg.reg, k) for k in ("enabled", "source", "dim")}

    def streams(self, batch: TrainBatch) -> dict[str, tuple[Tensor, float]]:
        if self.source == "learnable":
            return {}
        return {"cls": (global_vector(batch, 0, self.source), self.weight)}

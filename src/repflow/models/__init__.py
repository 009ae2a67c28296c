"""Networks. ``build_model`` turns a resolved ``ModelConfig`` into a module."""

from __future__ import annotations

import dataclasses

from ..config import ModelConfig
from .dit import FlowTransformer, ModelOutput
from .presets import ARCHS, arch_dims

__all__ = ["ARCHS", "FlowTransformer", "ModelOutput", "arch_dims", "build_model", "resolve_arch"]


def resolve_arch(cfg: ModelConfig) -> ModelConfig:
    """Fill depth / width / heads / patch left at 0 from the named ``arch``."""
    dims = arch_dims(cfg.arch)
    return dataclasses.replace(cfg, **{k: v for k, v in dims.items() if getattr(cfg, k) <= 0})


def build_model(
    cfg: ModelConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0
) -> FlowTransformer:
    return FlowTransformer(resolve_arch(cfg), vector_streams=vector_streams, learned_tokens=learned_tokens)

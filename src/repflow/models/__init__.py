"""Networks, by family (``model.family``): each family registers its config section and network class.

``build_model`` turns a resolved config into a module; ``resolve_arch`` fills the dims a named size implies.
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from ..registry import ARCHITECTURES
from . import ddt, dit_dh, dsd_net, jit, lightningdit  # noqa: F401  (register the other families)
from .dit import FlowTransformer, ModelOutput, SiTConfig
from .presets import ARCHS, arch_dims

__all__ = ["ARCHS", "FlowTransformer", "ModelOutput", "SiTConfig", "arch_dims", "build_model", "resolve_arch"]


def network_class(cfg: ModelConfig) -> type:
    return ARCHITECTURES.get(cfg.family).target


def resolve_arch(cfg: ModelConfig) -> ModelConfig:
    """Fill depth / width / heads / patch left at 0 from the named ``arch`` of the family."""
    return network_class(cfg).resolve(cfg)


def build_model(cfg: ModelConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0) -> nn.Module:
    """The network of ``cfg``; ``vector_streams`` and ``learned_tokens`` are what terms add (REG)."""
    cls = network_class(cfg)
    return cls(cls.resolve(cfg), vector_streams=vector_streams, learned_tokens=learned_tokens)

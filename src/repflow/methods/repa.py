"""REPA (Yu et al., ICLR 2025): align a hidden state with frozen-encoder patch features.

``L_repa = - mean_tokens cos(h_phi(h_l), y)``, with ``h_l`` the tokens after block ``depth`` (1-indexed) and
``h_phi`` an MLP hidden -> 2048 -> 2048 -> D_enc (SiLU). With REG the front token is aligned too, with the
encoder's global vector (257 tokens for DINOv2-B at 224 px). The projectors live in the objective, so they
never reach inference weights.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import Config, ConfigError, Section, checked, nonnegative, positive
from ..flow.loss import FlowSample
from ..registry import TERMS
from .base import MethodEnv, TrainBatch
from .flow import Term, resolve_block
from .reg import denoises_vector, global_vector


@dataclass(frozen=True)
class RepaConfig(Section):
    """REPA: align the hidden state after block ``depth`` through an MLP projector with encoder patch tokens."""

    PREFIX: ClassVar[str] = "repa."
    enabled: bool = False
    weight: float = checked(0.5, nonnegative)  # lambda
    depth: int = checked(0, nonnegative)  # 1-indexed block; 0: 4 for models up to B, 8 for L and XL
    projector_dim: int = checked(2048, positive)
    projector: Literal["mlp", "linear"] = "mlp"  # linear: RAEv2's variant, one Linear(hidden, D_enc)
    loss: Literal["cosine", "mse"] = "cosine"  # mse: RAEv2's, F.mse_loss on the raw encoder tokens


def build_projector(hidden: int, projector_dim: int, out_dim: int, kind: str = "mlp") -> nn.Module:
    """REPA's MLP hidden -> projector_dim -> projector_dim -> out_dim with SiLU; xavier-uniform weights and zero
    biases, as the official REPA/REG models initialise every Linear (``_basic_init``). ``linear``: RAEv2's single
    ``nn.Linear`` with torch's default initialisation, as theirs."""
    if kind == "linear":
        return nn.Linear(hidden, out_dim)
    mlp = nn.Sequential(
        nn.Linear(hidden, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, projector_dim),
        nn.SiLU(),
        nn.Linear(projector_dim, out_dim),
    )
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    return mlp


def default_depth(model_depth: int) -> int:
    """REPA's choice: block 4 for SiT-B (12 blocks), 8 for SiT-L/XL; a third of the depth below that."""
    return max(1, model_depth // 3) if model_depth <= 12 else 8


def match_grid(tokens: Tensor, n: int) -> Tensor:
    """Resize (B, M, D) tokens on a square grid to n tokens (bilinear), when encoder and model grids differ."""
    b, m, d = tokens.shape
    if m == n:
        return tokens
    src, dst = math.isqrt(m), math.isqrt(n)
    if src * src != m or dst * dst != n:
        raise ValueError(f"cannot match {m} encoder tokens to {n} model tokens (not square grids)")
    grid = tokens.transpose(1, 2).reshape(b, d, src, src)
    grid = F.interpolate(grid.float(), size=(dst, dst), mode="bilinear", align_corners=False)
    return grid.reshape(b, d, n).transpose(1, 2)


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """RAEv2's alignment: the mean squared difference over tokens, channels and batch (``F.mse_loss``)."""
    return F.mse_loss(pred.float(), target.float())


def negative_cosine(pred: Tensor, target: Tensor) -> Tensor:
    """-cos averaged over tokens and batch: -1 when every projected token points along its target."""
    return -(F.normalize(pred.float(), dim=-1) * F.normalize(target.float(), dim=-1)).sum(-1).mean()


@TERMS.register("repa", RepaConfig)
class RepaTerm(Term):
    section = "repa"

    def __init__(
        self,
        hidden_size: int,
        encoder_dims: Sequence[int],
        depth: int,
        weight: float = 0.5,
        projector_dim: int = 2048,
        front_tokens: int = 0,
        align_front: str = "",
        projector: str = "mlp",
        loss: str = "cosine",
    ):
        """``front_tokens``: tokens before the image tokens (REG); ``align_front``: the global vector they are
        aligned with ("cls" / "patch_mean"; "" leaves them out, e.g. for a learnable token)."""
        super().__init__()
        self.depth, self.weight, self.front, self.align_front = depth, weight, front_tokens, align_front
        self.hidden_layers = (depth,)
        self.projectors = nn.ModuleList(build_projector(hidden_size, projector_dim, d, projector) for d in encoder_dims)
        self.distance = mse if loss == "mse" else negative_cosine

    @classmethod
    def build(cls, cfg: Config, env: MethodEnv, network) -> RepaTerm:
        if not env.encoder_dims:
            raise ConfigError("repa.enabled needs the encoders' widths to build its projectors")
        align = cfg.reg.source if denoises_vector(cfg) else ""
        return cls(
            cfg.model.hidden_size, env.encoder_dims, cfg.repa.depth, cfg.repa.weight, cfg.repa.projector_dim,
            front_tokens=getattr(network, "num_front_tokens", 0), align_front=align, projector=cfg.repa.projector,
            loss=cfg.repa.loss,
        )  # fmt: skip

    @classmethod
    def needs_encoders(cls, cfg: Config) -> bool:
        return True

    @classmethod
    def resolve_static(cls, cfg: Config) -> Config:
        return resolve_block(cfg, "repa", default_depth(cfg.model.depth))

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        return {f"repa.{k}": getattr(cfg.repa, k) for k in ("enabled", "depth", "projector_dim", "projector")}

    def loss(self, batch: TrainBatch, sample: FlowSample) -> dict[str, tuple[Tensor, float]]:
        hidden = sample.output.hidden[self.depth]  # (B, front + N, D)
        n = hidden.shape[1] - self.front
        tokens = hidden if self.align_front else hidden[:, self.front :]
        losses = []
        for i, projector in enumerate(self.projectors):
            target = match_grid(batch.features[f"{i}.patch"], n)  # (B, N, D_i)
            if self.align_front:
                target = torch.cat([global_vector(batch, i, self.align_front).unsqueeze(1), target], dim=1)
            losses.append(self.distance(projector(tokens), target))
        return {"repa": (torch.stack(losses).mean(), self.weight)}

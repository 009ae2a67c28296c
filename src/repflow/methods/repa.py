"""REPA (Yu et al., ICLR 2025): align a hidden state with frozen-encoder patch features.

``L_repa = - mean_tokens cos(h_phi(h_l), y)``, with ``h_l`` the tokens after block ``depth`` (1-indexed) and
``h_phi`` an MLP hidden -> 2048 -> 2048 -> D_enc (SiLU). With REG the front token is aligned too, with the
encoder's global vector (257 tokens for DINOv2-B at 224 px). The projectors live in the objective, so they
never reach inference weights.

iREPA ("What matters for representation alignment", 2025; End2End-Diffusion/iREPA) is two options
of the same term: a convolution over the token grid as ``h_phi`` (``repa.projector: conv``) and a spatial
z-score of the target, ``(y - alpha mean_tokens y) / (std_tokens y + 1e-6)`` (``repa.spatial_norm: zscore``).
Their latent (``ldm/``) and pixel (``jit/``) code bases default differently: kernel 1 and alpha 0.6 on latents,
kernel 3 and alpha 0.8 on pixels; ``repa.projector_kernel: 0`` / ``repa.zscore_alpha: -1`` take the branch of
``codec.kind``.
"""

from __future__ import annotations

import dataclasses
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
from ..runtime.precision import full_precision
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
    projector: Literal["mlp", "linear", "conv"] = "mlp"  # linear: RAEv2's Linear(hidden, D_enc); conv: iREPA's
    loss: Literal["cosine", "mse"] = "cosine"  # mse: RAEv2's, F.mse_loss on the raw encoder tokens
    # iREPA: conv's kernel (odd; 0: 1 on latents, 3 on pixels) and the target's spatial normalisation strength
    projector_kernel: int = checked(0, lambda v: None if v == 0 or (v > 0 and v % 2) else "must be 0 or odd")
    spatial_norm: Literal["none", "zscore"] = "none"
    zscore_alpha: float = checked(-1.0, lambda v: None if v == -1 or 0 <= v <= 1 else "must be -1 or in [0, 1]")


# iREPA's defaults per code base: (conv kernel, z-score alpha); ldm/train.py and jit/main_jit.py argparse
IREPA_DEFAULTS = {"latent": (1, 0.6), "pixel": (3, 0.8)}


class GridConv(nn.Module):
    """iREPA's projector: (B, N, D) tokens on a square grid -> Conv2d(kernel, same padding) -> (B, N, D_out)."""

    def __init__(self, hidden: int, out_dim: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(hidden, out_dim, kernel, padding=kernel // 2)

    def forward(self, tokens: Tensor) -> Tensor:
        b, n, d = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"repa.projector=conv needs a square token grid, got {n} tokens")
        grid = tokens.transpose(1, 2).reshape(b, d, side, side)  # (B, D, h, w), row-major tokens
        return self.conv(grid).flatten(2).transpose(1, 2)  # (B, N, D_out)


def spatial_zscore(feat: Tensor, alpha: float, eps: float = 1e-6) -> Tensor:
    """iREPA's spatial normalisation of (B, N, D) patch tokens, over the tokens of each image and channel:
    ``(y - alpha mean) / (std + eps)`` with the unbiased std (torch's default, as theirs)."""
    mean = feat.mean(dim=1, keepdim=True)
    std = feat.std(dim=1, keepdim=True)
    return (feat - alpha * mean) / (std + eps)


def build_projector(hidden: int, projector_dim: int, out_dim: int, kind: str = "mlp", kernel: int = 1) -> nn.Module:
    """REPA's MLP hidden -> projector_dim -> projector_dim -> out_dim with SiLU; xavier-uniform weights and zero
    biases, as the official REPA/REG models initialise every Linear (``_basic_init``). ``linear``: RAEv2's single
    ``nn.Linear`` with torch's default initialisation, as theirs. ``conv``: iREPA's ``nn.Conv2d`` over the
    token grid (same padding, torch's default initialisation: their ``_basic_init`` touches only Linears)."""
    if kind == "linear":
        return nn.Linear(hidden, out_dim)
    if kind == "conv":
        return GridConv(hidden, out_dim, kernel)
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
    """-cos averaged over tokens and batch: -1 when every projected token points along its target (fp32, or
    fp64 for fp64 inputs)."""
    return -(F.normalize(full_precision(pred), dim=-1) * F.normalize(full_precision(target), dim=-1)).sum(-1).mean()


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
        kernel: int = 1,
        zscore_alpha: float | None = None,
    ):
        """``front_tokens``: tokens before the image tokens (REG); ``align_front``: the global vector they are
        aligned with ("cls" / "patch_mean"; "" leaves them out, e.g. for a learnable token); ``zscore_alpha``:
        iREPA's spatial normalisation of the patch targets (None: none)."""
        super().__init__()
        self.depth, self.weight, self.front, self.align_front = depth, weight, front_tokens, align_front
        self.hidden_layers = (depth,)
        self.projectors = nn.ModuleList(
            build_projector(hidden_size, projector_dim, d, projector, kernel) for d in encoder_dims
        )
        self.distance = mse if loss == "mse" else negative_cosine
        self.zscore_alpha = zscore_alpha

    @classmethod
    def build(cls, cfg: Config, env: MethodEnv, network) -> RepaTerm:
        if not env.encoder_dims:
            raise ConfigError("repa.enabled needs the encoders' widths to build its projectors")
        align = cfg.reg.source if denoises_vector(cfg) else ""
        return cls(
            cfg.model.hidden_size, env.encoder_dims, cfg.repa.depth, cfg.repa.weight, cfg.repa.projector_dim,
            front_tokens=getattr(network, "num_front_tokens", 0), align_front=align, projector=cfg.repa.projector,
            loss=cfg.repa.loss, kernel=cfg.repa.projector_kernel,
            zscore_alpha=cfg.repa.zscore_alpha if cfg.repa.spatial_norm == "zscore" else None,
        )  # fmt: skip

    @classmethod
    def needs_encoders(cls, cfg: Config) -> bool:
        return True

    @classmethod
    def resolve_static(cls, cfg: Config) -> Config:
        """The block, and iREPA's kernel / alpha left at 0 / -1 from the branch of the codec (pixels or latents)."""
        if cfg.repa.projector == "conv" and denoises_vector(cfg):
            raise ConfigError("repa.projector=conv projects the image grid; REG's class token has no place on it: "
                              "use repa.projector=mlp with reg")  # fmt: skip
        cfg = resolve_block(cfg, "repa", default_depth(cfg.model.depth))
        kernel, alpha = IREPA_DEFAULTS["pixel" if cfg.codec.kind == "pixel" else "latent"]
        r = cfg.repa
        return cfg.replace(
            repa=dataclasses.replace(
                r,
                projector_kernel=r.projector_kernel or kernel,
                zscore_alpha=alpha if r.zscore_alpha == -1 else r.zscore_alpha,
            )
        )

    @classmethod
    def resume_key(cls, cfg: Config) -> dict[str, Any]:
        keys = ("enabled", "depth", "projector_dim", "projector") + (
            ("projector_kernel",) * (cfg.repa.projector == "conv")
        )
        return {f"repa.{k}": getattr(cfg.repa, k) for k in keys}

    def loss(self, batch: TrainBatch, sample: FlowSample) -> dict[str, tuple[Tensor, float]]:
        hidden = sample.output.hidden[self.depth]  # (B, front + N, D)
        n = hidden.shape[1] - self.front
        tokens = hidden if self.align_front else hidden[:, self.front :]
        losses = []
        for i, projector in enumerate(self.projectors):
            target = batch.features[f"{i}.patch"]  # (B, M, D_i)
            if self.zscore_alpha is not None:  # iREPA: on the encoder's own grid, before any resize (as theirs)
                target = spatial_zscore(target.float(), self.zscore_alpha)
            target = match_grid(target, n)  # (B, N, D_i)
            if self.align_front:
                target = torch.cat([global_vector(batch, i, self.align_front).unsqueeze(1), target], dim=1)
            losses.append(self.distance(projector(tokens), target))
        return {"repa": (torch.stack(losses).mean(), self.weight)}

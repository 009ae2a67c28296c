"""LightningDiT (Yao et al. 2025, hustvl/LightningDiT): the SiT network with the LLaMA-era block.

The official recipe's block (``use_swiglu``, ``use_rope``, ``use_rmsnorm``; ``use_qknorm`` off, ``wo_shift`` off)
is the shared :class:`~repflow.models.layers.RoPEBlock`: RMSNorm, 2-D RoPE (EVA's layout) in the attention,
SwiGLU with ``int(2/3 * 4 D)`` hidden units, adaLN-Zero modulation from ``t + y``. The final adaLN normalises
with RMSNorm. Everything else (fixed sin-cos positions besides RoPE, DiT's time and label embedders, xavier
initialisation, zero adaLN and output) is SiT's, so this family is SiT with other blocks, and REG's front
tokens (no position, no rotation) work as on SiT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor, nn

from ..config import ConfigError
from ..registry import ARCHITECTURES
from .dit import FlowTransformer, SiTConfig
from .layers import RoPEBlock, rope_2d
from .presets import SIZES, size_table

# the official sizes (models/lightningdit.py): B, L, XL and the 1.0B / 1.6B scale-ups; T for tests and demos
LIGHTNING_SIZES = {**SIZES, "1p0B": (24, 1536, 24), "1p6B": (28, 1792, 28)}
LIGHTNING_ARCHS = size_table(("LightningDiT",), LIGHTNING_SIZES, (1, 2, 4, 8))


@dataclass(frozen=True)
class LightningDiTConfig(SiTConfig):
    family: str = "lightningdit"
    arch: str = "LightningDiT-B/2"

    def validate(self) -> None:
        if self.qk_norm == "layernorm":
            raise ConfigError("model.qk_norm=layernorm is the SiT block's; LightningDiT takes none or rmsnorm")


@ARCHITECTURES.register("lightningdit", LightningDiTConfig)
class LightningDiT(FlowTransformer):
    ARCHS: ClassVar[dict[str, dict[str, int]]] = LIGHTNING_ARCHS
    rms_final = True

    def __init__(self, cfg: LightningDiTConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0):
        super().__init__(cfg, vector_streams, learned_tokens)
        grid = cfg.input_size // cfg.patch_size
        # front tokens (REG's class token) are not rotated, as JiT's in-context tokens
        cos, sin = rope_2d(cfg.hidden_size // cfg.num_heads, grid, front=self.num_front_tokens)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def make_block(self, cfg: LightningDiTConfig) -> nn.Module:
        return RoPEBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, qk_norm=cfg.qk_norm == "rmsnorm")

    def block_inputs(self, grid_h: int, grid_w: int) -> tuple[Tensor, ...]:
        if grid_h * grid_w + self.num_front_tokens != self.rope_cos.shape[0]:
            raise ValueError(f"LightningDiT's RoPE tables are for a {self.cfg.input_size} px input; got "
                             f"{grid_h * self.patch_size}x{grid_w * self.patch_size}")  # fmt: skip
        return self.rope_cos, self.rope_sin

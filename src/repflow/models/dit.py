"""The SiT/DiT backbone: a plain transformer over patch tokens with adaLN-Zero conditioning.

The network knows nothing about noise or paths; it maps noised *streams* to predictions:

- ``"x"``: the image (pixels or latents), ``(B, C, H, W)``, patchified into tokens;
- optional vector streams (REG's class token), each ``(B, D)`` and carried as one token at the front of the
  sequence, with a zero position embedding and a zero-initialised output head;
- optional learned front tokens (REG's "learnable token" ablation), after the streams, with no output.

It can return the hidden states after chosen blocks (1-indexed, all tokens including the front ones), which
is what REPA aligns and what CKNNA analyses.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import Tensor, nn

from ..config import ModelConfig, checked, positive
from ..registry import ARCHITECTURES
from .layers import (
    DiTBlock,
    FinalNorm,
    LabelEmbedder,
    run_block,
    sincos_pos_embed_2d,
    unpatchify,
    vector_stream_layers,
)
from .presets import ARCHS, fill_from_arch
from .time_embedding import TimestepEmbedder


@dataclass(frozen=True)
class SiTConfig(ModelConfig):
    """SiT / DiT: patch embedding, fixed sin-cos positions, adaLN-Zero blocks with a GELU MLP."""

    family: str = "sit"
    mlp_ratio: float = checked(4.0, positive)
    qk_norm: Literal["none", "layernorm", "rmsnorm"] = "none"  # layernorm: the official REPA/REG --qk-norm
    time_scale: float = 1.0  # t is embedded as time_offset + time_scale * t (1, 0: REPA/REG checkpoints)
    time_offset: float = 0.0  # official SiT checkpoints: time_offset 1, time_scale -1 (their t = 1 is data)
    allow_narrow: bool = False  # RAE's width rule: refuse (v / eps prediction) a width below a token's values

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        """repflow <= 0.1 wrote ``qk_norm: true`` for its RMSNorm QK-norm."""
        if isinstance(data.get("qk_norm"), bool):
            data = {**data, "qk_norm": "rmsnorm" if data["qk_norm"] else "none"}
        return data


@dataclass
class ModelOutput:
    pred: dict[str, Tensor]  # one prediction per stream, same shapes as the inputs
    hidden: dict[int, Tensor] = field(default_factory=dict)  # block index -> (B, T, D)
    shallow: dict[str, Tensor] = field(default_factory=dict)  # an internal output's predictions (RAEv2's guidance)
    velocity: dict[str, Tensor] = field(default_factory=dict)  # a velocity head's predictions (iMF's auxiliary v)


@ARCHITECTURES.register("sit", SiTConfig)
class FlowTransformer(nn.Module):
    ARCHS: ClassVar[dict[str, dict[str, int]]] = ARCHS
    FRONT_TOKENS: ClassVar[tuple[str, ...]] = ("stream", "learned")  # what terms may add: REG's token, its ablation
    VELOCITY_HEAD: ClassVar[bool] = True  # builds model.velocity_head

    @classmethod
    def resolve(cls, cfg: ModelConfig) -> ModelConfig:
        """Fill depth / width / heads / patch left at 0 from the named ``arch``."""
        return fill_from_arch(cfg, cls.ARCHS)

    def __init__(self, cfg: SiTConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0):
        super().__init__()
        for key in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels"):
            if getattr(cfg, key) <= 0:
                raise ValueError(f"model.{key} is not resolved ({getattr(cfg, key)}); build via build_model()")
        if cfg.input_size % cfg.patch_size:
            raise ValueError(f"input size {cfg.input_size} is not divisible by patch size {cfg.patch_size}")
        self.cfg = cfg
        d, p = cfg.hidden_size, cfg.patch_size
        self.patch_size = p
        self.in_channels = cfg.in_channels
        self.num_classes = max(cfg.num_classes, 0)
        self.grad_checkpointing = False

        self.x_embedder = nn.Conv2d(cfg.in_channels, d, kernel_size=p, stride=p)
        self.t_embedder = TimestepEmbedder(
            d, time_scale=cfg.time_scale, time_offset=cfg.time_offset, interval=cfg.interval_input,
            guidance=cfg.guidance_input,
        )  # fmt: skip
        self.y_embedder = (
            LabelEmbedder(self.num_classes, d, null_class=cfg.class_dropout > 0) if self.num_classes else None
        )
        grid = cfg.input_size // p
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, grid, grid), persistent=False)
        self.blocks = nn.ModuleList(self.make_block(cfg) for _ in range(cfg.depth))
        self.final_norm = FinalNorm(d, rms=self.rms_final)
        self.out_x = nn.Linear(d, p * p * cfg.in_channels)

        self.vector_streams = dict(vector_streams or {})  # REG's class token: zero-initialised out
        self.stream_in, self.stream_out = vector_stream_layers(self.vector_streams, d)
        self.learned_tokens = nn.Parameter(torch.zeros(1, learned_tokens, d)) if learned_tokens else None
        # iMF's velocity head: its own copy of the last velocity_head blocks and of the output layer, branching
        # off the trunk after block depth - velocity_head (imfDiT: shared blocks, then u and v heads)
        k = cfg.velocity_head
        if k > cfg.depth:
            raise ValueError(f"model.velocity_head={k} copies more blocks than the network has ({cfg.depth})")
        self.velocity_blocks = nn.ModuleList(self.make_block(cfg) for _ in range(k)) if k else None
        self.velocity_norm = FinalNorm(d, rms=self.rms_final) if k else None
        self.velocity_out = nn.Linear(d, p * p * cfg.in_channels) if k else None
        self.velocity_stream_out = vector_stream_layers(self.vector_streams, d)[1] if k else None
        self.initialize_weights()

    rms_final: ClassVar[bool] = False  # the final adaLN's norm: LayerNorm (SiT) or RMSNorm (LightningDiT)

    def make_block(self, cfg: SiTConfig) -> nn.Module:
        """One transformer block; a family with other blocks (LightningDiT) overrides this and ``block_inputs``."""
        return DiTBlock(cfg.hidden_size, cfg.num_heads, cfg.mlp_ratio, qk_norm=cfg.qk_norm)

    def block_inputs(self, grid_h: int, grid_w: int) -> tuple[Tensor, ...]:
        """What every block takes besides the tokens and the condition (LightningDiT: its RoPE tables)."""
        return ()

    @property
    def null_label(self) -> int:
        return self.num_classes  # the extra embedding row

    @property
    def num_front_tokens(self) -> int:
        """Tokens before the image tokens: one per vector stream, then the learned tokens."""
        return len(self.vector_streams) + (0 if self.learned_tokens is None else self.learned_tokens.shape[1])

    def initialize_weights(self) -> None:
        """All initialisation in one place (DiT): xavier linears, adaLN-Zero, zero output heads."""

        def basic(m: nn.Module) -> None:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

        self.apply(basic)
        w = self.x_embedder.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        self.t_embedder.initialize()
        if self.learned_tokens is not None:
            nn.init.normal_(self.learned_tokens, std=0.02)
        velocity = [] if self.velocity_blocks is None else [*self.velocity_blocks, self.velocity_norm]
        for block in [*self.blocks, self.final_norm, *velocity]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        outs = [] if self.velocity_out is None else [self.velocity_out, *self.velocity_stream_out.values()]
        for head in [self.out_x, *self.stream_out.values(), *outs]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def position_embedding(self, grid_h: int, grid_w: int) -> Tensor:
        if self.pos_embed.shape[0] == grid_h * grid_w and grid_h == grid_w:
            return self.pos_embed
        return sincos_pos_embed_2d(self.cfg.hidden_size, grid_h, grid_w).to(self.pos_embed.device)

    def condition(self, t: Tensor, y: Tensor | None, h: Tensor | None = None,
                  guidance: Tensor | None = None) -> Tensor:  # fmt: skip
        c = self.t_embedder(t, h, guidance)  # (B, D)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, self.null_label, dtype=torch.long)
            c = c + self.y_embedder(y)
        return c

    def forward(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None = None,
                return_hidden: Sequence[int] = (), h: Tensor | None = None,
                guidance: Tensor | None = None) -> ModelOutput:  # fmt: skip
        """The network's call (every family's): ``h`` is the interval t - r of a MeanFlow network
        (``model.interval_input``), ``guidance`` (B, 3) iMF's ``(w, t_lo, t_hi)`` (``model.guidance_input``)."""
        x = states["x"]
        interval = h
        b, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input {h}x{w} is not divisible by the patch size {p}")
        gh, gw = h // p, w // p
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = tokens + self.position_embedding(gh, gw).to(tokens.dtype)
        # front tokens carry no position embedding
        front = [self.stream_in[k](states[k]).unsqueeze(1) for k in self.vector_streams]  # (B, 1, D) each
        if self.learned_tokens is not None:
            front.append(self.learned_tokens.expand(b, -1, -1).to(tokens.dtype))
        if front:
            tokens = torch.cat([*front, tokens], dim=1)  # (B, S + N, D)
        c = self.condition(t, y, interval, guidance)
        extra = self.block_inputs(gh, gw)

        hidden: dict[int, Tensor] = {}
        checkpointing = self.grad_checkpointing and self.training
        shared = len(self.blocks) - (0 if self.velocity_blocks is None else len(self.velocity_blocks))
        branch = tokens
        for i, block in enumerate(self.blocks, start=1):
            tokens = run_block(block, checkpointing, tokens, c, *extra)
            if i in return_hidden:
                hidden[i] = tokens
            if i == shared:
                branch = tokens  # where the velocity head leaves the trunk
        missing = set(return_hidden) - set(hidden)
        if missing:
            raise ValueError(f"hidden states requested after blocks {sorted(missing)}, model has {len(self.blocks)}")
        pred = self.read_out(self.final_norm(tokens, c), self.out_x, self.stream_out, gh, gw)
        if self.velocity_blocks is None:
            return ModelOutput(pred=pred, hidden=hidden)
        for block in self.velocity_blocks:
            branch = run_block(block, checkpointing, branch, c, *extra)
        velocity = self.read_out(self.velocity_norm(branch, c), self.velocity_out, self.velocity_stream_out, gh, gw)
        return ModelOutput(pred=pred, hidden=hidden, velocity=velocity)

    def read_out(self, tokens: Tensor, out_x: nn.Module, stream_out: nn.ModuleDict, gh: int, gw: int):
        """Every stream's prediction from the final tokens: the image's patches, one token per vector stream."""
        p, front = self.patch_size, self.num_front_tokens
        pred = {"x": unpatchify(out_x(tokens[:, front:]), gh, gw, p, self.in_channels)}
        for j, k in enumerate(self.vector_streams):
            pred[k] = stream_out[k](tokens[:, j])
        return pred

"""JiT (Li & He 2025, "Back to Basics: Let Denoising Generative Models Denoise"): a plain ViT on large pixel
patches that predicts the clean image.

Against SiT's DiT: a bottleneck patch embedding (Conv p x p -> d' without bias, then 1 x 1 -> hidden), RMSNorm
everywhere, SwiGLU MLPs, 2-D RoPE on q and k (after an RMSNorm QK-norm), and *in-context* class tokens: 32
copies of the label embedding plus a learned position embedding, put in front of the sequence before block
``context_start`` (0-indexed, as the official code) and dropped before the final layer. adaLN-Zero
conditioning (time + label) as in DiT; dropout on the middle half of the blocks for the H / G sizes.

Layouts follow the official code, so its checkpoints convert by renaming: qkv rows [q | k | v], SwiGLU's gate
first, RoPE on interleaved pairs with the first half of a head's dims rotated by the row and the second half
by the column, the in-context tokens unrotated, output tokens (p, q, c) with the channel fastest.

REG's class token (a vector stream) is the first token from block 0 on, before the in-context tokens, unrotated;
its prediction is read from the final layer like the image's (the same kind: x with JiT's x-prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..config import ModelConfig, checked, nonnegative, positive, probability
from ..registry import ARCHITECTURES
from .dit import ModelOutput
from .layers import (
    LabelEmbedder,
    RMSNorm,
    RoPEBlock,
    modulate,
    rope_2d,
    run_block,
    sincos_pos_embed_2d,
    swiglu_hidden,
    unpatchify,
    vector_stream_layers,
)
from .presets import fill_from_arch, size_table
from .time_embedding import TimestepEmbedder

# (depth, hidden, heads, bottleneck, context start block, dropout) of the paper's sizes; "T" for tests/demos
JIT_SIZES: dict[str, tuple[int, int, int, int, int, float]] = {
    "T": (6, 192, 3, 32, 2, 0.0),
    "B": (12, 768, 12, 128, 4, 0.0),
    "L": (24, 1024, 16, 128, 8, 0.0),
    "H": (32, 1280, 16, 256, 10, 0.2),
    "G": (40, 1664, 16, 256, 10, 0.2),
}
JIT_PATCHES = (2, 4, 8, 16, 32)
_EXTRA = ("bottleneck", "context_start", "dropout")  # what a JiT size sets besides depth / width / heads
JIT_ARCHS = {
    name: {**dims, **dict(zip(_EXTRA, JIT_SIZES[name[4:].split("/")[0]][3:], strict=True))}
    for name, dims in size_table(("JiT",), JIT_SIZES, JIT_PATCHES).items()
}


@dataclass(frozen=True)
class JiTConfig(ModelConfig):
    family: str = "jit"
    arch: str = "JiT-B/16"
    bottleneck: int = checked(0, nonnegative)  # d' of the patch embedding; 0: the size's (128 B/L, 256 H/G)
    context_tokens: int = checked(32, nonnegative)  # in-context class tokens (0: adaLN conditioning only)
    context_start: int = checked(-1, lambda v: None if v >= -1 else "must be -1 (the size's) or a block index")
    mlp_ratio: float = checked(4.0, positive)  # SwiGLU hidden: int(int(mlp_ratio * d) * 2 / 3)
    dropout: float = checked(-1.0, lambda v: None if v == -1 or 0 <= v < 1 else "must be -1 or in [0, 1)")
    attn_dropout: float = checked(0.0, probability)  # on the middle half of the blocks too
    rope_theta: float = checked(10000.0, positive)
    time_offset: float = 0.0  # t is embedded as time_offset + time_scale * t (official JiT: 1 - t)
    time_scale: float = 1.0


class BottleneckPatchEmbed(nn.Module):
    """Conv p x p (C -> d', no bias), then 1 x 1 (d' -> hidden): a low-rank patch embedding for large patches."""

    def __init__(self, channels: int, bottleneck: int, dim: int, patch: int):
        super().__init__()
        self.proj1 = nn.Conv2d(channels, bottleneck, patch, patch, bias=False)
        self.proj2 = nn.Conv2d(bottleneck, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj2(self.proj1(x)).flatten(2).transpose(1, 2)  # (B, N, D)


@ARCHITECTURES.register("jit", JiTConfig)
class JiT(nn.Module):
    ARCHS: ClassVar[dict[str, dict[str, int]]] = JIT_ARCHS
    FRONT_TOKENS: ClassVar[tuple[str, ...]] = ("stream",)  # REG's class token (not the learned-token ablation)
    VELOCITY_HEAD: ClassVar[bool] = True  # builds model.velocity_head

    @classmethod
    def resolve(cls, cfg: ModelConfig) -> ModelConfig:
        """Fill depth / width / heads / patch / bottleneck / context block / dropout from the named size."""
        return fill_from_arch(cfg, cls.ARCHS)

    def __init__(self, cfg: JiTConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0):
        super().__init__()
        if learned_tokens:
            raise ValueError("the JiT family takes no learned front tokens (REG's learnable-token ablation)")
        for key in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "bottleneck"):
            if getattr(cfg, key) <= 0:
                raise ValueError(f"model.{key} is not resolved ({getattr(cfg, key)}); build via build_model()")
        if cfg.input_size % cfg.patch_size:
            raise ValueError(f"input size {cfg.input_size} is not divisible by patch size {cfg.patch_size}")
        if cfg.context_tokens and not 0 <= cfg.context_start < cfg.depth:
            raise ValueError(f"model.context_start={cfg.context_start} must name a block in 0..{cfg.depth - 1}")
        self.cfg = cfg
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
        self.patch_size, self.in_channels = p, c
        self.num_classes = max(cfg.num_classes, 0)
        self.grad_checkpointing = False
        self.x_embedder = BottleneckPatchEmbed(c, cfg.bottleneck, d, p)
        self.t_embedder = TimestepEmbedder(
            d, time_scale=cfg.time_scale, time_offset=cfg.time_offset, interval=cfg.interval_input,
            guidance=cfg.guidance_input,
        )  # fmt: skip
        self.y_embedder = (
            LabelEmbedder(self.num_classes, d, null_class=cfg.class_dropout > 0) if self.num_classes else None
        )
        self.grid = cfg.input_size // p
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, self.grid, self.grid), persistent=False)
        self.context = cfg.context_tokens if self.y_embedder is not None else 0
        self.in_context_posemb = nn.Parameter(torch.zeros(1, self.context, d)) if self.context else None
        middle = range(cfg.depth // 4, 3 * cfg.depth // 4)  # the official dropout blocks
        block = lambda i: RoPEBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.attn_dropout if i in middle else 0.0,
                                    cfg.dropout if i in middle else 0.0)  # noqa: E731  # fmt: skip
        self.blocks = nn.ModuleList(block(i) for i in range(cfg.depth))
        self.norm_final = RMSNorm(d)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d))
        self.out_x = nn.Linear(d, p * p * c)
        self.vector_streams = dict(vector_streams or {})
        self.stream_in, self.stream_out = vector_stream_layers(self.vector_streams, d)
        # iMF/pMF's velocity head: a copy of the last velocity_head blocks and of the output layer, branching off
        # after block depth - velocity_head, once the in-context tokens are in
        k, self.shared_depth = cfg.velocity_head, cfg.depth - cfg.velocity_head
        if k and not (self.context == 0 or cfg.context_start < self.shared_depth) or k > cfg.depth:
            raise ValueError(f"model.velocity_head={k} must leave the blocks up to the in-context tokens' (block "
                             f"{cfg.context_start + 1} of {cfg.depth}) shared")  # fmt: skip
        self.velocity_blocks = nn.ModuleList(block(i) for i in range(self.shared_depth, cfg.depth)) if k else None
        self.velocity_norm = RMSNorm(d) if k else None
        self.velocity_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 2 * d)) if k else None
        self.velocity_out = nn.Linear(d, p * p * c) if k else None
        self.velocity_stream_out = vector_stream_layers(self.vector_streams, d)[1] if k else None
        head_dim, streams = d // cfg.num_heads, len(self.vector_streams)
        for name, front in (("plain", streams), ("context", streams + self.context)):
            cos, sin = rope_2d(head_dim, self.grid, cfg.rope_theta, front)
            self.register_buffer(f"rope_cos_{name}", cos, persistent=False)
            self.register_buffer(f"rope_sin_{name}", sin, persistent=False)
        self.initialize_weights()

    null_label = property(lambda self: self.num_classes)
    num_front_tokens = property(lambda self: len(self.vector_streams))  # hidden states: no in-context tokens

    def initialize_weights(self) -> None:
        """The official scheme: xavier linears and convs, N(0, 0.02) tables, adaLN-Zero, a zero output head."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for conv in (self.x_embedder.proj1, self.x_embedder.proj2):
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj2.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        if self.in_context_posemb is not None:
            nn.init.normal_(self.in_context_posemb, std=0.02)
        self.t_embedder.initialize()
        heads = [self.final_modulation[-1], self.out_x, *self.stream_out.values()]
        if self.velocity_blocks is not None:
            heads += [*(b.adaLN_modulation[-1] for b in self.velocity_blocks), self.velocity_modulation[-1],
                      self.velocity_out, *self.velocity_stream_out.values()]  # fmt: skip
        for layer in [*(b.adaLN_modulation[-1] for b in self.blocks), *heads]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None = None,
                return_hidden: Sequence[int] = (), h: Tensor | None = None,
                guidance: Tensor | None = None) -> ModelOutput:  # fmt: skip
        """The network's call (every family's): ``h`` is the interval t - r of a MeanFlow network
        (``model.interval_input``), ``guidance`` (B, 3) iMF's ``(w, t_lo, t_hi)`` (``model.guidance_input``)."""
        x = states["x"]
        if x.shape[-1] != self.grid * self.patch_size or x.shape[-2] != x.shape[-1]:
            raise ValueError(f"JiT was built for {self.grid * self.patch_size}px inputs, got {tuple(x.shape[-2:])}")
        tokens = self.x_embedder(x) + self.pos_embed.to(x.dtype)  # (B, N, D)
        streams = [self.stream_in[k](states[k]).unsqueeze(1) for k in self.vector_streams]  # (B, 1, D) each
        s = len(streams)
        if streams:
            tokens = torch.cat([*streams, tokens], dim=1)  # (B, S + N, D)
        c = self.t_embedder(t, h, guidance)
        label = None
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, self.null_label, dtype=torch.long)
            label = self.y_embedder(y)  # (B, D): adaLN and the in-context tokens
            c = c + label
        cos, sin, front = self.rope_cos_plain, self.rope_sin_plain, s
        hidden: dict[int, Tensor] = {}
        checkpointing = self.grad_checkpointing and self.training
        branch = tokens
        for i, block in enumerate(self.blocks):
            if self.context and i == self.cfg.context_start:
                ctx = label.unsqueeze(1).expand(-1, self.context, -1) + self.in_context_posemb  # (B, 32, D)
                tokens = torch.cat([tokens[:, :s], ctx.to(tokens.dtype), tokens[:, s:]], dim=1)
                cos, sin, front = self.rope_cos_context, self.rope_sin_context, s + self.context
            tokens = run_block(block, checkpointing, tokens, c, cos, sin)
            if i + 1 in return_hidden:
                hidden[i + 1] = torch.cat([tokens[:, :s], tokens[:, front:]], dim=1)  # streams + image
            if i + 1 == self.shared_depth:
                branch = tokens  # where the velocity head leaves the trunk
        missing = set(return_hidden) - set(hidden)
        if missing:
            raise ValueError(f"hidden states requested after blocks {sorted(missing)}, model has {len(self.blocks)}")
        pred = self.read_out(tokens, c, self.final_modulation, self.norm_final, self.out_x, self.stream_out, front)
        if self.velocity_blocks is None:
            return ModelOutput(pred=pred, hidden=hidden)
        for block in self.velocity_blocks:
            branch = run_block(block, checkpointing, branch, c, cos, sin)
        velocity = self.read_out(branch, c, self.velocity_modulation, self.velocity_norm, self.velocity_out,
                                 self.velocity_stream_out, front)  # fmt: skip
        return ModelOutput(pred=pred, hidden=hidden, velocity=velocity)

    def read_out(self, tokens: Tensor, c: Tensor, modulation: nn.Module, norm: nn.Module, out_x: nn.Module,
                 stream_out: nn.ModuleDict, front: int) -> dict[str, Tensor]:  # fmt: skip
        """Every stream's prediction from the last tokens: adaLN, the image's patches, one token per stream."""
        shift, scale = modulation(c).chunk(2, dim=-1)
        final = modulate(norm(tokens), shift, scale)
        pred = {"x": unpatchify(out_x(final[:, front:]), self.grid, self.grid, self.patch_size, self.in_channels)}
        for j, k in enumerate(self.vector_streams):
            pred[k] = stream_out[k](final[:, j])
        return pred

    def forward_flops(self, batch: int = 1) -> int:
        """Matrix products of one forward (2 FLOPs per multiply-add)."""
        cfg = self.cfg
        d, n, p, c = cfg.hidden_size, self.grid**2, cfg.patch_size, cfg.in_channels
        f = swiglu_hidden(d, cfg.mlp_ratio)
        per_token = 2 * (3 * d * d + d * d + 3 * d * f)
        total = 2 * n * (c * p * p * cfg.bottleneck + cfg.bottleneck * d) + 2 * (256 * d + d * d)
        for i in range(cfg.depth):
            t = n + (self.context if self.context and i >= cfg.context_start else 0)
            total += t * per_token + 2 * 2 * t * t * d + 2 * d * 6 * d
        total += 2 * d * 2 * d + 2 * n * d * p * p * c
        return batch * total

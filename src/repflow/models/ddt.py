"""DDT (Wang et al. 2025, "Decoupled Diffusion Transformer", MCG-NJU/DDT): a condition encoder and a velocity
decoder built from one kind of block.

The first ``encoder_depth`` blocks read the noisy latent (its own patch embedding ``s_embedder``) conditioned
on ``silu(t + y)``; their output becomes the decoder's per-token condition ``s = silu(t + encoder tokens)``. The
remaining blocks read the noisy latent again (``x_embedder``) modulated token by token by ``s``, and a final
adaLN (LayerNorm, modulated by ``s``) predicts the velocity. The block is the shared
:class:`~repflow.models.layers.RoPEBlock` as DDT configures it: RMSNorm, QK-norm, no bias in qkv and SwiGLU,
adaLN without a SiLU of its own (the condition arrives activated), 2-D RoPE in DDT's layout. REPA aligns an
encoder block (the official ``align_layer`` 8). Because the decoder needs only ``s`` and the latent, sampling
can reuse ``s`` across steps (:class:`EncoderReuse`, ``sample.encoder_reuse``), the authors' speed-up.

REG's class token (a vector stream) is token 0 of both sequences: the encoder denoises it with the image, and
the decoder predicts its velocity from its own token, modulated by the encoder's class-token output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, ModelConfig, checked, nonnegative, positive
from ..registry import ARCHITECTURES
from .dit import ModelOutput
from .layers import (
    FinalNorm,
    LabelEmbedder,
    RoPEBlock,
    rope_2d,
    run_block,
    unpatchify,
    vector_stream_layers,
)
from .presets import fill_from_arch
from .time_embedding import TimestepEmbedder

# (depth, hidden, heads, encoder blocks): XL 22 + 6 is the released model (its config); the B (8 + 4) and L
# (20 + 4) splits are repflow's reading of the paper's ablations, not checked against it here; T, S for tests
DDT_SIZES = {"T": (6, 192, 3, 4), "S": (12, 384, 6, 8), "B": (12, 768, 12, 8), "L": (24, 1024, 16, 20),
             "XL": (28, 1152, 16, 22)}  # fmt: skip
DDT_ARCHS = {
    f"DDT-{size}/{p}": {"depth": d, "hidden_size": h, "num_heads": n, "patch_size": p, "encoder_depth": e}
    for size, (d, h, n, e) in DDT_SIZES.items()
    for p in (1, 2, 4, 8)
}


@dataclass(frozen=True)
class DDTConfig(ModelConfig):
    family: str = "ddt"
    arch: str = "DDT-XL/2"
    encoder_depth: int = checked(0, nonnegative)  # blocks of the condition encoder (0: the arch's); the rest decode
    mlp_ratio: float = checked(4.0, positive)
    time_scale: float = 1.0  # t is embedded as time_offset + time_scale * t (official checkpoints: 1, -1)
    time_offset: float = 0.0

    def validate(self) -> None:
        if self.encoder_depth and self.depth and self.encoder_depth >= self.depth:
            raise ConfigError(f"model.encoder_depth={self.encoder_depth} leaves no decoder block of {self.depth}")


@ARCHITECTURES.register("ddt", DDTConfig)
class DDT(nn.Module):
    ARCHS: ClassVar[dict[str, dict[str, int]]] = DDT_ARCHS
    FRONT_TOKENS: ClassVar[tuple[str, ...]] = ("stream",)  # REG's class token (not the learned-token ablation)

    @classmethod
    def resolve(cls, cfg: DDTConfig) -> DDTConfig:
        return fill_from_arch(cfg, cls.ARCHS)

    def __init__(self, cfg: DDTConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0):
        super().__init__()
        for key in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels", "encoder_depth"):
            if getattr(cfg, key) <= 0:
                raise ValueError(f"model.{key} is not resolved ({getattr(cfg, key)}); build via build_model()")
        if learned_tokens:
            raise ValueError("DDT takes no learned front tokens (REG's learnable-token ablation)")
        self.cfg = cfg
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
        self.patch_size, self.in_channels, self.num_classes = p, c, max(cfg.num_classes, 0)
        self.encoder_depth = cfg.encoder_depth
        self.grad_checkpointing = False
        self.x_embedder = nn.Conv2d(c, d, p, p)  # the decoder's patch embedding (a Linear on patches there)
        self.s_embedder = nn.Conv2d(c, d, p, p)  # the encoder's
        self.t_embedder = TimestepEmbedder(d, time_scale=cfg.time_scale, time_offset=cfg.time_offset, max_period=10,
                                           interval=cfg.interval_input, guidance=cfg.guidance_input)  # fmt: skip
        self.y_embedder = LabelEmbedder(self.num_classes, d, null_class=True) if self.num_classes else None
        self.blocks = nn.ModuleList(
            RoPEBlock(d, cfg.num_heads, cfg.mlp_ratio, bias=False, activated=True) for _ in range(cfg.depth)
        )
        self.final_norm = FinalNorm(d, activated=True)
        self.out_x = nn.Linear(d, p * p * c)
        self.vector_streams = dict(vector_streams or {})
        self.stream_in, self.stream_out = vector_stream_layers(self.vector_streams, d)
        cos, sin = rope_2d(d // cfg.num_heads, cfg.input_size // p, front=len(self.vector_streams), layout="ddt")
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.initialize_weights()

    null_label = property(lambda self: self.num_classes)
    num_front_tokens = property(lambda self: len(self.vector_streams))

    def initialize_weights(self) -> None:
        """As the official ``initialize_weights``: xavier patch embeddings, N(0, 0.02) label table and time MLP,
        a zero output layer; the blocks keep torch's default initialisation (theirs has no ``_basic_init``)."""
        for conv in (self.x_embedder, self.s_embedder):
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        self.t_embedder.initialize()  # N(0, 0.02), MeanFlow's interval embedder too; iMF's guidance zero-output
        for layer in (self.final_norm.adaLN_modulation[-1], self.out_x, *self.stream_out.values()):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _tokens(self, embedder: nn.Conv2d, states: dict[str, Tensor]) -> Tensor:
        """[front tokens, patch tokens] (B, S + N, D); front tokens carry no position (no rotation)."""
        tokens = embedder(states["x"]).flatten(2).transpose(1, 2)  # (B, N, D)
        front = [self.stream_in[k](states[k]).unsqueeze(1) for k in self.vector_streams]
        return torch.cat([*front, tokens], dim=1) if front else tokens

    def _run(self, blocks: Sequence[nn.Module], tokens: Tensor, c: Tensor, first: int, taps: set[int],
             hidden: dict[int, Tensor]) -> Tensor:  # fmt: skip
        for i, block in enumerate(blocks, start=first):
            tokens = run_block(block, self.grad_checkpointing and self.training, tokens, c, self.rope_cos,
                               self.rope_sin)  # fmt: skip
            if i in taps:
                hidden[i] = tokens
        return tokens

    def encode(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None, taps: Sequence[int] = (),
               hidden: dict[int, Tensor] | None = None, h: Tensor | None = None,
               guidance: Tensor | None = None) -> Tensor:  # fmt: skip
        """The decoder's per-token condition ``s = silu(t + encoder tokens)`` (B, S + N, D); the encoder blocks
        in ``taps`` (1-indexed) leave their tokens in ``hidden``."""
        t_emb = self.t_embedder(t, h, guidance)  # (B, D); h: MeanFlow's interval t - r; guidance: iMF's
        c = t_emb
        if self.y_embedder is not None:
            c = c + self.y_embedder(torch.full_like(t, self.num_classes, dtype=torch.long) if y is None else y)
        tokens = self._tokens(self.s_embedder, states)
        tokens = self._run(self.blocks[: self.encoder_depth], tokens, F.silu(c), 1, set(taps), {} if hidden is None
                           else hidden)  # fmt: skip
        return F.silu(t_emb.unsqueeze(1) + tokens)

    def decode(self, states: dict[str, Tensor], s: Tensor, taps: Sequence[int] = (),
               hidden: dict[int, Tensor] | None = None) -> dict[str, Tensor]:  # fmt: skip
        """The predictions of every stream from the noisy states and the encoder's condition ``s``."""
        x = states["x"]
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        if gh * gw + self.num_front_tokens != self.rope_cos.shape[0]:
            raise ValueError(f"DDT's RoPE tables are for a {self.cfg.input_size} px input; got {x.shape[-2]}x"
                             f"{x.shape[-1]}")  # fmt: skip
        tokens = self._tokens(self.x_embedder, states)
        tokens = self._run(self.blocks[self.encoder_depth :], tokens, s, self.encoder_depth + 1, set(taps),
                           {} if hidden is None else hidden)  # fmt: skip
        tokens = self.final_norm(tokens, s)
        patches = self.out_x(tokens[:, self.num_front_tokens :])  # (B, N, p*p*C)
        pred = {"x": unpatchify(patches, gh, gw, self.patch_size, self.in_channels)}
        for j, k in enumerate(self.vector_streams):
            pred[k] = self.stream_out[k](tokens[:, j])
        return pred

    def forward(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None = None,
                return_hidden: Sequence[int] = (), h: Tensor | None = None,
                guidance: Tensor | None = None) -> ModelOutput:  # fmt: skip
        hidden: dict[int, Tensor] = {}
        missing = set(return_hidden) - set(range(1, len(self.blocks) + 1))
        if missing:
            raise ValueError(f"hidden states requested after blocks {sorted(missing)}, model has {len(self.blocks)}")
        s = self.encode(states, t, y, return_hidden, hidden, h, guidance)
        pred = self.decode(states, s, return_hidden, hidden)
        return ModelOutput(pred=pred, hidden=hidden)

    def with_encoder_reuse(self, every: int) -> nn.Module:
        """This network for sampling with its condition encoder run every ``every`` evaluations."""
        return EncoderReuse(self, every)


class EncoderReuse(nn.Module):
    """DDT's sampler speed-up (their ``state_refresh_rate``): the encoder runs at every ``every``-th network
    evaluation and its condition ``s`` is reused by the next ``every - 1`` (Euler: steps, as theirs). A call
    with another batch (guidance switched on or off) runs the encoder and starts the count again. Built fresh
    for every generation (the count starts with the first evaluation); ``every = 1`` is the plain network."""

    def __init__(self, network: DDT, every: int):
        super().__init__()
        if every < 1:
            raise ValueError(f"encoder reuse needs a window of at least 1 evaluation, got {every}")
        self.network, self.every = network, every
        self.calls, self.s = 0, None

    def forward(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None = None,
                return_hidden: Sequence[int] = (), h: Tensor | None = None,
                guidance: Tensor | None = None) -> ModelOutput:  # fmt: skip
        if self.s is None or self.calls % self.every == 0 or self.s.shape[0] != t.shape[0]:
            self.s, self.calls = self.network.encode(states, t, y, h=h, guidance=guidance), 0
        self.calls += 1
        return ModelOutput(pred=self.network.decode(states, self.s))

    def with_encoder_reuse(self, every: int) -> EncoderReuse:
        """A fresh count on the same network (every generation starts its own)."""
        return EncoderReuse(self.network, every)


def count_parameters(arch: str, in_channels: int = 4, input_size: int = 32, num_classes: int = 1000) -> int:
    with torch.device("meta"):
        model = DDT(DDT.resolve(DDTConfig(arch=arch, in_channels=in_channels, input_size=input_size,
                                          num_classes=num_classes)))  # fmt: skip
    return sum(p.numel() for p in model.parameters())

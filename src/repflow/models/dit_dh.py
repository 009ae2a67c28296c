"""DiT^DH (RAE, Zheng et al. 2025): a transformer backbone plus a wide, shallow head, for high-dimensional latents.

Backbones (``model.backbone``), each an arrangement of the shared blocks in ``layers.py``:

- ``lightning``: RAE's official DiT^DH backbone (their ``stage2/models/DDT.py``): RMSNorm, SwiGLU, 2-D RoPE plus
  absolute sin-cos positions, a Gaussian-Fourier time embedding, adaLN-Zero from ``c = silu(t + y)`` (each
  adaLN applies SiLU again, as theirs does).
- ``in_context``: RAEv2's: blocks without adaLN; the condition enters as tokens after the image tokens (time
  tokens = learned tokens + the time embedding, class tokens = learned tokens + the label embedding), which
  RoPE leaves unrotated; RMSNorm QK-norm; no absolute positions.
- ``sit``: repflow 0.2's (SiT blocks: LayerNorm, GELU MLP, sinusoidal time, ``c = t + y``), kept so that
  those runs keep loading; stored configs without the field get it (see ``DiTDHConfig.upgrade``).

The head (every backbone): ``s = proj(silu(backbone tokens + time embedding))`` conditions, token by token,
blocks of RMSNorm / RoPE attention / SwiGLU that re-embed the noisy latent, then an adaLN output layer. RAE's
width rule applies to the head, so a narrow backbone (S: 384) serves 768-channel DINOv2 latents.

``internal_depth`` (RAEv2's internal guidance): a second output layer reads the backbone's tokens after that
block (``silu(tokens + time embedding)``, modulated by themselves); it is trained with the main loss and
sampling may guide the full output away from it (``sample.internal_guidance``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ConfigError, checked, nonnegative, positive
from ..registry import ARCHITECTURES
from .dit import FlowTransformer, ModelOutput, SiTConfig
from .layers import (
    AdaLNFinal,
    LabelEmbedder,
    RoPEBlock,
    rope_2d,
    run_block,
    sincos_pos_embed_2d,
    unpatchify,
)
from .presets import SIZES, fill_from_arch, size_table
from .time_embedding import FourierTimeEmbedder

DH_ARCHS = size_table(("DiTDH",), {**SIZES, "XL+": (28, 1440, 20)}, (1, 2))  # XL+: RAEv2's 1440-wide model
# every field a DiT^DH config of repflow 0.2 stored: such a config (and only such) lacks `backbone`
_V02_FIELDS = frozenset((
    "family", "arch", "depth", "hidden_size", "num_heads", "patch_size", "num_classes", "class_dropout", "input_size",
    "in_channels", "mlp_ratio", "qk_norm", "time_scale", "time_offset", "allow_narrow", "head_depth", "head_width",
    "head_heads",
))  # fmt: skip


@dataclass(frozen=True)
class DiTDHConfig(SiTConfig):
    family: str = "dit_dh"
    arch: str = "DiTDH-XL/1"
    backbone: Literal["lightning", "in_context", "sit"] = "lightning"
    head_depth: int = checked(2, positive)
    head_width: int = checked(2048, positive)
    head_heads: int = checked(16, positive)
    head_qk_norm: bool = False  # RMSNorm QK-norm in the head's attention (RAEv2's; RAE's head has none)
    pos_embed: bool = True  # lightning: absolute sin-cos positions besides RoPE (RAE's use_pos_embed)
    time_tokens: int = checked(4, nonnegative)  # in_context: RAEv2's 4 time tokens and 8 class tokens
    class_tokens: int = checked(8, nonnegative)
    internal_depth: int = checked(0, nonnegative)  # RAEv2's internal guidance: an output after this block (0: none)
    # the official trainings unfreeze the "fixed" sin-cos positions and Fourier frequencies (requires_grad_(True)
    # on the whole model), so released checkpoints carry trained ones; false keeps them at their initial values
    learn_fixed_embeddings: bool = True
    rope_theta: float = checked(10000.0, positive)

    def validate(self) -> None:
        if self.backbone != "sit" and self.qk_norm == "layernorm":
            raise ConfigError(f"model.qk_norm=layernorm is the SiT block's; the {self.backbone} backbone takes "
                              "none or rmsnorm")  # fmt: skip
        if self.internal_depth and self.depth and self.internal_depth > self.depth:
            raise ConfigError(f"model.internal_depth={self.internal_depth} must name a block in 1..{self.depth}")

    @classmethod
    def upgrade(cls, data: dict) -> dict:
        data = super().upgrade(data)
        if "backbone" not in data and data.keys() >= _V02_FIELDS:  # a run written by repflow 0.2
            data = {**data, "backbone": "sit"}
        return data


def _check_resolved(cfg: DiTDHConfig) -> None:
    for key in ("depth", "hidden_size", "num_heads", "patch_size", "input_size", "in_channels"):
        if getattr(cfg, key) <= 0:
            raise ValueError(f"model.{key} is not resolved ({getattr(cfg, key)}); build via build_model()")
    if cfg.input_size % cfg.patch_size:
        raise ValueError(f"input size {cfg.input_size} is not divisible by patch size {cfg.patch_size}")


def _init_patch_embed(conv: nn.Conv2d) -> None:
    """Xavier on the flattened kernel, zero bias: the patch embedding initialised like a linear (DiT, RAE)."""
    nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
    nn.init.zeros_(conv.bias)


class _Backbone(nn.Module):
    """What RAE's and RAEv2's backbones share, initialised as theirs: torch's default for the blocks' linears,
    xavier patch embedding, N(0, 0.02) label table and time-MLP weights."""

    def __init__(self, cfg: DiTDHConfig, modulated: bool, conditions: int = 0):
        super().__init__()
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.in_channels
        self.num_classes = max(cfg.num_classes, 0)
        self.grad_checkpointing = False
        self.x_embedder = nn.Conv2d(c, d, p, p)
        self.t_embedder = FourierTimeEmbedder(
            d, time_scale=cfg.time_scale, time_offset=cfg.time_offset, interval=cfg.interval_input,
            guidance=cfg.guidance_input,
        )  # fmt: skip
        self.y_embedder = LabelEmbedder(self.num_classes, d, null_class=True) if self.num_classes else None
        self.blocks = nn.ModuleList(
            RoPEBlock(d, cfg.num_heads, cfg.mlp_ratio, qk_norm=cfg.qk_norm == "rmsnorm", modulated=modulated)
            for _ in range(cfg.depth)
        )
        cos, sin = rope_2d(d // cfg.num_heads, cfg.input_size // p, cfg.rope_theta, back=conditions)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        _init_patch_embed(self.x_embedder)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        self.t_embedder.initialize()

    def run(self, tokens: Tensor, c: Tensor | None, taps: set[int], n: int) -> tuple[Tensor, dict[int, Tensor]]:
        """The blocks; the first ``n`` tokens (the image's) after the blocks in ``taps``."""
        hidden = {}
        for i, block in enumerate(self.blocks, start=1):
            tokens = run_block(block, self.grad_checkpointing and self.training, tokens, c, self.rope_cos,
                               self.rope_sin)  # fmt: skip
            if i in taps:
                hidden[i] = tokens[:, :n]
        return tokens[:, :n], hidden


class LightningBackbone(_Backbone):
    """RAE's official DiT^DH backbone (adaLN-Zero blocks, absolute positions besides RoPE)."""

    def __init__(self, cfg: DiTDHConfig):
        super().__init__(cfg, modulated=True)
        grid = cfg.input_size // cfg.patch_size
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(cfg.hidden_size, grid, grid)[None]) if cfg.pos_embed else None
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)

    def embed(self, x: Tensor, t: Tensor, y: Tensor | None, h: Tensor | None,
              guidance: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        """Image tokens (B, N, D), the time embedding (B, D) and the blocks' condition (B, D)."""
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2)
        if self.pos_embed is not None:
            tokens = tokens + self.pos_embed
        t_emb = self.t_embedder(t, h, guidance)
        c = t_emb if self.y_embedder is None else t_emb + self.y_embedder(_labels(y, t, self.num_classes))
        return tokens, t_emb, F.silu(c)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None, taps: set[int], h: Tensor | None = None,
                guidance: Tensor | None = None):  # fmt: skip
        tokens, t_emb, c = self.embed(x, t, y, h, guidance)
        tokens, hidden = self.run(tokens, c, taps, tokens.shape[1])
        return tokens, t_emb, hidden


class InContextBackbone(_Backbone):
    """RAEv2's backbone: the sequence is [image tokens, time tokens, class tokens]; plain pre-norm blocks. Its
    learned tokens start ~ N(0, 1 / D), as theirs."""

    def __init__(self, cfg: DiTDHConfig):
        classes = cfg.class_tokens if cfg.num_classes > 0 else 0
        super().__init__(cfg, modulated=False, conditions=cfg.time_tokens + classes)
        d = cfg.hidden_size
        self.time_tokens = nn.Parameter(torch.randn(cfg.time_tokens, d) / math.sqrt(d))
        self.class_tokens = nn.Parameter(torch.randn(classes, d) / math.sqrt(d)) if classes else None

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None, taps: set[int], h: Tensor | None = None,
                guidance: Tensor | None = None):  # fmt: skip
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2)  # (B, N, D)
        t_emb = self.t_embedder(t, h, guidance)
        seq = [tokens, self.time_tokens + t_emb.unsqueeze(1)]
        if self.y_embedder is not None:
            seq.append(self.class_tokens + self.y_embedder(_labels(y, t, self.num_classes)).unsqueeze(1))
        tokens, hidden = self.run(torch.cat(seq, dim=1), None, taps, tokens.shape[1])  # (B, N + conditions, D) in
        return tokens, t_emb, hidden


class SiTBackbone(FlowTransformer):
    """repflow 0.2's backbone: the SiT network without its output layer."""

    def __init__(self, cfg: DiTDHConfig):
        super().__init__(cfg)
        del self.final_norm, self.out_x  # the head predicts: no unused parameters (DDP)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None, taps: set[int], h: Tensor | None = None,
                guidance: Tensor | None = None):  # fmt: skip
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        tokens = self.x_embedder(x).flatten(2).transpose(1, 2) + self.position_embedding(gh, gw).to(x.dtype)
        c = self.condition(t, y, h, guidance)
        hidden = {}
        for i, block in enumerate(self.blocks, start=1):
            tokens = run_block(block, self.grad_checkpointing and self.training, tokens, c)
            if i in taps:
                hidden[i] = tokens
        return tokens, self.t_embedder(t, h, guidance), hidden


def _labels(y: Tensor | None, t: Tensor, num_classes: int) -> Tensor:
    return torch.full_like(t, num_classes, dtype=torch.long) if y is None else y  # None: the null label


BACKBONES = {"lightning": LightningBackbone, "in_context": InContextBackbone, "sit": SiTBackbone}


@ARCHITECTURES.register("dit_dh", DiTDHConfig)
class DiTDH(nn.Module):
    ARCHS: ClassVar[dict[str, dict[str, int]]] = DH_ARCHS

    @classmethod
    def resolve(cls, cfg: DiTDHConfig) -> DiTDHConfig:
        return fill_from_arch(cfg, cls.ARCHS)

    @classmethod
    def output_width(cls, cfg: DiTDHConfig) -> int:
        """The width the width rule applies to: the head's."""
        return cfg.head_width

    def __init__(self, cfg: DiTDHConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0):
        super().__init__()
        if vector_streams or learned_tokens:
            raise ValueError("DiT^DH takes no extra token streams (REG's class token): use model.family=sit")
        _check_resolved(cfg)
        self.cfg = cfg
        self.backbone = BACKBONES[cfg.backbone](cfg)
        d, w, p, c = cfg.hidden_size, cfg.head_width, cfg.patch_size, cfg.in_channels
        self.patch_size, self.in_channels, self.num_classes = p, c, max(cfg.num_classes, 0)
        self.grad_checkpointing = False
        # official: no projection when the widths agree; repflow 0.2 always had one
        self.s_projector = nn.Linear(d, w) if d != w or cfg.backbone == "sit" else nn.Identity()
        self.x_embedder = nn.Conv2d(c, w, p, p)  # the head sees the noisy latent again
        self.head = nn.ModuleList(RoPEBlock(w, cfg.head_heads, qk_norm=cfg.head_qk_norm) for _ in range(cfg.head_depth))
        self.final = AdaLNFinal(w, p * p * c)
        self.internal = AdaLNFinal(d, p * p * c) if cfg.internal_depth else None
        cos, sin = rope_2d(w // cfg.head_heads, cfg.input_size // p, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        for block in self.head:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        _init_patch_embed(self.x_embedder)
        for final in filter(None, (self.final, self.internal)):
            for layer in (final.modulation, final.linear):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
        if not cfg.learn_fixed_embeddings:
            for name, param in self.backbone.named_parameters():
                if name in ("pos_embed", "t_embedder.W", "t_embedder.interval.W"):
                    param.requires_grad_(False)

    null_label = property(lambda self: self.num_classes)
    num_front_tokens = 0
    blocks = property(lambda self: self.backbone.blocks)  # FSDP shards these; REPA reads their hidden states

    def forward(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None = None,
                return_hidden: Sequence[int] = (), h: Tensor | None = None,
                guidance: Tensor | None = None) -> ModelOutput:  # fmt: skip
        """The network's call (every family's): ``h`` is the interval t - r of a MeanFlow network
        (``model.interval_input``), ``guidance`` (B, 3) iMF's ``(w, t_lo, t_hi)`` (``model.guidance_input``)."""
        x = states["x"]
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        internal = self.cfg.internal_depth if self.internal is not None else 0
        taps = set(return_hidden) | ({internal} if internal else set())
        tokens, t_emb, hidden = self.backbone(x, t, y, taps, h, guidance)  # (B, N, D), (B, D)
        missing = set(return_hidden) - set(hidden)
        if missing:
            raise ValueError(f"hidden states requested after blocks {sorted(missing)}, model has {len(self.blocks)}")
        t_emb = t_emb.unsqueeze(1)
        s = self.s_projector(F.silu(tokens + t_emb))  # (B, N, W): the head's per-token condition
        head = self.x_embedder(x).flatten(2).transpose(1, 2)  # (B, N, W)
        for block in self.head:
            head = run_block(block, self.grad_checkpointing and self.training, head, s, self.rope_cos,
                             self.rope_sin)  # fmt: skip
        pred = {"x": unpatchify(self.final(head, s), gh, gw, self.patch_size, self.in_channels)}
        shallow = {}
        if internal:
            base = F.silu(t_emb + hidden[internal])  # (B, N, D)
            shallow["x"] = unpatchify(self.internal(base, base), gh, gw, self.patch_size, self.in_channels)
        return ModelOutput(pred=pred, hidden={i: hidden[i] for i in return_hidden}, shallow=shallow)

    def forward_flops(self, batch: int = 1) -> int:
        from .flops import dit_dh_flops

        return batch * dit_dh_flops(self)

    @classmethod
    def legacy_name(cls, cfg: DiTDHConfig, key: str) -> str:
        """repflow 0.2 named the head's output layer ``final_norm`` / ``final_modulation`` / ``out_x``."""
        for old, new in (("final_norm.", "final.norm."), ("final_modulation.", "final.modulation."),
                         ("out_x.", "final.linear.")):  # fmt: skip
            if key.startswith(old):
                return new + key[len(old) :]
        return key


def count_parameters(arch: str, in_channels: int = 768, input_size: int = 16, num_classes: int = 1000,
                     **fields) -> int:  # fmt: skip
    with torch.device("meta"):
        cfg = DiTDH.resolve(DiTDHConfig(arch=arch, in_channels=in_channels, input_size=input_size,
                                        num_classes=num_classes, **fields))  # fmt: skip
        model = DiTDH(cfg)
    return sum(p.numel() for p in model.parameters())

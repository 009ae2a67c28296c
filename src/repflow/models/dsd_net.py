"""DSD's one ViT (Wang & Zhang 2025, "Diffusion as Self-Distillation"): a shared trunk that encodes, decodes and
denoises, told which job by a learned mode embedding in its adaLN condition.

- ``encode``: image patches -> trunk (mode "encode") -> *latent head* -> latent tokens (B, N, C), each token
  normalised over its C channels without an affine (a fixed scale, so noise levels mean the same throughout
  training, as RAE's latents);
- ``decode``: latent tokens -> trunk (mode "decode") -> *image head* -> patches -> image;
- ``denoise``: noised latent tokens -> trunk (mode "denoise" + t + class) -> *diffusion head* (one DiT block and
  a zero-initialised linear layer) -> the clean latent (or v, for the naive ablation), and a light *velocity
  head* on the trunk's output *detached*, so its loss never reaches the trunk; samplers integrate it.

The paper gives the parts, not their sizes or wiring: the mode embedding, the per-token normalisation and
where the heads read are repflow's choices (README, "DSD").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import checked, positive
from ..registry import ARCHITECTURES
from .dit import SiTConfig
from .layers import DiTBlock, FinalNorm, LabelEmbedder, sincos_pos_embed_2d, unpatchify
from .presets import fill_from_arch, size_table
from .time_embedding import TimestepEmbedder

# (depth of the trunk, width, heads). The paper reports 42M / 118M / 205M parameters without sizes; these are
# repflow's guesses that land near them with 32 latent channels at 256 px / patch 16 (tests/models/test_dsd_net.py).
DSD_SIZES = {"T": (4, 192, 3), "S": (13, 384, 6), "M": (17, 576, 9), "B": (17, 768, 12)}
DSD_ARCHS = size_table(("DSD",), DSD_SIZES, (2, 4, 8, 16))
MODES = ("encode", "decode", "denoise")


@dataclass(frozen=True)
class DSDNetConfig(SiTConfig):
    family: str = "dsd"
    arch: str = "DSD-B/16"
    latent_channels: int = checked(32, positive)  # C of a latent token
    allow_narrow: bool = True  # the trunk sees latent tokens of C values: the width rule does not apply


class Denoised(NamedTuple):
    pred: Tensor  # (B, N, C): the clean latent (or v) from the diffusion head
    velocity: Tensor  # (B, N, C): the velocity head's output (its input detached from the trunk)
    hidden: dict[int, Tensor]  # trunk block -> tokens (B, N, D)


@ARCHITECTURES.register("dsd", DSDNetConfig)
class DSDNet(nn.Module):
    ARCHS: ClassVar[dict[str, dict[str, int]]] = DSD_ARCHS
    flow_network = False  # trained by method.kind=dsd only (it is not a (states, t, y) -> prediction network)

    @classmethod
    def resolve(cls, cfg: DSDNetConfig) -> DSDNetConfig:
        return fill_from_arch(cfg, cls.ARCHS)

    def __init__(self, cfg: DSDNetConfig, vector_streams: dict[str, int] | None = None, learned_tokens: int = 0):
        super().__init__()
        if vector_streams or learned_tokens:
            raise ValueError("DSD's network takes no extra token streams (REG's class token)")
        if cfg.input_size % cfg.patch_size:
            raise ValueError(f"input size {cfg.input_size} is not divisible by patch size {cfg.patch_size}")
        self.cfg = cfg
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.latent_channels
        self.patch_size, self.in_channels, self.latent_channels = p, cfg.in_channels, c
        self.grid = cfg.input_size // p
        self.num_classes = max(cfg.num_classes, 0)
        self.patch_embed = nn.Conv2d(cfg.in_channels, d, p, p)
        self.latent_embed = nn.Linear(c, d)
        self.mask_token = nn.Parameter(torch.zeros(d))  # the strong view's masked patches
        self.mode_embed = nn.Embedding(len(MODES), d)
        self.t_embedder = TimestepEmbedder(d)
        self.y_embedder = LabelEmbedder(self.num_classes, d, null_class=True) if self.num_classes else None
        self.register_buffer("pos_embed", sincos_pos_embed_2d(d, self.grid, self.grid), persistent=False)
        self.blocks = nn.ModuleList(DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm) for _ in range(cfg.depth))
        self.latent_head = nn.Sequential(nn.LayerNorm(d, eps=1e-6), nn.Linear(d, c))
        self.image_norm = FinalNorm(d)
        self.image_head = nn.Linear(d, p * p * cfg.in_channels)
        self.diffusion_block = DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm)
        self.diffusion_norm = FinalNorm(d)
        self.diffusion_out = nn.Linear(d, c)
        self.velocity_block = DiTBlock(d, cfg.num_heads, cfg.mlp_ratio, cfg.qk_norm)
        self.velocity_norm = FinalNorm(d)
        self.velocity_out = nn.Linear(d, c)
        self.initialize_weights()

    null_label = property(lambda self: self.num_classes)

    def initialize_weights(self) -> None:
        """DiT's: xavier linears, adaLN-Zero, zero output layers; the latent head is *not* zero (a zero latent
        would start the run collapsed)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.mode_embed.weight, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.table.weight, std=0.02)
        for block in [*self.blocks, self.diffusion_block, self.velocity_block]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for norm in (self.image_norm, self.diffusion_norm, self.velocity_norm):
            nn.init.zeros_(norm.adaLN_modulation[-1].weight)
            nn.init.zeros_(norm.adaLN_modulation[-1].bias)
        for out in (self.image_head, self.diffusion_out, self.velocity_out):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)

    # -- the trunk --------------------------------------------------------------------------------------------
    def mode(self, name: str, batch: int) -> Tensor:
        index = torch.full((batch,), MODES.index(name), device=self.pos_embed.device, dtype=torch.long)
        return self.mode_embed(index)  # (B, D)

    def trunk(self, tokens: Tensor, c: Tensor, keep: tuple[int, ...] = ()) -> tuple[Tensor, dict[int, Tensor]]:
        hidden = {}
        for i, block in enumerate(self.blocks, start=1):
            tokens = block(tokens, c)
            if i in keep:
                hidden[i] = tokens
        return tokens, hidden

    # -- the three jobs ---------------------------------------------------------------------------------------
    def encode(
        self, images: Tensor, mask: Tensor | None = None, keep: tuple[int, ...] = ()
    ) -> tuple[Tensor, dict[int, Tensor]]:
        """Images (B, C_img, H, W) -> latent tokens (B, N, C), per-token normalised; ``mask`` (B, N) bool
        replaces those patches by the mask token (DSD's strong view). Also the kept trunk states."""
        tokens = self.patch_embed(images).flatten(2).transpose(1, 2)  # (B, N, D)
        if mask is not None:
            tokens = torch.where(mask[..., None], self.mask_token.to(tokens.dtype), tokens)
        tokens = tokens + self.pos_embed.to(tokens.dtype)
        out, hidden = self.trunk(tokens, self.mode("encode", images.shape[0]), keep)
        hidden[len(self.blocks)] = out
        z = self.latent_head(out)
        return F.layer_norm(z.float(), (z.shape[-1],), eps=1e-6), hidden

    def decode(self, z: Tensor) -> Tensor:
        """Latent tokens (B, N, C) -> images (B, C_img, H, W), unbounded (training clamps nothing)."""
        c = self.mode("decode", z.shape[0])
        tokens, _ = self.trunk(self.latent_embed(z) + self.pos_embed.to(z.dtype), c)
        patches = self.image_head(self.image_norm(tokens, c))  # (B, N, p*p*C_img)
        return unpatchify(patches, self.grid, self.grid, self.patch_size, self.in_channels)

    def condition(self, t: Tensor, y: Tensor | None) -> Tensor:
        c = self.mode("denoise", t.shape[0]) + self.t_embedder(t)
        if self.y_embedder is not None:
            if y is None:
                y = torch.full_like(t, self.null_label, dtype=torch.long)
            c = c + self.y_embedder(y)
        return c

    def denoise(self, z_t: Tensor, t: Tensor, y: Tensor | None, keep: tuple[int, ...] = ()) -> Denoised:
        """Noised latent tokens (B, N, C) at times t (B,) -> the diffusion head's and the velocity head's
        outputs. The velocity head reads the trunk's output and condition through ``detach``."""
        c = self.condition(t, y)
        tokens, hidden = self.trunk(self.latent_embed(z_t) + self.pos_embed.to(z_t.dtype), c, keep)
        pred = self.diffusion_out(self.diffusion_norm(self.diffusion_block(tokens, c), c))
        h, c_sg = tokens.detach(), c.detach()
        velocity = self.velocity_out(self.velocity_norm(self.velocity_block(h, c_sg), c_sg))
        return Denoised(pred, velocity, hidden)

    # -- latents as images for the flow code: (B, N, C) <-> (B, C, g, g) --------------------------------------
    def to_grid(self, z: Tensor) -> Tensor:
        return z.transpose(1, 2).reshape(z.shape[0], self.latent_channels, self.grid, self.grid)

    def to_tokens(self, z: Tensor) -> Tensor:
        return z.flatten(2).transpose(1, 2)


def count_parameters(arch: str, latent_channels: int = 32, input_size: int = 256, num_classes: int = 1000) -> int:
    with torch.device("meta"):
        cfg = DSDNet.resolve(DSDNetConfig(arch=arch, latent_channels=latent_channels, input_size=input_size,
                                          in_channels=3, num_classes=num_classes))  # fmt: skip
        net = DSDNet(cfg)
    return sum(p.numel() for p in net.parameters())

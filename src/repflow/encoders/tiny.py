"""repflow's tiny ViT encoder: an offline stand-in for DINOv2, trained by ``repflow encoder train``.

Architecture: patch 4, width 128, depth 4, 4 heads, a class token and learned position embeddings, final
LayerNorm (like DINOv2's ``x_norm_*`` outputs). Trained self-supervised (SimCLR: two augmented views, NT-Xent
on the projected class token) on the demo data. The weights file (safetensors) carries the architecture and
the training recipe in its metadata, so it loads without any other file.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.layers import ViTBlock
from .base import HALF, FrozenEncoder
from .registry import EncoderSpec

PACKAGED = Path(__file__).parent / "weights" / "tiny-fashion-mnist.safetensors"


@dataclass(frozen=True)
class TinyViTConfig:
    image_size: int = 32
    patch_size: int = 4
    dim: int = 128
    depth: int = 4
    heads: int = 4
    in_chans: int = 3


class TinyViT(nn.Module):
    def __init__(self, cfg: TinyViTConfig):
        super().__init__()
        self.cfg = cfg
        n = (cfg.image_size // cfg.patch_size) ** 2
        self.patch_embed = nn.Conv2d(cfg.in_chans, cfg.dim, cfg.patch_size, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + n, cfg.dim) * 0.02)
        self.blocks = nn.ModuleList(ViTBlock(cfg.dim, cfg.heads) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=1e-6)

    def position_embedding(self, grid: int) -> Tensor:
        stored = int(math.isqrt(self.pos_embed.shape[1] - 1))
        if grid == stored:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        patch_pos = patch_pos.reshape(1, stored, stored, -1).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="bicubic", align_corners=False)
        return torch.cat([cls_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, grid * grid, -1)], dim=1)

    def block_outputs(self, x: Tensor, indices) -> list[Tensor]:
        """The tokens (B, 1 + N, D) after the given blocks (0-indexed), before the final norm."""
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)  # (B, N, D)
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = tokens + self.position_embedding(x.shape[-1] // self.cfg.patch_size)
        wanted, out = set(indices), {}
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i in wanted:
                out[i] = tokens
        return [out[i] for i in indices]

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) normalised images -> (B, 1 + N, D) LayerNorm-ed tokens, class token first."""
        return self.norm(self.block_outputs(x, [len(self.blocks) - 1])[0])


def save_tiny(model: TinyViT, path: Path, meta: dict) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    weights = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp), metadata={"config": json.dumps(asdict(model.cfg)), "meta": json.dumps(meta)})
    tmp.replace(path)
    path.chmod(0o644)  # a shipped artefact: readable by everyone
    return path


def load_tiny(path: Path) -> tuple[TinyViT, dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tiny encoder weights '{path}' not found; create them with `repflow encoder train`")
    try:
        with safe_open(str(path), "pt") as f:
            info = f.metadata() or {}
    except SafetensorError as err:  # an empty, cut or foreign file
        raise ValueError(f"'{path}' is not a repflow tiny-encoder file (not readable safetensors: {err})") from err
    if "config" not in info:
        raise ValueError(f"'{path}' is not a repflow tiny-encoder file (no architecture in its metadata)")
    model = TinyViT(TinyViTConfig(**json.loads(info["config"])))
    model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return model, json.loads(info.get("meta", "{}"))


def tiny_encoder(spec: EncoderSpec, resolution: int, path: str, source: str) -> FrozenEncoder:
    model, _ = load_tiny(Path(path) if path else PACKAGED)

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        tokens = model.forward_features(x)
        return tokens[:, 1:], tokens[:, 0]

    def layers(x: Tensor, indices) -> list[Tensor]:
        return [t[:, 1:] for t in model.block_outputs(x, indices)]

    return FrozenEncoder(
        model, forward, name=spec.name, embed_dim=model.cfg.dim, patch_size=model.cfg.patch_size,
        resolution=resolution, mean=HALF, std=HALF, source=source,
        layers=layers, depth=model.cfg.depth, norm_eps=model.norm.eps,
    )  # fmt: skip

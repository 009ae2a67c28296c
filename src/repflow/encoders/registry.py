"""Known encoders: architecture facts and where their weights come from in each format."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

Family = Literal["dinov2", "dinov3", "clip", "siglip", "mae", "convnext", "tiny"]


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    family: Family
    embed_dim: int
    patch_size: int
    timm_name: str = ""  # timm architecture (and default hub weights)
    hf_id: str = ""  # transformers hub id
    hub_file: str = ""  # official torch.hub checkpoint file (facebookresearch/dinov2 or /dinov3 layout)
    registers: int = 0
    timm_kwargs: dict = field(default_factory=dict)  # architecture overrides (tests build tiny DINOv2s)


ENCODERS: dict[str, EncoderSpec] = {}


def register_encoder(spec: EncoderSpec) -> EncoderSpec:
    ENCODERS[spec.name] = spec
    return spec


_DINO = {"s": ("small", 384), "b": ("base", 768), "l": ("large", 1024), "g": ("giant", 1536)}
for _k, (_word, _dim) in _DINO.items():
    register_encoder(
        EncoderSpec(
            f"dinov2-vit{_k}14", "dinov2", _dim, 14,
            timm_name=f"vit_{_word}_patch14_dinov2.lvd142m", hf_id=f"facebook/dinov2-{_word}",
            hub_file=f"dinov2_vit{_k}14_pretrain.pth",
        )
    )  # fmt: skip
    register_encoder(
        EncoderSpec(
            f"dinov2-vit{_k}14-reg", "dinov2", _dim, 14,
            timm_name=f"vit_{_word}_patch14_reg4_dinov2.lvd142m",
            hf_id=f"facebook/dinov2-with-registers-{_word}", hub_file=f"dinov2_vit{_k}14_reg4_pretrain.pth",
            registers=4,
        )
    )  # fmt: skip
# DINOv3 (facebookresearch/dinov3, LVD-1689M): patch 16, 4 register ("storage") tokens, RoPE; the official
# files' names carry a hash of their weights
_DINO3 = {
    "s16": ("small", 384, "08c60483"), "s16plus": ("small_plus", 384, "4057cbaa"), "b16": ("base", 768, "73cec8be"),
    "l16": ("large", 1024, "8aa4cbdd"), "h16plus": ("huge_plus", 1280, "7c1da9a5"), "7b16": ("7b", 4096, "a955f4ea"),
}  # fmt: skip
for _k, (_word, _dim, _hash) in _DINO3.items():
    register_encoder(
        EncoderSpec(
            f"dinov3-vit{_k}", "dinov3", _dim, 16, timm_name=f"vit_{_word}_patch16_dinov3.lvd1689m",
            hf_id=f"facebook/dinov3-vit{_k}-pretrain-lvd1689m", registers=4,
            hub_file=f"dinov3_vit{_k}_pretrain_lvd1689m-{_hash}.pth",
        )
    )  # fmt: skip
register_encoder(EncoderSpec("clip-vitl14", "clip", 1024, 14, hf_id="openai/clip-vit-large-patch14"))
register_encoder(EncoderSpec("clip-vitb16", "clip", 768, 16, hf_id="openai/clip-vit-base-patch16"))
register_encoder(EncoderSpec("siglip-vitb16", "siglip", 768, 16, hf_id="google/siglip-base-patch16-224"))
# SigLIP2's fixed-resolution checkpoints are SigLIP models (RAE's SigLIP2-B: 256 px, 16 x 16 tokens)
register_encoder(EncoderSpec("siglip2-vitb16", "siglip", 768, 16, hf_id="google/siglip2-base-patch16-256"))
# SigLIP2 So400m/16 at 256 px: FD-loss's and RAEv2's SigLIP space (timm's vit_so400m_patch16_siglip_256.v2_webli)
register_encoder(EncoderSpec("siglip2-so400m16", "siglip", 1152, 16, hf_id="google/siglip2-so400m-patch16-256"))
register_encoder(EncoderSpec("mae-vitb16", "mae", 768, 16, hf_id="facebook/vit-mae-base"))
register_encoder(EncoderSpec("mae-vitl16", "mae", 1024, 16, hf_id="facebook/vit-mae-large"))
# ConvNeXt V2-B (FCMAE, fine-tuned on ImageNet-22k then 1k): FD-loss's and RAEv2's ConvNeXt space; a CNN, its
# "patch" is the total stride and its global vector the mean of the last feature map (timm only)
register_encoder(EncoderSpec("convnextv2-base", "convnext", 1024, 32, timm_name="convnextv2_base.fcmae_ft_in22k_in1k"))
register_encoder(EncoderSpec("tiny", "tiny", 0, 4))  # dims come from the weights file (repflow encoder train)


def get_spec(name: str) -> EncoderSpec:
    if name not in ENCODERS:
        close = difflib.get_close_matches(name, list(ENCODERS), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {', '.join(sorted(ENCODERS))}"
        raise ValueError(f"unknown encoder {name!r}; {hint}")
    return ENCODERS[name]

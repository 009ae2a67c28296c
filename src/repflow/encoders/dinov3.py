"""DINOv3 (Siméoni et al. 2025) through timm, or the official torch.hub checkpoint files (transformers'
``DINOv3ViTModel`` goes through ``dinov2.transformers_encoder``, which reads both families).

- timm: ``vit_{small,small_plus,base,large,huge_plus,7b}_patch16_dinov3`` from a hub id or a local
  ``.safetensors`` / ``.pth`` file (``*_qkvb`` when the file holds q / v biases);
- official files (``dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth``: ``storage_tokens``, ``blocks.N.ls1.gamma``,
  ``attn.qkv.bias`` with its ``bias_mask``, ``mlp.w1/w2/w3`` for SwiGLU, ``rope_embed.periods``) are converted by
  timm's DINOv3 filter (``eva.checkpoint_filter_fn``) into the ``*_qkvb`` architecture: the official blocks
  carry q / k / v biases with the k part masked to zero, which is what timm's qkvb attention computes.

All give the final-LayerNorm class token and patch tokens (``x_norm_clstoken`` / ``x_norm_patchtokens``); the 4
register ("storage") tokens are dropped. Positions are RoPE on the patch grid, so no table is interpolated:
256 px gives 16 x 16 patches. Inputs of another size are resized as DINOv3's transform does (bilinear with
antialias), with ImageNet mean / std.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from .._compat import require
from .base import FrozenEncoder
from .dinov2 import load_timm_state, read_state_dict, timm_frozen
from .registry import EncoderSpec


def timm_arch(spec: EncoderSpec, state: dict[str, Tensor]) -> str:
    """The timm architecture for a file: ``*_qkvb`` when it holds attention biases (official files, timm's
    qkvb weights), else the plain one (timm's own weights: their zero biases were dropped)."""
    timm = require("timm")
    arch = spec.timm_name.split(".")[0]
    if not any(k.endswith(("attn.qkv.bias", "attn.q_bias")) for k in state):
        return arch
    if not timm.is_model(f"{arch}_qkvb"):
        raise ValueError(f"the file holds attention biases but timm has no {arch}_qkvb architecture for {spec.name}")
    return f"{arch}_qkvb"


def build_timm_dinov3(spec: EncoderSpec, resolution: int, arch: str = "", pretrained_id: str = ""):
    timm = require("timm")
    kwargs = dict(img_size=resolution, dynamic_img_size=True, num_classes=0, **spec.timm_kwargs)
    if pretrained_id:
        name = pretrained_id.removeprefix("hf-hub:").removeprefix("timm/")
        return timm.create_model(name if "." in name else spec.timm_name, pretrained=True, **kwargs)
    return timm.create_model(arch or spec.timm_name.split(".")[0], pretrained=False, **kwargs)


def use_stored_rope_periods(model, state: dict[str, Tensor], path: Path) -> None:
    """Official files store their RoPE periods, in the released ones rounded to bf16 (as timm's DINOv3 port
    notes), and the official model (what RAEv2 loads through torch.hub) computes with them; timm recomputes exact
    float32 periods. So the stored ones replace timm's, once checked to be DINOv3's (base 100, this head width)."""
    stored = state.get("rope_embed.periods")
    if stored is None:
        return
    ours = model.rope.periods
    if stored.shape != ours.shape or not torch.allclose(stored.float(), ours.float(), rtol=1e-2, atol=0):
        raise ValueError(f"'{path}' has RoPE periods {stored.flatten()[:3].tolist()}... but DINOv3's are "
                         f"{ours[:3].tolist()}...; it is not a DINOv3 backbone of this size")  # fmt: skip
    with torch.no_grad():  # read at every forward: timm's DINOv3 builds its RoPE per input grid (dynamic_img_size)
        ours.copy_(stored.to(ours.dtype))


def timm_dinov3_encoder(spec: EncoderSpec, resolution: int, path: str, source: str) -> FrozenEncoder:
    from timm.models.eva import checkpoint_filter_fn

    if path and Path(path).is_file():
        state = read_state_dict(Path(path))
        model = build_timm_dinov3(spec, resolution, arch=timm_arch(spec, state))
        load_timm_state(model, state, checkpoint_filter_fn, Path(path))
        use_stored_rope_periods(model, state, Path(path))
    else:
        model = build_timm_dinov3(spec, resolution, pretrained_id=path or spec.timm_name)
    return timm_frozen(model, spec, resolution, source, resize="bilinear")

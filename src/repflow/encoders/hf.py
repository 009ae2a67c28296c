"""CLIP, SigLIP and MAE vision towers through transformers (a local directory or a hub id)."""

from __future__ import annotations

import pickle

import torch
from torch import Tensor

from .._compat import require
from .base import CLIP_MEAN, CLIP_STD, HALF, IMAGENET_MEAN, IMAGENET_STD, FrozenEncoder
from .registry import EncoderSpec

_MODEL_TYPES = {"clip": ("clip", "clip_vision_model"), "siglip": ("siglip", "siglip_vision_model"), "mae": ("vit_mae",)}


def hf_vision_encoder(spec: EncoderSpec, resolution: int, path_or_id: str, source: str) -> FrozenEncoder:
    transformers = require("transformers")
    family = spec.family
    cls = {
        "clip": transformers.CLIPVisionModel,
        "siglip": transformers.SiglipVisionModel,
        "mae": transformers.ViTMAEModel,
    }[family]
    kwargs = {"mask_ratio": 0.0} if family == "mae" else {}
    try:
        model = cls.from_pretrained(path_or_id, **kwargs)
    except pickle.UnpicklingError as err:  # a pytorch_model.bin holding code: one line, never run
        from ..runtime.safe_load import refusal

        raise refusal(path_or_id, "encoder folder", err) from err
    cfg = model.config
    if cfg.model_type not in _MODEL_TYPES[family]:
        raise ValueError(f"'{path_or_id}' is a {cfg.model_type} model, not {family}")
    interpolate = resolution != cfg.image_size
    tower = getattr(model, "vision_model", model)  # transformers 4 nests the tower; 5 does not

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        if family == "clip":
            out = model(pixel_values=x, interpolate_pos_encoding=interpolate)
            tokens = tower.post_layernorm(out.last_hidden_state)
            return tokens[:, 1:], out.pooler_output
        if family == "siglip":  # no class token: the attention-pooling head gives the global vector
            out = model(pixel_values=x, interpolate_pos_encoding=interpolate)
            return out.last_hidden_state, out.pooler_output
        # MAE shuffles patches by argsort(noise): increasing noise keeps them in place; nothing is masked
        n = (resolution // cfg.patch_size) ** 2
        noise = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        tokens = model(pixel_values=x, noise=noise, interpolate_pos_encoding=interpolate).last_hidden_state
        return tokens[:, 1:], tokens[:, 0]

    prefix = 0 if family == "siglip" else 1  # SigLIP has no class token

    def layers(x: Tensor, indices) -> list[Tensor]:  # hidden_states[i + 1]: block i's output, before the final norm
        kwargs = {"interpolate_pos_encoding": interpolate}
        if family == "mae":
            n = (resolution // cfg.patch_size) ** 2
            kwargs["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(x.shape[0], n)
        states = model(pixel_values=x, output_hidden_states=True, **kwargs).hidden_states
        return [states[i + 1][:, prefix:] for i in indices]

    mean, std = {"clip": (CLIP_MEAN, CLIP_STD), "siglip": (HALF, HALF), "mae": (IMAGENET_MEAN, IMAGENET_STD)}[family]
    return FrozenEncoder(
        model, forward, name=spec.name, embed_dim=cfg.hidden_size, patch_size=cfg.patch_size,
        resolution=resolution, mean=mean, std=std, source=source,
        layers=layers, depth=cfg.num_hidden_layers, norm_eps=cfg.layer_norm_eps,
    )  # fmt: skip

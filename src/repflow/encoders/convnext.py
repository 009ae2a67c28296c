"""ConvNeXt V2 through timm (a hub id or a local ``.safetensors`` / ``.pth`` file of timm's layout).

A CNN behind the ViT protocol: the "patch tokens" are the positions of the last feature map (B, h * w, C) and the
global vector is their mean, both before the classifier head's LayerNorm, as FD-loss / RAEv2 pool it
(``forward_features(x).mean(dim=[2, 3])``). It has no blocks' tokens (no RAE latent).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .._compat import require
from .base import IMAGENET_MEAN, IMAGENET_STD, FrozenEncoder
from .dinov2 import read_state_dict
from .registry import EncoderSpec


def timm_convnext_encoder(spec: EncoderSpec, resolution: int, path: str, source: str) -> FrozenEncoder:
    timm = require("timm")
    is_file = bool(path) and Path(path).is_file()
    arch = spec.timm_name.split(".")[0]
    if is_file:
        model = timm.create_model(arch, pretrained=False, num_classes=0, **spec.timm_kwargs)
        state = {k: v for k, v in read_state_dict(Path(path)).items() if not k.startswith("head.fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
            raise ValueError(f"'{path}' does not match the {arch} architecture ({what})")
    else:
        name = (path or spec.timm_name).removeprefix("hf-hub:").removeprefix("timm/")
        model = timm.create_model(name, pretrained=True, num_classes=0, **spec.timm_kwargs)

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        fmap = model.forward_features(x)  # (B, C, h, w), before the head's norm
        return fmap.flatten(2).transpose(1, 2), fmap.mean(dim=(2, 3))

    return FrozenEncoder(
        model, forward, name=spec.name, embed_dim=model.num_features, patch_size=spec.patch_size,
        resolution=resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD, source=source,
    )  # fmt: skip

"""DINOv2 (with or without registers) through timm, transformers, or the official torch.hub checkpoint files.

- timm: ``vit_*_patch14_dinov2`` / ``*_reg4_*`` from a hub id, or a local ``.safetensors`` / ``.pth`` file;
- official torch.hub files (``dinov2_vitb14_pretrain.pth``: ``blocks.N.ls1.gamma``, ``mask_token``,
  ``register_tokens``) are converted by timm's DINOv2 filter into the same timm model;
- transformers: ``Dinov2Model`` / ``Dinov2WithRegistersModel`` from a local directory or a hub id.

All return the final-LayerNorm tokens: the class token (``x_norm_clstoken``) and the patch tokens
(``x_norm_patchtokens``); register tokens are dropped. The position embedding is interpolated when the input
grid differs from the stored one (224 -> 16 x 16 patches, 448 -> 32 x 32). ``timm_frozen`` and
``transformers_encoder`` serve DINOv3 too (``dinov3.py``).
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor

from .._compat import require
from .base import IMAGENET_MEAN, IMAGENET_STD, FrozenEncoder
from .registry import EncoderSpec


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A weights file without unpickling code: safetensors, or torch.load(weights_only=True)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    from ..runtime.safe_load import load_plain

    state = load_plain(path, "encoder weights")
    for key in ("model", "state_dict", "teacher"):  # common wrappers
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"'{path}' does not hold a state dict")
    return state


def build_timm_dinov2(spec: EncoderSpec, resolution: int, pretrained_id: str = ""):
    timm = require("timm")
    arch = spec.timm_name.split(".")[0]
    kwargs = dict(img_size=resolution, dynamic_img_size=True, num_classes=0, **spec.timm_kwargs)
    if pretrained_id:
        name = pretrained_id.removeprefix("hf-hub:").removeprefix("timm/")
        return timm.create_model(name if "." in name else spec.timm_name, pretrained=True, **kwargs)
    return timm.create_model(arch, pretrained=False, **kwargs)


def load_timm_state(model, state: dict[str, Tensor], filter_fn, path: Path) -> None:
    """Load a state dict (timm layout, or an official layout ``filter_fn`` converts) into a timm model."""
    missing, unexpected = model.load_state_dict(filter_fn(state, model), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("head")]
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ValueError(f"'{path}' does not match the {model.__class__.__name__} architecture ({what})")


def load_timm_file(model, path: Path) -> None:
    """Load a timm-layout or official torch.hub-layout file into a timm DINOv2 (pos-embed resampled)."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    load_timm_state(model, read_state_dict(path), checkpoint_filter_fn, path)


def timm_frozen(model, spec: EncoderSpec, resolution: int, source: str, resize: str = "bicubic") -> FrozenEncoder:
    """A timm ViT (DINOv2's VisionTransformer, DINOv3's Eva) as a frozen encoder: final-norm tokens, prefix
    (class + register) tokens dropped, and its blocks' raw outputs for RAE's latent."""
    prefix = model.num_prefix_tokens  # class token + registers

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        tokens = model.forward_features(x)  # (B, prefix + N, D), final norm applied
        return tokens[:, prefix:], tokens[:, 0]

    def layers(x: Tensor, indices) -> list[Tensor]:  # raw block outputs (0-indexed blocks), prefix tokens dropped
        return model.forward_intermediates(x, indices=list(indices), norm=False, output_fmt="NLC",
                                           intermediates_only=True)  # fmt: skip

    return FrozenEncoder(
        model, forward, name=spec.name, embed_dim=model.embed_dim, patch_size=spec.patch_size,
        resolution=resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD, source=source,
        layers=layers, depth=len(model.blocks), norm_eps=model.norm.eps, resize=resize,
    )  # fmt: skip


def timm_encoder(spec: EncoderSpec, resolution: int, path: str, source: str) -> FrozenEncoder:
    is_file = bool(path) and Path(path).is_file()
    model = build_timm_dinov2(spec, resolution, pretrained_id="" if is_file else (path or spec.timm_name))
    if is_file:
        load_timm_file(model, Path(path))
    return timm_frozen(model, spec, resolution, source)


# transformers model types of each family, and how each family resizes its inputs
_HF_TYPES = {"dinov2": ("dinov2", "dinov2_with_registers"), "dinov3": ("dinov3_vit",)}
_RESIZE = {"dinov2": "bicubic", "dinov3": "bilinear"}


def transformers_encoder(spec: EncoderSpec, resolution: int, path_or_id: str, source: str) -> FrozenEncoder:
    """DINOv2 (``Dinov2Model``, ``Dinov2WithRegistersModel``) or DINOv3 (``DINOv3ViTModel``) from transformers."""
    transformers = require("transformers")
    model = transformers.AutoModel.from_pretrained(path_or_id)
    if model.config.model_type not in _HF_TYPES[spec.family]:
        raise ValueError(f"'{path_or_id}' is a {model.config.model_type} model, not {spec.family.upper()}")
    registers = getattr(model.config, "num_register_tokens", 0)

    def forward(x: Tensor) -> tuple[Tensor, Tensor]:
        tokens = model(pixel_values=x).last_hidden_state  # (B, 1 + R + N, D), final layernorm applied
        return tokens[:, 1 + registers :], tokens[:, 0]

    def layers(x: Tensor, indices) -> list[Tensor]:  # hidden_states[0] is the embedding, [i + 1] block i's raw output
        states = model(pixel_values=x, output_hidden_states=True).hidden_states
        return [states[i + 1][:, 1 + registers :] for i in indices]

    return FrozenEncoder(
        model, forward, name=spec.name, embed_dim=model.config.hidden_size, patch_size=model.config.patch_size,
        resolution=resolution, mean=IMAGENET_MEAN, std=IMAGENET_STD, source=source,
        layers=layers, depth=model.config.num_hidden_layers, norm_eps=model.config.layer_norm_eps,
        resize=_RESIZE[spec.family],
    )  # fmt: skip

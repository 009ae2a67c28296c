"""Tiny random encoders of the real architectures, saved in each format users have on disk."""

from __future__ import annotations

import pytest
import torch

from repflow._compat import require
from repflow.encoders import EncoderSpec, register_encoder

RES = 56  # 4 x 4 patches of 14 px
TINY_DINO = {"depth": 2, "embed_dim": 32, "num_heads": 2}

for reg in (0, 4):
    register_encoder(
        EncoderSpec(
            f"dinov2-test{'-reg' if reg else ''}", "dinov2", 32, 14,
            timm_name=f"vit_small_patch14{'_reg4' if reg else ''}_dinov2.lvd142m", registers=reg,
            timm_kwargs=TINY_DINO,
        )
    )  # fmt: skip


def timm_dinov2(registers: int):
    timm = require("timm")
    name = f"vit_small_patch14{'_reg4' if registers else ''}_dinov2"
    torch.manual_seed(registers)
    model = timm.create_model(name, pretrained=False, img_size=RES, dynamic_img_size=True, num_classes=0, **TINY_DINO)
    with torch.no_grad():  # make LayerScale and norms non-trivial so a wrong mapping shows
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


def to_official(state: dict, registers: int) -> dict:
    """timm layout -> facebookresearch/dinov2 torch.hub layout (what dinov2_vit*14_pretrain.pth holds)."""
    out = dict(state)
    dim = state["cls_token"].shape[-1]
    out["mask_token"] = torch.zeros(1, dim)
    if registers:  # official: cls shares pos_embed row 0; timm folds it into the class token
        out["register_tokens"] = out.pop("reg_token")
        out["pos_embed"] = torch.cat([torch.zeros(1, 1, dim), state["pos_embed"]], dim=1)
    return out


def to_transformers(state: dict, registers: int, depth: int):
    """timm layout -> a transformers Dinov2(WithRegisters)Model with the same weights."""
    transformers = require("transformers")
    dim = state["cls_token"].shape[-1]
    common = dict(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=2, intermediate_size=4 * dim,
                  image_size=RES, patch_size=14, layer_norm_eps=1e-6)  # fmt: skip
    if registers:
        model = transformers.Dinov2WithRegistersModel(
            transformers.Dinov2WithRegistersConfig(num_register_tokens=registers, **common)
        )
    else:
        model = transformers.Dinov2Model(transformers.Dinov2Config(**common))
    sd = model.state_dict()
    new = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "embeddings.mask_token": sd["embeddings.mask_token"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if registers:
        new["embeddings.register_tokens"] = state["reg_token"]
        new["embeddings.position_embeddings"] = torch.cat([torch.zeros(1, 1, dim), state["pos_embed"]], dim=1)
    else:
        new["embeddings.position_embeddings"] = state["pos_embed"]
    for i in range(depth):
        t, h = f"blocks.{i}.", f"encoder.layer.{i}."
        q, k, v = state[t + "attn.qkv.weight"].chunk(3)
        qb, kb, vb = state[t + "attn.qkv.bias"].chunk(3)
        attn = h + "attention."
        names = ("q_proj", "k_proj", "v_proj", "o_proj") if attn + "q_proj.weight" in sd else None
        if names is None:  # transformers 4.x names
            names = ("attention.query", "attention.key", "attention.value", "output.dense")
        for name, w, b in zip(names[:3], (q, k, v), (qb, kb, vb), strict=True):
            new[attn + name + ".weight"], new[attn + name + ".bias"] = w, b
        new[attn + names[3] + ".weight"] = state[t + "attn.proj.weight"]
        new[attn + names[3] + ".bias"] = state[t + "attn.proj.bias"]
        for a, b in (("norm1", "norm1"), ("norm2", "norm2"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            new[h + b + ".weight"], new[h + b + ".bias"] = state[t + a + ".weight"], state[t + a + ".bias"]
        new[h + "layer_scale1.lambda1"] = state[t + "ls1.gamma"]
        new[h + "layer_scale2.lambda1"] = state[t + "ls2.gamma"]
    missing = set(sd) - set(new)
    assert not missing, missing
    model.load_state_dict(new)
    return model


@pytest.fixture
def images():
    return torch.rand(2, 3, RES, RES, generator=torch.Generator().manual_seed(0)) * 2 - 1


# -- DINOv3: a 4-block, 64-wide ViT of the real architecture (RoPE, 4 storage tokens, LayerScale, q/v biases) ----
RES3 = 64  # 4 x 4 patches of 16 px
TINY_DINO3 = {"depth": 4, "embed_dim": 64, "num_heads": 2}
register_encoder(
    EncoderSpec(
        "dinov3-test", "dinov3", 64, 16, timm_name="vit_small_patch16_dinov3.lvd1689m", registers=4,
        timm_kwargs=TINY_DINO3,
    )
)  # fmt: skip


def timm_dinov3(seed: int = 0):
    """timm's DINOv3 with q / v biases (the layout of the official files), made non-trivial."""
    timm = require("timm")
    torch.manual_seed(seed)
    model = timm.create_model("vit_small_patch16_dinov3_qkvb", pretrained=False, img_size=RES3, num_classes=0,
                              **TINY_DINO3)  # fmt: skip
    with torch.no_grad():  # LayerScale is 1e-5 at init: every block would be the identity
        for name, p in model.named_parameters():
            if "gamma" in name:
                p.copy_(0.05 + 0.1 * torch.rand_like(p))
            else:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def rope_periods(head_dim: int, base: float = 100.0) -> torch.Tensor:
    """DINOv3's RoPE periods: base ** (2 i / (head_dim / 2)) for i < head_dim / 4 (rope_position_encoding.py)."""
    return base ** (2 * torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 2))


def dinov3_to_official(state: dict, periods: torch.Tensor) -> dict:
    """timm layout -> facebookresearch/dinov3 torch.hub layout (dinov3_vit*16_pretrain_lvd1689m-*.pth)."""
    out, dim = {}, state["cls_token"].shape[-1]
    for key, value in state.items():
        if key.endswith("attn.q_bias"):
            k_bias = torch.randn(dim)  # stored in the official files, masked to zero by bias_mask
            out[key.replace("q_bias", "qkv.bias")] = torch.cat([value, k_bias, state[key.replace("q_", "v_")]])
            mask = torch.cat([torch.ones(dim), torch.zeros(dim), torch.ones(dim)])
            out[key.replace("q_bias", "qkv.bias_mask")] = mask
        elif not key.endswith("attn.v_bias"):
            name = key.replace("reg_token", "storage_tokens").replace("gamma_1", "ls1.gamma")
            out[name.replace("gamma_2", "ls2.gamma")] = value
    out["mask_token"] = torch.zeros(1, dim)
    out["rope_embed.periods"] = periods
    return out


def dinov3_to_transformers(state: dict, depth: int):
    """timm layout -> a transformers DINOv3ViTModel with the same weights."""
    transformers = require("transformers")
    dim = state["cls_token"].shape[-1]
    cfg = transformers.DINOv3ViTConfig(hidden_size=dim, intermediate_size=4 * dim, num_hidden_layers=depth,
                                       num_attention_heads=2, num_register_tokens=4, image_size=RES3,
                                       layer_norm_eps=1e-5)  # fmt: skip
    model = transformers.DINOv3ViTModel(cfg)
    new = {"embeddings.cls_token": state["cls_token"], "embeddings.register_tokens": state["reg_token"],
           "embeddings.mask_token": torch.zeros(1, 1, dim), "norm.weight": state["norm.weight"],
           "norm.bias": state["norm.bias"], "embeddings.patch_embeddings.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.bias": state["patch_embed.proj.bias"]}  # fmt: skip
    for i in range(depth):
        t, h = f"blocks.{i}.", f"model.layer.{i}."
        q, k, v = state[t + "attn.qkv.weight"].chunk(3)
        new.update({h + "attention.q_proj.weight": q, h + "attention.k_proj.weight": k,
                    h + "attention.v_proj.weight": v, h + "attention.q_proj.bias": state[t + "attn.q_bias"],
                    h + "attention.v_proj.bias": state[t + "attn.v_bias"],
                    h + "layer_scale1.lambda1": state[t + "gamma_1"],
                    h + "layer_scale2.lambda1": state[t + "gamma_2"]})  # fmt: skip
        pairs = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.up_proj",
                 "mlp.fc2": "mlp.down_proj"}  # fmt: skip
        for a, b in pairs.items():
            new[h + b + ".weight"], new[h + b + ".bias"] = state[t + a + ".weight"], state[t + a + ".bias"]
    missing = set(model.state_dict()) - set(new)
    assert not missing, missing
    model.load_state_dict(new)
    return model.eval()

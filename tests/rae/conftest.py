"""Fixtures for RAE: a tiny random DINOv2-with-registers saved as transformers files (64-wide heads, as
diffusers' AutoencoderRAE builds it), and tiny RAE configs on synthetic data."""

from __future__ import annotations

import pytest
import torch

from repflow._compat import require

from ..conftest import TINY
from ..eval.conftest import fake_inception_env, fake_inception_file  # noqa: F401 (fixtures used here too)


@pytest.fixture(scope="session")
def dino_dir(tmp_path_factory):
    transformers = require("transformers")
    torch.manual_seed(0)
    cfg = transformers.Dinov2WithRegistersConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                                                 intermediate_size=128, image_size=518, patch_size=14,
                                                 num_register_tokens=4, layer_norm_eps=1e-6)  # fmt: skip
    model = transformers.Dinov2WithRegistersModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("dino") / "dinov2-reg-tiny"
    model.save_pretrained(str(path))
    return path


def rae_overrides(dino_dir=None, *extra: str) -> list[str]:
    """TINY on 16 px RGB images, RAE latents: 4 x 4 tokens (decoder patch 4)."""
    encoder = (
        ["codec.encoder=dinov2-vitb14-reg", f"codec.encoder_path={dino_dir}"] if dino_dir else ["codec.encoder=tiny"]
    )
    return [*TINY, "data.resolution=16", "codec.kind=rae", "codec.decoder_patch=4", *encoder, *extra]


DECODER = ["method.kind=rae_decoder", "method.size=T", "method.disc_start=1", "method.gan_start=2",
           "train.ema_decays=[0.9]", "train.sample_num=4"]  # fmt: skip


def save_tiny_dino(path, img_size: int = 224, dim: int = 32, fmt: str = "pth"):
    """A DINO ViT-S/8 of timm's architecture (``vit_small_patch8_224``: patch 8, 12 blocks, a class token) at a
    tiny width, every weight random, saved as the official RAE file (a flat ``.pth`` state dict) or timm's
    safetensors (the same keys)."""
    timm = require("timm")
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch8_224", pretrained=False, num_classes=0, img_size=img_size,
                              embed_dim=dim, num_heads=1)  # fmt: skip
    state = {k: v + 0.02 * torch.randn_like(v) for k, v in model.state_dict().items()}  # biases non-zero too
    if fmt == "pth":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.fixture(scope="session")
def dino_vits8(tmp_path_factory):
    """Tiny DINO ViT-S/8 files: ``full`` at 224 px (28 x 28 tokens, as RAE's), ``small`` at 32 px (4 x 4)."""
    folder = tmp_path_factory.mktemp("dino-vits8")
    return {"full": save_tiny_dino(folder / "dino_vit_small_patch8_224.pth"),
            "small": save_tiny_dino(folder / "dino-32.pth", img_size=32)}  # fmt: skip

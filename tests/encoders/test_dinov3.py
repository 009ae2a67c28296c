"""DINOv3 through timm, transformers and the official torch.hub files: the same tokens, RAEv2's multi-layer
latent against a hand computation, DINOv3's resize, and the official files' stored RoPE periods."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from repflow.config import EncoderConfig
from repflow.encoders import build_encoder, default_resolution, get_spec
from repflow.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from repflow.encoders.dinov3 import timm_arch

from .conftest import RES3, TINY_DINO3, dinov3_to_official, dinov3_to_transformers, rope_periods, timm_dinov3

HEAD_DIM = TINY_DINO3["embed_dim"] // TINY_DINO3["num_heads"]


def normalise(images):
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images + 1) / 2 - mean) / std


def block_outputs(hf_model, x):
    """Each block's raw output, read by hooks on transformers' layers: a path independent of repflow's."""
    outs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outs.append(o)) for layer in hf_model.model.layer]
    with torch.no_grad():
        last = hf_model(pixel_values=x).last_hidden_state
    for h in hooks:
        h.remove()
    return outs, last


@pytest.fixture(scope="module")
def dinov3_files(tmp_path_factory):
    """One random tiny DINOv3 saved in the three formats users have on disk."""
    tmp = tmp_path_factory.mktemp("dinov3")
    state = {k: v.contiguous() for k, v in timm_dinov3().state_dict().items()}
    save_file(state, str(tmp / "timm.safetensors"))
    torch.save(dinov3_to_official(state, rope_periods(HEAD_DIM)), tmp / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth")
    hf = dinov3_to_transformers(state, TINY_DINO3["depth"])
    hf.save_pretrained(tmp / "hf")
    return {"timm": tmp / "timm.safetensors", "torchhub": tmp / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
            "transformers": tmp / "hf"}, hf, state  # fmt: skip


@pytest.fixture
def images():
    return torch.rand(2, 3, RES3, RES3, generator=torch.Generator().manual_seed(0)) * 2 - 1


def test_dinov3_formats_give_the_same_tokens(dinov3_files, images):
    paths, hf, _ = dinov3_files
    _, last = block_outputs(hf, normalise(images))  # (B, 1 + 4 + 16, D), final LayerNorm with its affine
    for fmt, path in paths.items():
        enc = build_encoder(EncoderConfig(name="dinov3-test", path=str(path)), RES3)
        out = enc(images)
        assert out.patch.shape == (2, 16, 64) and out.cls.shape == (2, 64), fmt  # 4 storage tokens dropped
        torch.testing.assert_close(out.patch, last[:, 5:], atol=2e-5, rtol=0, msg=fmt)
        torch.testing.assert_close(out.cls, last[:, 0], atol=2e-5, rtol=0, msg=fmt)  # x_norm_clstoken for REG
        assert enc.source.startswith("timm" if fmt != "transformers" else "transformers")


def test_multi_layer_latent_is_rae_v2s_formula(dinov3_files, images):
    """mean_k LN(block_k) + mean_tokens LN(deepest block), LN without affine, blocks 0-indexed (the official
    get_intermediate_layers(n=[...]) takes block i when i is in the list)."""
    paths, hf, _ = dinov3_files
    outs, _ = block_outputs(hf, normalise(images))
    normed = [F.layer_norm(o[:, 5:], (64,), eps=1e-5) for o in outs]  # DINOv3's norm: eps 1e-5
    k2 = (normed[1] + normed[3]) / 2 + normed[3].mean(1, keepdim=True)
    for fmt, path in paths.items():
        enc = build_encoder(EncoderConfig(name="dinov3-test", path=str(path)), RES3)
        torch.testing.assert_close(enc.latent_tokens(images, [1, 3], token_mean=True), k2, atol=2e-5, rtol=0)
        torch.testing.assert_close(enc.latent_tokens(images, [-3, -1], token_mean=True), k2, atol=2e-5, rtol=0)
        plain = enc.latent_tokens(images)  # RAE / RAEv2's K1: the last block alone, no token mean
        torch.testing.assert_close(plain, normed[3], atol=2e-5, rtol=0, msg=fmt)
        first = enc.latent_tokens(images, [0])
        torch.testing.assert_close(first, normed[0], atol=2e-5, rtol=0, msg=fmt)  # [0] is the first block's output
        assert not torch.allclose(first, plain, atol=1e-2)  # the blocks differ, so the index matters
    with pytest.raises(ValueError, match="has 4 blocks"):
        enc.latent_tokens(images, [4])
    with pytest.raises(ValueError, match="increasing order"):
        enc.latent_tokens(images, [3, 1])


def test_dinov3_resizes_as_its_transform_and_needs_no_resize_at_256(dinov3_files):
    import torchvision.transforms as T

    paths, _, _ = dinov3_files
    enc = build_encoder(EncoderConfig(name="dinov3-test", path=str(paths["timm"])), RES3)
    big = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(1))
    resized = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.Resize((RES3, RES3), antialias=True)(big))  # make_transform
    torch.testing.assert_close(enc.preprocess(big * 2 - 1), resized, atol=1e-5, rtol=0)
    same = torch.rand(1, 3, RES3, RES3) * 2 - 1
    assert torch.equal(enc.preprocess(same), (((same + 1) / 2) - enc.mean) / enc.std)  # no resize at its size
    assert get_spec("dinov3-vitl16").registers == 4
    assert default_resolution(EncoderConfig(name="dinov3-vitl16"), 16) == 256  # 16 x 16 patches at 256 px


def test_official_files_keep_their_stored_rope_periods(tmp_path, dinov3_files, images):
    """The released files hold bf16-rounded periods and the official model computes with them; timm would
    recompute exact ones."""
    paths, _, state = dinov3_files
    rounded = rope_periods(HEAD_DIM).to(torch.bfloat16)
    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save(dinov3_to_official(state, rounded), path)
    enc = build_encoder(EncoderConfig(name="dinov3-test", path=str(path)), RES3)
    assert torch.equal(enc.network.rope.periods, rounded.float())
    exact = build_encoder(EncoderConfig(name="dinov3-test", path=str(paths["torchhub"])), RES3)
    assert not torch.equal(enc(images).patch, exact(images).patch)  # the periods reach the tokens
    torch.save(dinov3_to_official(state, rope_periods(HEAD_DIM, base=10.0)), path)
    with pytest.raises(ValueError, match="RoPE periods"):
        build_encoder(EncoderConfig(name="dinov3-test", path=str(path)), RES3)


def test_timm_architecture_follows_the_files_biases():
    spec = get_spec("dinov3-vitl16")
    assert timm_arch(spec, {"blocks.0.attn.qkv.bias": torch.zeros(3)}) == "vit_large_patch16_dinov3_qkvb"  # official
    assert timm_arch(spec, {"blocks.0.attn.q_bias": torch.zeros(1)}) == "vit_large_patch16_dinov3_qkvb"  # timm qkvb
    assert timm_arch(spec, {"blocks.0.attn.qkv.weight": torch.zeros(1)}) == "vit_large_patch16_dinov3"  # timm's own
    with pytest.raises(ValueError, match="no vit_7b_patch16_dinov3_qkvb"):
        timm_arch(get_spec("dinov3-vit7b16"), {"blocks.0.attn.qkv.bias": torch.zeros(3)})

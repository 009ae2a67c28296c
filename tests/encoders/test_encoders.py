import pytest
import torch
from safetensors.torch import save_file

from repflow._compat import require
from repflow.config import EncoderConfig
from repflow.encoders import build_encoder, default_resolution
from repflow.encoders.base import IMAGENET_MEAN, IMAGENET_STD
from repflow.encoders.tiny import TinyViT, TinyViTConfig, save_tiny

from .conftest import RES, TINY_DINO, timm_dinov2, to_official, to_transformers


def reference(model, images, registers):
    """What DINOv2 users call x_norm_patchtokens / x_norm_clstoken, computed directly from timm."""
    x = (images + 1) / 2
    x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        tokens = model.forward_features(x)
    return tokens[:, 1 + registers :], tokens[:, 0]


@pytest.mark.parametrize("registers", [0, 4])
def test_dinov2_formats_give_the_same_features(tmp_path, images, registers):
    model = timm_dinov2(registers)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    name = f"dinov2-test{'-reg' if registers else ''}"
    patch_ref, cls_ref = reference(model, images, registers)

    save_file(state, str(tmp_path / "timm.safetensors"))
    torch.save(to_official(state, registers), tmp_path / "dinov2_vits14_pretrain.pth")
    to_transformers(state, registers, TINY_DINO["depth"]).save_pretrained(tmp_path / "hf")

    paths = {"timm": tmp_path / "timm.safetensors", "torchhub": tmp_path / "dinov2_vits14_pretrain.pth",
             "transformers": tmp_path / "hf"}  # fmt: skip
    for fmt, path in paths.items():
        enc = build_encoder(EncoderConfig(name=name, path=str(path)), RES)
        out = enc(images)
        assert out.patch.shape == (2, 16, 32) and out.cls.shape == (2, 32), fmt
        assert torch.allclose(out.patch, patch_ref, atol=1e-5), fmt
        assert torch.allclose(out.cls, cls_ref, atol=1e-5), fmt
        assert enc.source.startswith("timm" if fmt != "transformers" else "transformers")


def test_position_embedding_is_interpolated_for_larger_inputs(tmp_path):
    model = timm_dinov2(0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    to_transformers(model.state_dict(), 0, 2).save_pretrained(tmp_path / "hf")
    for path in (tmp_path / "w.safetensors", tmp_path / "hf"):
        enc = build_encoder(EncoderConfig(name="dinov2-test", path=str(path)), 2 * RES)  # 448 vs 224, in small
        out = enc(torch.zeros(1, 3, 64, 64))
        assert out.patch.shape == (1, 64, 32) and torch.isfinite(out.patch).all()


def test_encoder_is_frozen_and_gets_no_gradient(tmp_path, images):
    model = timm_dinov2(0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "w.safetensors"))
    enc = build_encoder(EncoderConfig(name="dinov2-test", path=str(tmp_path / "w.safetensors")), RES)
    enc.train()
    assert not enc.training and not enc.network.training
    assert not any(p.requires_grad for p in enc.parameters())
    x = images.clone().requires_grad_(True)
    out = enc(x)
    assert not out.patch.requires_grad  # computed under no_grad: no graph back into the encoder or the data
    assert all(p.grad is None for p in enc.parameters())


def test_default_resolution_matches_the_model_grid():
    # SiT-*/2 at 256 px: 16 x 16 tokens -> 224 for a patch-14 encoder; 512 px -> 448
    assert default_resolution(EncoderConfig(name="dinov2-vitb14"), 16) == 224
    assert default_resolution(EncoderConfig(name="dinov2-vitb14"), 32) == 448
    assert default_resolution(EncoderConfig(name="dinov2-vitb14", resolution=256), 16) == 256


def test_tiny_encoder_file_round_trip(tmp_path, images):
    torch.manual_seed(0)
    vit = TinyViT(TinyViTConfig(image_size=16, dim=32, depth=2, heads=2))
    path = save_tiny(vit, tmp_path / "tiny.safetensors", {"note": "test"})
    enc = build_encoder(EncoderConfig(name="tiny", path=str(path)), 16)
    out = enc(images)
    assert out.patch.shape == (2, 16, 32) and out.cls.shape == (2, 32)
    x = torch.nn.functional.interpolate((images + 1) / 2, size=(16, 16), mode="bicubic") * 2 - 1
    tokens = vit.half().float().forward_features(x)  # weights are stored in float16
    assert torch.allclose(out.cls, tokens[:, 0], atol=1e-4)
    grey = enc(images[:, :1])  # one-channel data is replicated
    assert grey.patch.shape == (2, 16, 32)


def test_hf_vision_towers_clip_siglip_mae(tmp_path, images):
    tf = require("transformers")
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=32)
    towers = {
        "clip-vitb16": tf.CLIPVisionModel(tf.CLIPVisionConfig(patch_size=16, **small)),
        "siglip-vitb16": tf.SiglipVisionModel(tf.SiglipVisionConfig(patch_size=16, **small)),
        "mae-vitb16": tf.ViTMAEModel(tf.ViTMAEConfig(patch_size=16, mask_ratio=0.0, **small)),
    }
    for name, model in towers.items():
        model.save_pretrained(tmp_path / name)
        enc = build_encoder(EncoderConfig(name=name, path=str(tmp_path / name)), 32)
        a, b = enc(images), enc(images)
        assert a.patch.shape == (2, 4, 32) and a.cls.shape == (2, 32), name
        assert torch.equal(a.patch, b.patch), name  # deterministic (MAE: no random masking or shuffling)
        # RAE's latent: the last block through the final LayerNorm without its affine (identity at init here)
        latent = enc.latent_tokens(images)
        torch.testing.assert_close(latent, a.patch, rtol=1e-4, atol=1e-4, msg=name)
        net = enc.network
        norm = getattr(getattr(net, "vision_model", net), "post_layernorm", None) or net.layernorm
        with torch.no_grad():
            norm.weight.mul_(3.0).add_(0.5)  # the affine must not reach the latent
        assert not torch.allclose(enc(images).patch, a.patch), name
        assert torch.equal(enc.latent_tokens(images), latent), name


def test_bad_encoder_inputs_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown encoder 'dinov4"):
        build_encoder(EncoderConfig(name="dinov4-vitb16"), 224)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        build_encoder(EncoderConfig(name="dinov2-test", path=str(tmp_path / "missing.pth")), RES)
    bad = tmp_path / "bad.safetensors"
    save_file({"foo": torch.zeros(2)}, str(bad))
    with pytest.raises(ValueError, match="does not match"):
        build_encoder(EncoderConfig(name="dinov2-test", path=str(bad)), RES)


def test_tiny_encoder_is_trained_through_the_one_loop_and_exported(tmp_path, capsys):
    from repflow.cli import main

    out = tmp_path / "enc.safetensors"
    argv = ["encoder", "train", "--out", str(out), "--steps", "3", "--batch-size", "16", "data.dataset=synthetic",
            "data.synthetic_size=48", "data.resolution=16", "method.dim=16", "method.depth=1", "method.heads=2",
            "train.precision=fp32"]  # fmt: skip
    assert main(argv) == 0
    assert "linear probe top-1" in capsys.readouterr().out
    run = tmp_path / "enc-run"
    assert (run / "checkpoints" / "ckpt-00000003" / "head.safetensors").is_file()  # SimCLR's projection head
    assert '"nt_xent"' in (run / "metrics.jsonl").read_text()
    encoder = build_encoder(EncoderConfig(name="tiny", path=str(out)), 16)
    assert encoder.embed_dim == 16 and encoder(torch.zeros(2, 3, 16, 16)).patch.shape == (2, 16, 16)
    assert main(["encoder", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "SimCLR" in info and '"steps": 3' in info and "linear_probe_top1" in info

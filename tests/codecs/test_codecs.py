"""Codecs: the pixel identity and the SD-VAE through diffusers' AutoencoderKL (random weights, saved and loaded
back through the path users take: a local directory, a pipeline's vae/ subfolder, or a hub id from the cache)."""

import json
import shutil

import pytest
import torch

from repflow.build import codec_for, resolve_config
from repflow.codecs import DEFAULT_VAE, PixelCodec, SDVAECodecConfig, build_codec
from repflow.codecs.sd_vae import SDVAECodec
from repflow.config import CodecConfig, ConfigError, load_config, to_dict
from repflow.data import synthetic_images

from ..conftest import save_tiny_vae, tiny_config

# config.json of stabilityai/sd-vae-ft-ema (and -mse): the architecture, without the 335 MB of weights
SD_VAE_CONFIG = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 256,
}


def test_pixel_codec_is_the_identity():
    codec = build_codec("pixel")
    x = torch.rand(2, 3, 4, 4) * 2 - 1
    assert isinstance(codec, PixelCodec) and not codec.stochastic
    assert torch.equal(codec.encode(x), x) and codec.model_shape(3, 32) == (3, 32, 32)
    assert codec.identity() == {"kind": "pixel"}
    with pytest.raises(ConfigError, match="unknown codec.kind 'vq'; choose from pixel, rae, sd_vae, vae"):
        build_codec(CodecConfig(kind="vq"))
    with pytest.raises(ConfigError, match="unknown codec.kind 'vq'; choose from pixel, rae, sd_vae, vae"):
        load_config(None, ["codec.kind=vq"])


def test_each_codec_has_its_own_fields_and_defaults():
    assert to_dict(load_config(None, []).codec) == {"kind": "pixel"}
    vae = load_config(None, ["codec.kind=sd_vae"]).codec
    assert isinstance(vae, SDVAECodecConfig) and vae.scale == 0.18215 and vae.path == DEFAULT_VAE
    with pytest.raises(ConfigError, match="unknown config key 'codec.scale'"):
        load_config(None, ["codec.scale=0.5"])  # a pixel codec has no scale
    with pytest.raises(ConfigError, match="codec.scale' must be positive"):
        load_config(None, ["codec.kind=sd_vae", "codec.scale=0"])


def test_real_sd_vae_config_gives_32x32x4_latents_at_256_and_64x64x4_at_512(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(SD_VAE_CONFIG))
    codec = SDVAECodec(str(tmp_path))
    assert codec.factor == 8 and codec.scale == 0.18215 and codec.shift == 0.0
    assert codec.model_shape(3, 256) == (4, 32, 32)
    assert codec.model_shape(3, 512) == (4, 64, 64)
    assert codec._vae is None  # shapes come from the config alone: no weights were loaded
    with pytest.raises(ValueError, match="data.resolution=100 is not a multiple of the VAE's downsampling factor 8"):
        codec.model_shape(3, 100)
    with pytest.raises(ValueError, match="3-channel images; set data.channels=3"):
        codec.model_shape(1, 256)


def test_tiny_vae_encode_decode_shapes_and_scaling(tiny_vae):
    codec = build_codec(SDVAECodecConfig(path=str(tiny_vae), scale=0.5, shift=0.1))
    vae = codec.vae
    assert codec.stochastic and codec.factor == 2 and codec.model_shape(3, 16) == (4, 8, 8)
    x = torch.rand(5, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        posterior = vae.encode(x).latent_dist
    mean, std = codec.moments(x)
    assert mean.shape == std.shape == (5, 4, 8, 8) and mean.dtype == torch.float32
    torch.testing.assert_close(mean, posterior.mean)
    torch.testing.assert_close(std, posterior.std)
    z = codec.encode(x)
    torch.testing.assert_close(z, (posterior.mean - 0.1) * 0.5)  # model space: (z_vae - shift) * scale
    eps = torch.randn_like(z)
    torch.testing.assert_close(codec.sample(mean, std, eps), (mean + std * eps - 0.1) * 0.5)
    images = codec.decode(z)
    assert images.shape == (5, 3, 16, 16) and images.min() >= -1 and images.max() <= 1
    with torch.no_grad():
        direct = vae.decode(z / 0.5 + 0.1).sample.clamp(-1, 1)  # decode inverts the scaling
    torch.testing.assert_close(images, direct)
    codec.chunk = 2  # chunked passes bound memory and change nothing
    torch.testing.assert_close(codec.decode(z), images)
    torch.testing.assert_close(codec.moments(x)[0], mean)


def test_hub_id_pipeline_folder_and_local_dir_load_the_same_weights(tiny_vae, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    # a hub cache as `hf download` leaves it, read offline (HF_HUB_OFFLINE=1 in conftest)
    repo = tmp_path / "hub" / "models--acme--tiny-vae"
    snapshot = repo / "snapshots" / ("0" * 40)
    shutil.copytree(tiny_vae, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    pipeline = tmp_path / "sd-pipeline"  # a diffusers pipeline directory: the VAE is in vae/
    shutil.copytree(tiny_vae, pipeline / "vae")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    ref = SDVAECodec(str(tiny_vae)).encode(x)
    for source in ("acme/tiny-vae", str(pipeline)):
        codec = SDVAECodec(source)
        assert torch.equal(codec.encode(x), ref), source
    assert SDVAECodec("acme/tiny-vae").identity() == SDVAECodec(str(tiny_vae)).identity()


def test_identity_follows_the_encoder_weights_not_the_path_or_decoder(tiny_vae, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_vae, copy)
    base = SDVAECodec(str(tiny_vae)).identity()
    assert SDVAECodec(str(copy)).identity() == base
    assert base["kind"] == "sd_vae" and base["latent_channels"] == 4 and base["factor"] == 2
    new_decoder = SDVAECodec(str(copy))
    with torch.no_grad():
        new_decoder.vae.decoder.conv_out.weight.add_(1.0)  # sd-vae-ft-ema vs -mse: only the decoder differs
    assert new_decoder.identity() == base
    save_tiny_vae(tmp_path / "other", seed=1)
    assert SDVAECodec(str(tmp_path / "other")).identity()["encoder_sha256"] != base["encoder_sha256"]


def test_vae_loading_errors_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE directory '/no/such/vae' does not exist"):
        SDVAECodec("/no/such/vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json.*not a diffusers autoencoder directory"):
        SDVAECodec(str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="cannot load VAE 'acme/absent'.*codec.path=/local/dir"):
        SDVAECodec("acme/absent")  # offline and not in the cache: fails fast with a hint
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="is a UNet2DModel, not an AutoencoderKL"):
        SDVAECodec(str(tmp_path / "unet"))
    (tmp_path / "noweights").mkdir()
    (tmp_path / "noweights" / "config.json").write_text(json.dumps(SD_VAE_CONFIG))
    with pytest.raises(FileNotFoundError, match="cannot load the VAE weights of"):
        SDVAECodec(str(tmp_path / "noweights")).vae  # noqa: B018


def test_resolved_config_stores_the_vae_and_latent_shape(tiny_vae):
    cfg = tiny_config("codec.kind=sd_vae", f"codec.path={tiny_vae}", "data.resolution=8")
    resolved = resolve_config(cfg, synthetic_images(8, 8, 3, 4))
    assert (resolved.model.in_channels, resolved.model.input_size) == (4, 4)
    assert resolved.codec.path == str(tiny_vae)  # stored with the run: sampling decodes with the same VAE
    default = tiny_config("codec.kind=sd_vae", "data.resolution=8")  # no path: SD's EMA VAE from the hub
    with pytest.raises(FileNotFoundError, match=f"cannot load VAE '{DEFAULT_VAE}'"):
        codec_for(default)
    with pytest.raises(ConfigError, match="not a multiple of the VAE's downsampling factor 2"):
        resolve_config(tiny_config("codec.kind=sd_vae", f"codec.path={tiny_vae}", "data.resolution=7"),
                       synthetic_images(8, 7, 3, 4))  # fmt: skip
    enc = resolve_config(
        # the tiny VAE downsamples by 2: patch 8 gives the 32 x 32 token grid SiT-*/2 has on SD-VAE latents
        tiny_config(
            "codec.kind=sd_vae",
            f"codec.path={tiny_vae}",
            "data.resolution=512",
            "model.patch_size=8",
            "encoders=[{}]",
            "model.allow_narrow=true",  # a 32-wide test model on 8 x 8 x 4 tokens
        ),  # fmt: skip
        synthetic_images(2, 8, 3, 4),
    )
    assert enc.encoders[0].resolution == 448  # REPA at 512 px: one 14 px DINOv2 patch per token, 448 px


@pytest.mark.parametrize(
    "preset, arch, latent, repa_depth, reg",
    [("sit-b2-in256", "SiT-B/2", 32, 0, False), ("sit-l2-in256", "SiT-L/2", 32, 0, False),
     ("sit-xl2-in256", "SiT-XL/2", 32, 0, False), ("sit-xl2-in512", "SiT-XL/2", 64, 0, False),
     ("sit-b2-repa-in256", "SiT-B/2", 32, 4, False), ("sit-l2-repa-in256", "SiT-L/2", 32, 8, False),
     ("sit-xl2-repa-in256", "SiT-XL/2", 32, 8, False), ("sit-b2-reg-in256", "SiT-B/2", 32, 4, True),
     ("sit-l2-reg-in256", "SiT-L/2", 32, 8, True), ("sit-xl2-reg-in256", "SiT-XL/2", 32, 8, True),
     ("sit-xl2-reg-in512", "SiT-XL/2", 64, 8, True)],
)  # fmt: skip
def test_imagenet_presets_follow_the_official_recipe(preset, arch, latent, repa_depth, reg, tmp_path):
    import types

    from repflow.config import load_config
    from repflow.models.presets import arch_dims

    cfg = load_config(preset)
    assert cfg.codec.kind == "sd_vae" and cfg.codec.path == DEFAULT_VAE and cfg.codec.scale == 0.18215
    t = cfg.train
    assert (t.batch_size, t.lr, t.betas, t.weight_decay, t.schedule) == (256, 1e-4, (0.9, 0.999), 0.0, "constant")
    assert (t.ema_decays, t.grad_clip, t.steps) == ((0.9999,), 1.0, 400_000)
    assert (cfg.flow.path, cfg.flow.prediction, cfg.flow.time.kind) == ("linear", "v", "uniform")
    assert (cfg.sample.sampler, cfg.sample.steps) == ("sde", 250)
    (tmp_path / "config.json").write_text(json.dumps(SD_VAE_CONFIG))  # the real VAE's architecture
    codec = SDVAECodec(str(tmp_path))
    resolved = resolve_config(cfg, types.SimpleNamespace(num_classes=1000), codec)
    m = resolved.model
    assert (m.in_channels, m.input_size, m.num_classes) == (4, latent, 1000)
    assert m.depth == arch_dims(arch)["depth"] and m.patch_size == 2
    # REPA (lambda 0.5, block 4 for B and 8 for L/XL) and REG (beta 0.03, DINOv2-B/14 class token)
    assert resolved.repa.enabled == bool(repa_depth) and resolved.reg.enabled == reg
    if repa_depth:
        assert (resolved.repa.depth, resolved.repa.weight) == (repa_depth, 0.5)
        (enc,) = resolved.encoders
        assert enc.name == "dinov2-vitb14" and enc.resolution == 224 * latent // 32
    if reg:
        assert (resolved.reg.weight, resolved.reg.source) == (0.03, "cls")

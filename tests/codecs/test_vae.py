"""The vae codec: each diffusers autoencoder class it drives, saved with random weights of a tiny real
configuration and loaded back through the config users write (``codec.kind=vae codec.path=DIR``)."""

import hashlib
import json

import pytest
import torch

from repflow._compat import require
from repflow.build import codec_for
from repflow.cli import main
from repflow.codecs.autoencoders import patchify, supported, unpatchify
from repflow.codecs.cache import cache_latents, open_latent_cache
from repflow.codecs.sd_vae import SDVAECodec
from repflow.config import ConfigError, load_config
from repflow.data import build_dataset
from repflow.data.store import StoreMismatchError
from repflow.data.transforms import uint8_to_model

from ..conftest import TINY, colour_folder, save_tiny_vae

diffusers = require("diffusers")
CLASSES = ["AutoencoderKL", "AutoencoderKLFlux2", "AutoencoderKLQwenImage", "AutoencoderDC"]
KL_BLOCKS = dict(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                 up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
                 sample_size=16)  # fmt: skip


def save_autoencoder(name: str, path, seed: int = 0, **overrides):
    """A randomly initialised ``name`` of a tiny real configuration (factor 2, 4 latent channels), saved with
    ``save_pretrained``; FLUX.2's batch-norm statistics are set to non-trivial values first."""
    torch.manual_seed(seed)
    if name == "AutoencoderKL":
        vae = diffusers.AutoencoderKL(**{**KL_BLOCKS, "scaling_factor": 0.5, "shift_factor": 0.25, **overrides})
    elif name == "AutoencoderKLFlux2":
        vae = diffusers.AutoencoderKLFlux2(**{**KL_BLOCKS, **overrides})
        vae.bn.running_mean.normal_()
        vae.bn.running_var.uniform_(0.5, 2.0)
    elif name == "AutoencoderKLQwenImage":
        stats = dict(latents_mean=[0.1, -0.2, 0.3, 0.4], latents_std=[1.5, 2.0, 0.5, 4.0])
        vae = diffusers.AutoencoderKLQwenImage(base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1,
                                               temperal_downsample=[False], **{**stats, **overrides})  # fmt: skip
    else:
        vae = diffusers.AutoencoderDC(
            in_channels=3, latent_channels=4, encoder_block_out_channels=(8, 16), decoder_block_out_channels=(8, 16),
            encoder_layers_per_block=(1, 1), decoder_layers_per_block=(1, 1), encoder_qkv_multiscales=((), ()),
            decoder_qkv_multiscales=((), ()), **{"scaling_factor": 0.4, **overrides},
        )  # fmt: skip
    vae.save_pretrained(str(path))
    return vae.eval()


def vae_config(path, *overrides: str):
    return load_config(None, ["codec.kind=vae", f"codec.path={path}", *overrides])


def pipeline_encode(name: str, vae, x: torch.Tensor) -> torch.Tensor:
    """The normalised latent of images as the class's diffusers pipeline computes it (posterior mean)."""
    c = vae.config
    if name == "AutoencoderKL":  # SD3 / FLUX.1: (latents - shift_factor) * scaling_factor
        return (vae.encode(x).latent_dist.mean - c.shift_factor) * c.scaling_factor
    if name == "AutoencoderKLFlux2":  # Flux2Pipeline: patchify, then the batch norm's running statistics
        z = patchify(vae.encode(x).latent_dist.mean, 2)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + c.batch_norm_eps)
        return (z - vae.bn.running_mean.view(1, -1, 1, 1)) / std
    if name == "AutoencoderKLQwenImage":  # QwenImage pipelines: (latents - mean) * (1 / std), one frame
        z = vae.encode(x[:, :, None]).latent_dist.mean[:, :, 0]
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (c.latents_mean, c.latents_std))
        return (z - mean) * (1 / std)
    return vae.encode(x).latent * c.scaling_factor  # Sana: latent * scaling_factor


def pipeline_decode(name: str, vae, z: torch.Tensor) -> torch.Tensor:
    c = vae.config
    if name == "AutoencoderKL":
        return vae.decode(z / c.scaling_factor + c.shift_factor).sample
    if name == "AutoencoderKLFlux2":
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + c.batch_norm_eps)
        return vae.decode(unpatchify(z * std + vae.bn.running_mean.view(1, -1, 1, 1), 2)).sample
    if name == "AutoencoderKLQwenImage":
        inv_std = (1 / torch.tensor(c.latents_std)).view(1, -1, 1, 1)
        z = z / inv_std + torch.tensor(c.latents_mean).view(1, -1, 1, 1)
        return vae.decode(z[:, :, None]).sample[:, :, 0]
    return vae.decode(z / c.scaling_factor).sample


def test_the_installed_diffusers_has_every_class():
    assert supported() == CLASSES


@pytest.mark.parametrize("name", CLASSES)
def test_each_class_encodes_and_decodes_as_its_diffusers_pipeline(name, tmp_path):
    vae = save_autoencoder(name, tmp_path / "vae")
    codec = codec_for(vae_config(tmp_path / "vae"))
    channels, factor = (16, 4) if name == "AutoencoderKLFlux2" else (4, 2)  # FLUX.2: 2x2 patches as channels
    assert (codec.latent_channels, codec.factor) == (channels, factor)
    assert codec.model_shape(3, 16) == (channels, 16 // factor, 16 // factor)
    assert codec.stochastic == (name != "AutoencoderDC")
    x = torch.rand(3, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        want = pipeline_encode(name, vae, x)
        z = codec.encode(x)
        torch.testing.assert_close(z, want, rtol=1e-5, atol=1e-5)
        images = codec.decode(z)
        torch.testing.assert_close(images, pipeline_decode(name, vae, z).clamp(-1, 1), rtol=1e-5, atol=1e-5)
    assert images.shape == x.shape
    mean, std = codec.moments(x)
    if codec.stochastic:  # training draws mean + std * eps in the VAE's units, then normalises
        eps = torch.randn_like(mean)
        torch.testing.assert_close(codec.sample(mean, std, eps), codec.normalise(mean + std * eps))
    else:
        assert std.shape == (3, 1, 1, 1) and not std.any()


@pytest.mark.parametrize("name", CLASSES)
def test_normalisation_is_the_pipeline_formula_in_float64(name, tmp_path):
    vae = save_autoencoder(name, tmp_path / "vae")
    codec = codec_for(vae_config(tmp_path / "vae"))
    c = vae.config
    if name == "AutoencoderKL":
        shift, scale = (torch.tensor(v, dtype=torch.float64) for v in (c.shift_factor, c.scaling_factor))
    elif name == "AutoencoderKLFlux2":
        shift = vae.bn.running_mean.double().view(-1, 1, 1)
        scale = 1 / (vae.bn.running_var.double() + c.batch_norm_eps).sqrt().view(-1, 1, 1)
    elif name == "AutoencoderKLQwenImage":
        shift = torch.tensor(c.latents_mean, dtype=torch.float64).view(-1, 1, 1)
        scale = 1 / torch.tensor(c.latents_std, dtype=torch.float64).view(-1, 1, 1)
    else:
        shift, scale = torch.tensor(0.0), torch.tensor(c.scaling_factor, dtype=torch.float64)
    z = torch.randn(2, codec.latent_channels, 3, 3, dtype=torch.float64) * 3
    model = codec.normalise(z)
    assert model.dtype == torch.float64
    torch.testing.assert_close(model, (z - shift.double()) * scale.double(), rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(codec.denormalise(model), z, rtol=1e-14, atol=1e-14)  # decoding inverts it


def test_sdxl_style_per_channel_mean_and_std_in_an_autoencoder_kl(tmp_path):
    save_autoencoder("AutoencoderKL", tmp_path / "vae", latents_mean=[0.5, 0, 0, -1], latents_std=[2, 1, 1, 4])
    codec = codec_for(vae_config(tmp_path / "vae"))
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    mean = torch.tensor([0.5, 0, 0, -1], dtype=torch.float64).view(-1, 1, 1)
    std = torch.tensor([2.0, 1, 1, 4], dtype=torch.float64).view(-1, 1, 1)
    # StableDiffusionXLPipeline: (latents - mean) * scaling_factor / std
    torch.testing.assert_close(codec.normalise(z), (z - mean) * 0.5 / std, rtol=1e-15, atol=1e-15)


def test_scale_and_shift_overrides_and_sd_vae_as_one_case(tiny_vae):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    sd = codec_for(load_config(None, ["codec.kind=sd_vae", f"codec.path={tiny_vae}"]))  # an old run's config
    same = codec_for(vae_config(tiny_vae, "codec.scale=0.18215", "codec.shift=0"))
    assert isinstance(sd, SDVAECodec) and (sd.scale, sd.shift) == (0.18215, 0.0)
    assert torch.equal(sd.encode(x), same.encode(x))
    z = sd.encode(x)
    assert torch.equal(sd.decode(z), same.decode(z))
    # the tiny VAE's config has diffusers' default scaling_factor (0.18215), no shift: auto reads them
    assert codec_for(vae_config(tiny_vae)).normalisation == (0.0, 0.18215)


def test_sd_vae_identity_is_the_one_old_caches_hold(tiny_vae):
    """repflow's SD-VAE caches hold sha256 over the encoder and quant_conv tensors (float32 bytes) by name."""
    codec = SDVAECodec(str(tiny_vae))
    state = codec.vae.state_dict()
    h = hashlib.sha256()
    for key in sorted(k for k in state if k.startswith(("encoder.", "quant_conv."))):
        h.update(key.encode())
        h.update(state[key].float().numpy().tobytes())
    old = {"kind": "sd_vae", "latent_channels": 4, "factor": 2, "encoder_sha256": h.hexdigest()[:16]}
    assert codec.identity() == old


def data_overrides(root) -> list[str]:
    return [*TINY, "data.dataset=image_folder", f"data.root={root}", "data.resolution=8", "data.workers=0",
            "model.num_classes=-1"]  # fmt: skip


@pytest.mark.parametrize("name", ["AutoencoderKL", "AutoencoderDC"])
def test_codec_stats_are_exact_at_any_batch_size_and_normalise_per_channel(name, tmp_path, capsys):
    vae = save_autoencoder(name, tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    del config["scaling_factor"]  # a VAE whose config has no scaling: it needs statistics
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    root = colour_folder(tmp_path / "data", classes=2, per_class=5, size=8)
    overrides = [*data_overrides(root), "codec.kind=vae", f"codec.path={tmp_path / 'vae'}"]
    with pytest.raises(ConfigError, match="no latent scaling in its config: compute per-channel statistics with"):
        codec_for(load_config("demo-fashion-sit", overrides))
    files = [tmp_path / f"s{b}.safetensors" for b in (3, 64)]
    for batch, out in zip((3, 64), files, strict=True):
        assert main(["codec", "stats", "demo-fashion-sit", *overrides, "--out", str(out), "--batch-size",
                     str(batch), "--flip"]) == 0  # fmt: skip
    assert "latent statistics of 320 latents (4, 1, 1)" in capsys.readouterr().out  # 10 images x 2 x 4x4
    from safetensors.torch import load_file

    a, b = load_file(str(files[0])), load_file(str(files[1]))
    # the reference: every posterior of the set at once (images and mirrors), in float64
    dataset = build_dataset(load_config("demo-fashion-sit", overrides).data)
    images = uint8_to_model(dataset.get_batch([(i, f) for i in range(10) for f in (False, True)]).images)
    with torch.no_grad():
        if name == "AutoencoderKL":
            post = vae.encode(images).latent_dist
            mean, var = post.mean.double(), post.var.double()
        else:
            mean, var = vae.encode(images).latent.double(), torch.zeros(1, dtype=torch.float64)
    want_mean = mean.mean(dim=(0, 2, 3))
    # a draw z = mean + std * eps: Var z = Var mean + E std^2 (the second term is 0 without a posterior)
    want_var = mean.var(dim=(0, 2, 3), unbiased=False) + var.expand_as(mean).mean(dim=(0, 2, 3))
    for s in (a, b):
        torch.testing.assert_close(s["mean"].double().flatten(), want_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(s["var"].double().flatten(), want_var, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a["mean"], b["mean"], rtol=1e-6, atol=1e-7)
    codec = codec_for(load_config("demo-fashion-sit", [*overrides, f"codec.stats={files[0]}"]))
    z = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    shift, std = a["mean"].double(), a["var"].double().sqrt()
    torch.testing.assert_close(codec.normalise(z), (z - shift) / std, rtol=1e-12, atol=1e-12)
    codec.encode(images[:1])  # the VAE they were computed with: taken
    save_autoencoder(name, tmp_path / "other", seed=1)  # the same class and config, other weights
    other = [*overrides[:-1], f"codec.path={tmp_path / 'other'}", f"codec.stats={files[0]}"]
    with pytest.raises(ConfigError, match="was computed with another VAE .* encoder_sha256 differ"):
        codec_for(load_config("demo-fashion-sit", other)).encode(images[:1])


def test_a_latent_cache_of_another_vae_is_refused_in_one_line(tmp_path):
    for i in (0, 1):
        save_autoencoder("AutoencoderKL", tmp_path / f"vae{i}", seed=i)
    root = colour_folder(tmp_path / "data", classes=2, per_class=2, size=8)
    cfg = load_config("demo-fashion-sit", [*data_overrides(root), "codec.kind=vae", f"codec.path={tmp_path / 'vae0'}",
                                           f"codec.cache={tmp_path / 'cache'}"])  # fmt: skip
    cache_latents(cfg, tmp_path / "cache", workers=0, progress=False)
    dataset = build_dataset(cfg.data)
    assert open_latent_cache(cfg, codec_for(cfg), dataset).count == 4  # a copy of the same weights would match
    other = cfg.replace(**{"codec.path": str(tmp_path / "vae1")})
    with pytest.raises(StoreMismatchError) as err:
        open_latent_cache(other, codec_for(other), dataset)
    message = str(err.value)
    assert "\n" not in message and "codec.encoder_sha256=" in message and "rebuild it with" in message
    dc = tmp_path / "dc"
    save_autoencoder("AutoencoderDC", dc)
    third = cfg.replace(**{"codec.path": str(dc)})
    with pytest.raises(StoreMismatchError, match="codec.class='AutoencoderKL' \\(this run: 'AutoencoderDC'\\)"):
        open_latent_cache(third, codec_for(third), dataset)


def test_bad_vae_directories_are_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="VAE directory '/no/such/vae' does not exist"):
        codec_for(vae_config("/no/such/vae"))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="holds a UNet2DModel; the vae codec drives AutoencoderKL, "
                                         "AutoencoderKLFlux2, AutoencoderKLQwenImage, AutoencoderDC"):  # fmt: skip
        codec_for(vae_config(tmp_path / "unet"))
    (tmp_path / "dc").mkdir()
    (tmp_path / "dc" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderDC", "scaling_factor": 1}))
    with pytest.raises(ValueError, match="the AutoencoderDC config has no 'latent_channels'"):
        codec_for(vae_config(tmp_path / "dc"))
    with pytest.raises(ConfigError, match="'codec.path' must name a diffusers autoencoder directory"):
        load_config(None, ["codec.kind=vae"])
    with pytest.raises(ConfigError, match="leave codec.scale and codec.shift at auto"):
        vae_config(tmp_path, "codec.stats=s.safetensors", "codec.shift=0.1")
    save_tiny_vae(tmp_path / "kl")
    from safetensors.torch import save_file

    save_file({"mean": torch.zeros(3, 1, 1), "var": torch.ones(3, 1, 1)}, str(tmp_path / "s3.safetensors"))
    with pytest.raises(ConfigError, match="holds \\(3, 1, 1\\) statistics but the VAE's latent has 4 channels"):
        codec_for(vae_config(tmp_path / "kl", f"codec.stats={tmp_path / 's3.safetensors'}"))


def test_a_run_whose_channels_differ_from_the_codec_is_refused_before_any_step(tmp_path):
    from repflow.build import resolve_config

    save_autoencoder("AutoencoderKLFlux2", tmp_path / "flux2")  # 16 channels (4 x 2x2 patches) at factor 4
    root = colour_folder(tmp_path / "data", classes=2, per_class=2, size=8)
    codec = ["codec.kind=vae", f"codec.path={tmp_path}/flux2"]
    cfg = load_config("demo-fashion-sit", [*data_overrides(root), *codec, "model.in_channels=4"])  # SD-VAE's 4
    with pytest.raises(ConfigError, match="model.in_channels=4 does not match the data \\(16\\)"):
        resolve_config(cfg, build_dataset(cfg.data))

"""LDM-format VAE checkpoints (VA-VAE, REPA-E) -> diffusers AutoencoderKL directories -> the vae codec.

The reference for the name mapping is diffusers' own LDM converter (``convert_ldm_vae_checkpoint``), which
covers every layer except attention inside a level; the f16d32 layout (attention at the last level) is checked
by round trips and, against the official LDM code, in the README's comparison table."""

import json

import pytest
import torch

from repflow._compat import require
from repflow.build import codec_for
from repflow.cli import main
from repflow.codecs.ldm_vae import architecture, to_diffusers, to_ldm
from repflow.config import load_config
from repflow.data.latent_stats import load_stats

diffusers = require("diffusers")
# a tiny f16d32-like layout: two levels, attention in the last one (as VA-VAE's level at 16 px), 8 latent channels
F16_LIKE = dict(block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), latent_channels=8, layers_per_block=1,
                norm_num_groups=32, sample_size=16)  # fmt: skip
SD_LIKE = {**F16_LIKE, "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2}


def random_vae(layout: dict, seed: int = 0):
    torch.manual_seed(seed)
    vae = diffusers.AutoencoderKL(**layout).eval()
    with torch.no_grad():  # GroupNorm scales and zero biases would hide a swapped tensor
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae


@pytest.mark.parametrize("layout", [F16_LIKE, SD_LIKE], ids=["attention-in-level", "sd"])
def test_the_architecture_is_read_back_from_the_ldm_tensors_and_names_round_trip(layout):
    vae = random_vae(layout)
    ldm = to_ldm(vae.state_dict(), dict(vae.config))
    assert any(k.startswith("encoder.down.") for k in ldm) and "decoder.up.0.block.0.conv1.weight" in ldm
    config = architecture(ldm)
    for key in ("down_block_types", "up_block_types", "layers_per_block", "latent_channels", "in_channels"):
        assert config[key] == (list(vae.config[key]) if isinstance(config[key], list) else vae.config[key])
    assert config["block_out_channels"] == list(layout["block_out_channels"])
    back = to_diffusers(ldm, config)
    assert back.keys() == vae.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in vae.state_dict().items())


def test_ldm_names_equal_diffusers_own_converter_where_it_applies():
    """diffusers' ``convert_ldm_vae_checkpoint`` maps SD's layout (no attention inside a level): our LDM names
    and shapes must give back every tensor through it."""
    single_file = require("diffusers.loaders.single_file_utils")
    vae = random_vae(SD_LIKE)
    ldm = to_ldm(vae.state_dict(), dict(vae.config))
    theirs = single_file.convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    assert theirs.keys() == vae.state_dict().keys()
    assert all(torch.equal(theirs[k].reshape(v.shape), v) for k, v in vae.state_dict().items())


def _ldm_file(tmp_path, vae, wrap):
    path = tmp_path / "vae.pt"
    torch.save(wrap(to_ldm(vae.state_dict(), dict(vae.config))), path)
    return path


def test_import_writes_a_codec_directory_that_encodes_decodes_and_normalises_as_lightningdit(tmp_path):
    vae = random_vae(F16_LIKE)
    mean, std = torch.randn(1, 8, 1, 1), torch.rand(1, 8, 1, 1) + 0.5
    torch.save({"mean": mean, "std": std}, tmp_path / "latents_stats.pt")  # LightningDiT's file
    # an LDM training checkpoint: the loss (LPIPS, discriminator) beside the autoencoder, as VA-VAE's holds
    path = _ldm_file(tmp_path, vae, lambda sd: {"state_dict": {**sd, "loss.discriminator.w": torch.ones(2)}})
    assert main(["codec", "import", str(path), "--stats", str(tmp_path / "latents_stats.pt"),
                 "--out", str(tmp_path / "va")]) == 0  # fmt: skip
    codec = codec_for(load_config(None, ["codec.kind=vae", f"codec.path={tmp_path / 'va'}"]), "cpu")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z = vae.encode(x).latent_dist.mean
        ours = codec.normalise(codec.moments(x)[0])
        assert torch.allclose(ours, (z - mean) / std, atol=1e-5)
        assert torch.allclose(codec.decode(ours), vae.decode(z).sample.clamp(-1, 1), atol=1e-5)  # images clamped
    shift, scale = codec.normalisation  # float64 per channel: (z - mean) / std as their dataset normalises
    assert torch.allclose(shift, mean[0].double()) and torch.allclose(scale, 1 / std[0].double(), rtol=1e-15)


def test_a_repa_e_checkpoint_brings_its_batch_norm_statistics(tmp_path):
    vae = random_vae(F16_LIKE, seed=1)
    running_mean, running_var = torch.randn(8), torch.rand(8) + 0.5
    ema = {"bn.running_mean": running_mean, "bn.running_var": running_var, "x_embedder.proj.weight": torch.ones(1)}
    path = _ldm_file(tmp_path, vae, lambda sd: {"vae": sd, "ema": ema, "discriminator": {"w": torch.ones(1)}})
    assert main(["codec", "import", str(path), "--out", str(tmp_path / "e2e")]) == 0
    config = json.loads((tmp_path / "e2e" / "config.json").read_text())
    assert config["scaling_factor"] == 1.0
    assert torch.allclose(torch.tensor(config["latents_mean"]), running_mean)
    assert torch.allclose(torch.tensor(config["latents_std"]) ** 2, running_var)
    # their save_vae_weights.py file: latents_scale = rsqrt(running_var), latents_bias = running_mean
    stats = {"latents_scale": running_var.rsqrt().view(1, 8, 1, 1), "latents_bias": running_mean.view(1, 8, 1, 1)}
    torch.save(stats, tmp_path / "e2e-latents-stats.pt")
    mean, var, _ = load_stats(tmp_path / "e2e-latents-stats.pt")
    assert torch.equal(mean[:, 0, 0], running_mean)
    assert torch.allclose(var.double().rsqrt(), stats["latents_scale"].double().view(8, 1, 1), rtol=1e-15)


def test_without_statistics_the_codec_asks_for_them_instead_of_using_the_sd_scale(tmp_path):
    path = _ldm_file(tmp_path, random_vae(F16_LIKE), lambda sd: sd)
    assert main(["codec", "import", str(path), "--out", str(tmp_path / "raw")]) == 0
    assert "scaling_factor" not in json.loads((tmp_path / "raw" / "config.json").read_text())
    with pytest.raises(Exception, match="no latent scaling"):
        _ = codec_for(load_config(None, ["codec.kind=vae", f"codec.path={tmp_path / 'raw'}"]), "cpu").normalisation


def test_bad_inputs_are_one_line(tmp_path, capsys):
    torch.save({"model": {"x_embedder.weight": torch.ones(2)}}, tmp_path / "sit.pt")
    assert main(["codec", "import", str(tmp_path / "sit.pt"), "--out", str(tmp_path / "o")]) != 0
    assert "no LDM AutoencoderKL" in capsys.readouterr().err
    path = _ldm_file(tmp_path, random_vae(F16_LIKE), lambda sd: sd)
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "config.json").write_text("{}")
    assert main(["codec", "import", str(path), "--out", str(tmp_path / "used")]) != 0
    assert "not an empty directory" in capsys.readouterr().err
    torch.save({"mean": torch.zeros(4, 1, 1), "var": torch.ones(4, 1, 1)}, tmp_path / "four.pt")
    assert main(["codec", "import", str(path), "--stats", str(tmp_path / "four.pt"), "--out", str(tmp_path / "n")]) != 0
    err = capsys.readouterr().err
    assert "8 channels" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "n").exists()
    assert main(["codec", "import", str(tmp_path / "absent.pt"), "--out", str(tmp_path / "a")]) != 0
    assert "does not exist" in capsys.readouterr().err
    sd = torch.load(path, weights_only=True)
    sd["encoder.conv_in.bias"][0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    assert main(["codec", "import", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err
    assert "encoder.conv_in.bias holds NaN" in err and len(err.strip().splitlines()) == 1

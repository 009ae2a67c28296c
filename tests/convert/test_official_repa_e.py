"""Official REPA-E training checkpoints <-> repflow repa_e runs: official -> repflow -> official exact, the VAE's
LDM layout <-> diffusers (with attention in a level, as f16d32 has), the imported run samples with the tuned VAE."""

import pytest
import torch

from repflow.cli import main
from repflow.codecs.ldm_vae import to_diffusers, to_ldm
from repflow.config import load_config
from repflow.errors import CheckpointError
from repflow.sample.load import load_run
from repflow.train.loop import Trainer

from ..conftest import colour_folder, latent_overrides, save_tiny_vae


def test_ldm_layout_round_trips_with_attention_in_a_level(tmp_path):
    vae = save_tiny_vae(tmp_path / "vae", block_out_channels=(32, 32), norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
                        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"))  # fmt: skip
    ldm = to_ldm(vae.state_dict(), dict(vae.config))
    assert ldm["encoder.down.1.attn.0.q.weight"].shape == (32, 32, 1, 1)  # a 1x1 convolution there
    assert "decoder.up.1.attn.1.proj_out.weight" in ldm and "decoder.up.0.upsample.conv.weight" not in ldm
    back = to_diffusers(ldm, dict(vae.config))
    assert all(torch.equal(back[k], v) for k, v in vae.state_dict().items())
    with pytest.raises(CheckpointError, match="lacks"):
        to_diffusers({k: v for k, v in ldm.items() if "mid.attn_1" not in k}, dict(vae.config))


def test_official_repa_e_round_trip_and_sampling(tmp_path):
    save_tiny_vae(tmp_path / "vae", block_out_channels=(32, 32), norm_num_groups=32)
    colour_folder(tmp_path / "data", per_class=4)
    small = ["method.kind=repa_e", "codec.kind=vae", "repa.enabled=true", "repa.projector_dim=16",
             "encoders=[{name: tiny}]", "method.disc_layers=1", "method.disc_width=8", "train.batch_size=4",
             "train.steps=2", "train.ema_decays=[0.9999]"]  # fmt: skip
    Trainer(load_config(None, latent_overrides(tmp_path / "vae", tmp_path / "data", *small)), tmp_path / "run").fit()
    first, second = tmp_path / "first.pt", tmp_path / "second.pt"
    assert main(["convert", "--to", "official-repa-e", str(tmp_path / "run"), "--out", str(first)]) == 0
    official = torch.load(first, weights_only=True)
    assert {"model", "ema", "vae", "discriminator", "steps"} <= set(official)
    assert {"bn.running_mean", "bn.running_var", "pos_embed", "projectors.0.0.weight"} <= set(official["ema"])
    assert "encoder.down.0.block.0.conv1.weight" in official["vae"]  # the LDM layout
    assert main(["convert", "official-repa-e", str(first), "--out", str(tmp_path / "imported")]) == 0
    assert main(["convert", "--to", "official-repa-e", str(tmp_path / "imported"), "--out", str(second)]) == 0
    again = torch.load(second, weights_only=True)
    for part in ("model", "ema", "vae", "discriminator"):
        assert official[part].keys() == again[part].keys()
        assert all(torch.equal(official[part][k], again[part][k]) for k in official[part]), part
    trained, imported = load_run(tmp_path / "run"), load_run(tmp_path / "imported")
    z = torch.randn(2, 4, 4, 4)
    with torch.no_grad():  # the tuned VAE and its EMA statistics came along: the same decoded images
        torch.testing.assert_close(imported.denoiser.decode({"x": z}), trained.denoiser.decode({"x": z}))
    with pytest.raises(CheckpointError, match="no 'vae'"):
        torch.save({"model": {}, "ema": {}}, tmp_path / "bad.pt")
        from repflow.convert import import_checkpoint

        import_checkpoint("official-repa-e", tmp_path / "bad.pt", tmp_path / "bad")

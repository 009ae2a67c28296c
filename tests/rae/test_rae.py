"""RAE: the codec (latents, statistics), its decoder (losses, two-phase training, diffusers format), DiT^DH,
the dimension-dependent shift and AutoGuidance."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from repflow.build import codec_for
from repflow.config import ConfigError, load_config
from repflow.data import build_dataset
from repflow.data.latent_stats import Moments, gather_moments, latent_moments
from repflow.data.transforms import model_to_uint8, uint8_to_model
from repflow.flow.timesteps import dimension_shift, shift_time
from repflow.methods.decoder_losses import adaptive_weight
from repflow.models import build_model
from repflow.models.dit_dh import DiTDHConfig, count_parameters
from repflow.runtime.distributed import DistInfo
from repflow.runtime.lookup import load_checkpoint
from repflow.train.loop import Trainer

from .conftest import DECODER, rae_overrides


def test_latent_is_the_last_block_through_a_non_affine_layernorm(dino_dir):
    cfg = load_config(None, rae_overrides(dino_dir))
    codec = codec_for(cfg)
    assert codec.model_shape(3, 16) == (64, 4, 4)  # 16 px / patch 4 -> 4 x 4 tokens of the 64-wide encoder
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    z = codec.raw(images)
    enc = codec.encoder()
    with torch.no_grad():
        states = enc.network(pixel_values=enc.preprocess(images), output_hidden_states=True).hidden_states
    tokens = F.layer_norm(states[-1][:, 5:], (64,), eps=1e-6)  # class + 4 registers dropped, no affine
    assert torch.allclose(z, tokens.transpose(1, 2).reshape(2, 64, 4, 4), atol=1e-5)
    two = codec_for(load_config(None, rae_overrides(dino_dir, "codec.layers=2")))
    two.model_shape(3, 16)
    mean_two = (F.layer_norm(states[-2][:, 5:], (64,), eps=1e-6) + tokens) / 2  # RAEv2: the last k averaged
    assert torch.allclose(two.raw(images), mean_two.transpose(1, 2).reshape(2, 64, 4, 4), atol=1e-5)


def test_streaming_statistics_equal_a_one_pass_reference(tmp_path):
    cfg = load_config(None, rae_overrides(None, "data.synthetic_size=13"))
    codec, data = codec_for(cfg), build_dataset(cfg.data, 4)
    codec.model_shape(3, 16)
    from repflow.data.transforms import uint8_to_model

    items = [(i, f) for i in range(13) for f in (False, True)]
    every = codec.raw(uint8_to_model(data.get_batch(items).images)).double()
    streamed = latent_moments(codec.raw, data, list(range(13)), flips=True, batch_size=3, progress=False)
    assert streamed.count == 26
    assert torch.allclose(streamed.mean, every.mean(0), atol=1e-10, rtol=0)
    assert torch.allclose(streamed.var, every.var(0, unbiased=False), atol=1e-10, rtol=0)
    halves = [latent_moments(codec.raw, data, part, True, 5, False) for part in (list(range(7)), list(range(7, 13)))]
    merged = halves[0].merge(halves[1])  # two processes' shares, merged in rank order
    assert torch.allclose(merged.mean, streamed.mean, atol=1e-12) and torch.allclose(merged.m2, streamed.m2, atol=1e-9)
    assert gather_moments(streamed, DistInfo()) is streamed
    with pytest.raises(ConfigError, match="statistics"):
        from repflow.cli import main

        stats = tmp_path / "s.safetensors"
        assert main(["rae", "stats", "demo-fashion-sit", *rae_overrides(None), "--out", str(stats)]) == 0
        bad = codec_for(load_config(None, rae_overrides(None, f"codec.stats={stats}", "codec.decoder_patch=8")))
        bad.model_shape(3, 16)  # the statistics are 4x4, this latent 2x2


def test_moments_merge_is_chans_rule_in_float64():
    x = torch.randn(50, 3, dtype=torch.float64) * 5 + 100
    a, b = Moments.of(x[:17]), Moments.of(x[17:])
    both = a.merge(b)
    assert torch.allclose(both.mean, x.mean(0)) and torch.allclose(both.var, x.var(0, unbiased=False))


def test_noise_augmentation_statistics(tmp_path):
    cfg = load_config(None, rae_overrides(None, *DECODER, "method.noise_tau=0.8", "method.gan_weight=0"))
    trainer = Trainer(cfg, tmp_path)
    batch = trainer.next_batch(0)
    draw = trainer.method.draw(batch, 40000, torch.Generator().manual_seed(0))
    sigma = draw["sigma"]
    assert sigma.min() >= 0 and sigma.max() <= 0.8
    assert sigma.mean().item() == pytest.approx(0.4, abs=0.01) and sigma.var().item() == pytest.approx(
        0.64 / 12, abs=0.003
    )
    added = sigma.view(-1, 1, 1, 1) * draw["noise"]  # what reconstruct() adds to the latent
    assert added.var().item() == pytest.approx(0.64 / 3, rel=0.03)  # E[sigma^2] = tau^2 / 3
    trainer._release()


def test_adaptive_weight_against_a_hand_computation():
    w = torch.randn(4, 3, requires_grad=True)
    x = torch.randn(5, 3)
    out = x @ w.T
    rec, gan = (out**2).mean(), -out.sum() / 7
    g_rec = 2 * (out.detach().T @ x) / out.numel()  # d mean(out^2) / dw
    g_gan = -torch.ones_like(out).T @ x / 7
    expected = g_rec.norm() / (g_gan.norm() + 1e-6)
    assert adaptive_weight(rec, gan, w).item() == pytest.approx(expected.item(), rel=1e-5)
    assert adaptive_weight(rec, gan * 1e-12, w, maximum=10.0).item() == 10.0  # clamped


def test_decoder_training_two_phases_resume_bit_for_bit_and_preview(tmp_path, capsys, dino_vits8):
    """With RAE's DINO ViT-S/8 discriminator (a tiny one of its architecture, read from its file)."""
    cfg = load_config(None, rae_overrides(None, *DECODER, "train.steps=4", "train.ckpt_every=2",
                                          f"method.disc_weights={dino_vits8['small']}"))  # fmt: skip
    straight = Trainer(cfg, tmp_path / "a")
    assert "LPIPS is off: no weights given" in capsys.readouterr().err
    straight.fit()
    Trainer(cfg, tmp_path / "b").fit(stop_at=2)
    resumed = Trainer(cfg, tmp_path / "b")
    resumed.fit()
    a, b = straight.method.state_dict(), resumed.method.state_dict()
    assert any(k.endswith("weight_u") for k in a)  # the spectral norms' power-iteration vectors, restored too
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ckpt = load_checkpoint(tmp_path / "a")
    assert {"decoder", "disc", "decoder-ema-0.9"} <= set(ckpt.weight_names())
    metrics = (tmp_path / "a" / "metrics.jsonl").read_text()
    assert '"adaptive_weight"' in metrics and '"d_hinge_disc"' in metrics  # both phases ran, the GAN term entered
    assert (tmp_path / "a" / "samples" / "step-00000004.png").is_file()  # originals over reconstructions


def test_eval_of_a_decoder_run_measures_psnr_and_rfid_of_reconstructions(tmp_path, fake_inception_env, capsys):
    from repflow.cli import main
    from repflow.eval.reconstruct import psnr_uint8
    from repflow.sample.load import load_run

    a = torch.randint(0, 255, (2, 3, 4, 4), dtype=torch.uint8)
    assert psnr_uint8(a, a + 1).tolist() == pytest.approx([10 * math.log10(255**2)] * 2)  # MSE 1
    assert psnr_uint8(a, a).tolist() == [100.0, 100.0]  # capped, not infinite
    cfg = load_config(None, rae_overrides(None, *DECODER, "train.steps=2", "method.gan_weight=0"))
    Trainer(cfg, tmp_path / "dec").fit()
    assert main(["eval", str(tmp_path / "dec"), "--num-samples", "12", "--metrics", "fid", "--ref-count", "0"]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and "rFID" in out and "reconstructions" in out
    folder = next((tmp_path / "dec" / "eval").glob("recon-ckpt-00000002-ema0.9-test"))
    assert len(list(folder.glob("[0-9]*.png"))) == 12 and (folder / "grid.png").is_file()
    record = json.loads((folder / "eval.json").read_text())
    # the PSNR of the written PNGs equals one computed here from the run's own reconstructor
    run = load_run(tmp_path / "dec")
    data = build_dataset(dataclasses.replace(run.cfg.data, split="test"), max(run.cfg.model.num_classes, 1))
    originals = data.get_batch([(i, False) for i in range(12)]).images
    ours = psnr_uint8(model_to_uint8(run.reconstruct(uint8_to_model(originals))), originals).mean().item()
    assert record["psnr"] == pytest.approx(ours, abs=1e-9) and record["metrics"]["fid"] >= 0
    sampled = ["sample", str(tmp_path / "dec"), "--num", "2"]
    assert main(sampled) == 2 and "does not generate images" in capsys.readouterr().err


def test_decoder_exports_to_diffusers_and_back(tmp_path, dino_dir):
    from repflow._compat import require
    from repflow.cli import main

    diffusers = require("diffusers")
    cfg = load_config(None, rae_overrides(dino_dir, *DECODER, "train.steps=2", "method.gan_weight=0"))
    Trainer(cfg, tmp_path / "dec").fit()
    stats = tmp_path / "stats.safetensors"
    assert main(["rae", "stats", "demo-fashion-sit", *rae_overrides(dino_dir), "--out", str(stats)]) == 0
    assert main(["rae", "export", str(tmp_path / "dec"), "--stats", str(stats), "--out", str(tmp_path / "hf")]) == 0
    rae = diffusers.AutoencoderRAE.from_pretrained(str(tmp_path / "hf")).eval()
    ours = codec_for(load_config(None, rae_overrides(dino_dir, f"codec.decoder={tmp_path / 'dec'}",
                                                     f"codec.stats={stats}")))  # fmt: skip
    ours.model_shape(3, 16)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        z_theirs = rae.encode((images + 1) / 2).latent  # diffusers takes [0, 1]
        z_ours = ours.encode(images)
        assert torch.allclose(z_theirs, z_ours, atol=1e-4)
        x_theirs = rae.decode(z_ours).sample * 2 - 1
        assert torch.allclose(x_theirs.clamp(-1, 1), ours.decode(z_ours), atol=1e-4)
    via_hf = codec_for(load_config(None, rae_overrides(dino_dir, f"codec.decoder={tmp_path / 'hf'}")))
    via_hf.model_shape(3, 16)
    raw = ours.denormalise(z_ours)
    assert torch.allclose(via_hf.decode(raw), ours.decode(z_ours), atol=1e-5)  # a diffusers decoder loads here


def test_dit_dh_shapes_parameters_zero_output_and_the_width_rule(tmp_path):
    assert count_parameters("DiTDH-XL/1") == pytest.approx(839e6, rel=0.005)  # the paper's 839M
    cfg = DiTDHConfig(arch="DiTDH-T/1", depth=2, hidden_size=32, num_heads=2, head_width=64, head_heads=2,
                      head_depth=2, num_classes=3, input_size=4, in_channels=48)  # fmt: skip
    model = build_model(cfg)
    x = torch.randn(2, 48, 4, 4)
    out = model({"x": x}, torch.rand(2), torch.tensor([0, 2]), return_hidden=(1,))
    assert out.pred["x"].shape == x.shape and torch.count_nonzero(out.pred["x"]) == 0  # zero-initialised
    assert out.hidden[1].shape == (2, 16, 32)
    narrow = rae_overrides(None, "model.hidden_size=64", "model.num_heads=2", "model.depth=2")  # 64 < 128 x 2x2
    with pytest.raises(ConfigError, match=r"model width 64 is below the 512 values of a token \(128 channels x 2x2\)"):
        Trainer(load_config(None, narrow), tmp_path / "narrow")
    assert not (tmp_path / "narrow").exists()  # refused before anything was written
    Trainer(load_config(None, [*narrow, "model.allow_narrow=true"]), tmp_path / "allowed")
    wide_head = ["model.family=dit_dh", "model.arch=DiTDH-T/1", "model.head_width=128", "model.head_heads=2",
                 "model.hidden_size=64", "model.num_heads=2", "model.depth=2"]  # fmt: skip
    Trainer(load_config(None, rae_overrides(None, *wide_head)), tmp_path / "wide-head")  # a 128-wide head: accepted


def test_the_dimension_shift_and_its_inverse_and_the_sampling_grid():
    s = dimension_shift(16 * 16 * 768, 4096)
    assert s == pytest.approx(math.sqrt(48))
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    assert torch.allclose(shift_time(shift_time(t, s), 1 / s), t, atol=1e-12)  # 1/s undoes s
    assert shift_time(torch.tensor(0.5, dtype=torch.float64), s).item() == pytest.approx(s / (1 + s))
    from repflow.methods import FlowMethod
    from repflow.methods.flow import build_flow_network

    tiny_sit = ["model.arch=SiT-T/2", "model.depth=1", "model.hidden_size=32", "model.num_heads=2",
                "model.input_size=4", "model.in_channels=3", "model.num_classes=0"]  # fmt: skip
    cfg = load_config(None, ["flow.time.shift=6.928", *tiny_sit])
    net = build_flow_network(cfg)
    assert FlowMethod.denoiser(cfg, {"model": net}, torch.device("cpu")).shift == 6.928  # training's, at sampling
    other = cfg.replace(**{"sample.shift": 2.0})
    assert FlowMethod.denoiser(other, {"model": net}, torch.device("cpu")).shift == 2.0


def test_repa_alignment_on_top_of_rae_training(tmp_path):
    """The improved baselines: REPA's term on a DiT^DH trained in RAE space (its encoder sees the images)."""
    dit_dh = ["model.family=dit_dh", "model.arch=DiTDH-T/1", "model.head_width=128", "model.head_heads=2",
              "model.hidden_size=64", "model.num_heads=2", "model.depth=2", "train.steps=2"]  # fmt: skip
    repa = ["encoders.0.name=tiny", "repa.enabled=true", "repa.projector_dim=32", "repa.depth=1"]
    trainer = Trainer(load_config(None, rae_overrides(None, *dit_dh, *repa)), tmp_path)
    trainer.fit()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(-1 <= row["repa"] <= 1 and row["repa"] != 0 for row in logged)  # a negative cosine similarity
    weights = trainer.method.state_dict()
    assert weights["objective.terms.repa.projectors.0.4.weight"].shape == (128, 32)  # to the encoder's 128-d

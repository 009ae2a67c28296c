"""Latent-space runs exported with their codec: a SiT in SD-VAE latents (the VAE as a diffusers AutoencoderKL in
``vae/``) and a DiT^DH in RAE latents (its decoder converted to a diffusers AutoencoderRAE by ``repflow rae
export``'s code, the latent statistics in ``codec/``); diffusers samples what ``repflow sample`` writes."""

from __future__ import annotations

import json

import torch

import repflow
from repflow.cli import main
from repflow.config import load_config
from repflow.sample.sharded import read_samples
from repflow.train.loop import Trainer

from ..conftest import colour_folder, latent_overrides
from ..rae.conftest import DECODER, dino_dir, rae_overrides  # noqa: F401 (the fixture is used here)
from .test_export import perturb

DIT_DH = ["model.family=dit_dh", "model.arch=DiTDH-T/1", "model.head_width=128", "model.head_heads=2",
          "model.hidden_size=64", "model.num_heads=2", "model.depth=2", "train.steps=2",
          "train.sample_num=0"]  # fmt: skip


def test_a_dit_dh_run_exports_with_its_rae_decoder_and_samples_identically(tmp_path, dino_dir, capsys):  # noqa: F811
    from diffusers import DiffusionPipeline

    Trainer(load_config(None, rae_overrides(dino_dir, *DECODER, "train.steps=2", "method.gan_weight=0")),
            tmp_path / "dec").fit()  # fmt: skip
    stats = tmp_path / "stats.safetensors"
    assert main(["rae", "stats", "demo-fashion-sit", *rae_overrides(dino_dir), "--out", str(stats)]) == 0
    codec = [f"codec.decoder={tmp_path / 'dec'}", f"codec.stats={stats}"]
    Trainer(load_config(None, rae_overrides(dino_dir, *DIT_DH, *codec)), tmp_path / "run").fit()
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--to", "diffusers", str(out)]) == 0
    assert json.loads((out / "vae" / "config.json").read_text())["_class_name"] == "AutoencoderRAE"
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderRAE"]
    assert (out / "codec" / "stats.safetensors").read_bytes() == stats.read_bytes()
    assert main(["sample", str(out), "--num-samples", "4", "--seed", "2", "--out", str(tmp_path / "s")]) == 0
    written = read_samples(tmp_path / "s", range(4))
    assert written.float().std() > 5
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert torch.equal(pipe(num_images=4, seed=2, output_type="pt").images, written)  # bit for bit
    from_run = repflow.load(tmp_path / "run").sample(num=4, seed=2)  # the decoder as repflow trained it
    assert (from_run.int() - written.int()).abs().max() <= 1  # the AutoencoderRAE conversion: rounding only


def test_a_run_in_sd_vae_latents_exports_its_vae_as_an_autoencoder_kl(tmp_path, tiny_vae, capsys):
    from diffusers import AutoencoderKL, DiffusionPipeline

    overrides = latent_overrides(tiny_vae, colour_folder(tmp_path / "data"), "train.steps=2", "train.sample_num=0")
    assert main(["train", "demo-fashion-sit", *overrides, "--out", str(tmp_path / "run")]) == 0
    perturb(tmp_path / "run" / "checkpoints" / "ckpt-00000002")
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--to", "diffusers", str(out)]) == 0
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKL"]
    theirs, ours = AutoencoderKL.from_pretrained(str(out / "vae")), AutoencoderKL.from_pretrained(str(tiny_vae))
    theirs, ours = theirs.state_dict(), ours.state_dict()
    assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)
    assert (
        main(["sample", str(tmp_path / "run"), "--num-samples", "2", "--seed", "4", "--out", str(tmp_path / "s")]) == 0
    )
    written = read_samples(tmp_path / "s", range(2))
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert type(pipe.vae).__name__ == "AutoencoderKL"
    assert torch.equal(pipe(num_images=2, seed=4, output_type="pt").images, written)  # bit for bit


def test_a_run_in_a_qwen_image_vae_with_statistics_exports_and_samples_identically(tmp_path, capsys):
    """codec.kind=vae: a video-shaped autoencoder in vae/, the run's per-channel statistics in codec/."""
    from diffusers import DiffusionPipeline

    from ..codecs.test_vae import save_autoencoder

    save_autoencoder("AutoencoderKLQwenImage", tmp_path / "vae")
    data = colour_folder(tmp_path / "data")
    overrides = [*latent_overrides(tmp_path / "vae", data, "train.steps=2", "train.sample_num=0"), "codec.kind=vae"]
    stats = tmp_path / "stats.safetensors"
    assert main(["codec", "stats", "demo-fashion-sit", *overrides, "--out", str(stats)]) == 0
    overrides.append(f"codec.stats={stats}")
    assert main(["train", "demo-fashion-sit", *overrides, "--out", str(tmp_path / "run")]) == 0
    perturb(tmp_path / "run" / "checkpoints" / "ckpt-00000002")
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--to", "diffusers", str(out)]) == 0
    assert json.loads((out / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderKLQwenImage"]
    assert (out / "codec" / "stats.safetensors").read_bytes() == stats.read_bytes()
    args = ["--num-samples", "2", "--seed", "4"]
    assert main(["sample", str(tmp_path / "run"), *args, "--out", str(tmp_path / "s")]) == 0
    assert main(["sample", str(out), *args, "--out", str(tmp_path / "e")]) == 0  # the export's vae/ and codec/
    written = read_samples(tmp_path / "s", range(2))
    assert torch.equal(read_samples(tmp_path / "e", range(2)), written)
    pipe = DiffusionPipeline.from_pretrained(str(out), trust_remote_code=True)
    assert torch.equal(pipe(num_images=2, seed=4, output_type="pt").images, written)  # bit for bit

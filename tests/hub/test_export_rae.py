"""A DiT^DH run in RAE latents exported: its decoder becomes a diffusers AutoencoderRAE (``repflow rae export``'s
conversion), its latent statistics travel in ``codec/``, and diffusers samples what ``repflow sample`` writes."""

from __future__ import annotations

import json

import torch

import repflow
from repflow.cli import main
from repflow.config import load_config
from repflow.sample.sharded import read_samples
from repflow.train.loop import Trainer

from ..rae.conftest import DECODER, dino_dir, rae_overrides  # noqa: F401 (the fixture is used here)

DIT_DH = ["model.family=dit_dh", "model.arch=DiTDH-T/1", "model.head_width=128", "model.head_heads=2",
          "model.hidden_size=64", "model.num_heads=2", "model.depth=2", "train.steps=2", "train.sample_num=0"]  # fmt: skip


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

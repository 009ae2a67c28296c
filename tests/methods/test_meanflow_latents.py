"""MeanFlow in latent spaces: a run trains a few steps and samples in one network call through the SD-VAE codec
(a tiny random diffusers AutoencoderKL saved locally) and the RAE codec (a tiny encoder, its decoder trained
two steps here), decoding the one-step latents to images at the data's resolution."""

from __future__ import annotations

import torch

from repflow.cli import main
from repflow.config import load_config
from repflow.flow.generate import sample_images
from repflow.sample.load import load_run
from repflow.train.loop import Trainer

from ..conftest import colour_folder, latent_overrides
from ..rae.conftest import DECODER, rae_overrides

MF = ("method.kind=meanflow", "method.kappa=0.5", "sample.sampler=mean", "sample.steps=1", "train.steps=2",
      "train.sample_num=0")  # fmt: skip


def one_step_through_the_codec(run, capsys, latent: tuple[int, ...], image: tuple[int, ...]) -> None:
    loaded = load_run(str(run))
    assert tuple(loaded.denoiser.shapes["x"]) == latent and loaded.cfg.method.kind == "meanflow"
    images, nfe = sample_images(loaded.denoiser, loaded.cfg.sample, range(2))
    assert nfe == 1 and tuple(images.shape) == (2, *image) and images.dtype == torch.uint8
    assert images.float().std() > 0  # decoded pictures, not a constant
    assert main(["sample", str(run), "--num-samples", "2", "--steps", "1", "--out", str(run / "s")]) == 0
    assert "(mean, 1 steps, NFE 1," in capsys.readouterr().out


def test_meanflow_in_sd_vae_latents_samples_in_one_step(tmp_path, tiny_vae, capsys):
    cfg = load_config(None, latent_overrides(tiny_vae, colour_folder(tmp_path / "data"), *MF))
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    assert trainer.step == 2
    one_step_through_the_codec(tmp_path / "run", capsys, latent=(4, 4, 4), image=(3, 8, 8))


def test_meanflow_in_rae_latents_samples_in_one_step(tmp_path, capsys):
    Trainer(load_config(None, rae_overrides(None, *DECODER, "train.steps=2", "method.gan_weight=0")),
            tmp_path / "dec").fit()  # fmt: skip
    dit_dh = ["model.family=dit_dh", "model.arch=DiTDH-T/1", "model.head_width=128", "model.head_heads=2",
              "model.hidden_size=64", "model.num_heads=2", "model.depth=2"]  # fmt: skip
    cfg = load_config(None, rae_overrides(None, *dit_dh, *MF, f"codec.decoder={tmp_path / 'dec'}"))
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    assert trainer.step == 2
    one_step_through_the_codec(tmp_path / "run", capsys, latent=(128, 4, 4), image=(3, 16, 16))

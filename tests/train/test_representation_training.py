"""REPA + REG through the real loop with an online frozen encoder (a random tiny ViT saved locally)."""

import pytest
import torch

from repflow.encoders.tiny import TinyViT, TinyViTConfig, save_tiny
from repflow.flow.generate import sample_images
from repflow.runtime.lookup import load_checkpoint
from repflow.sample.load import load_run
from repflow.train.loop import Trainer

from ..conftest import tiny_config


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("enc") / "tiny.safetensors"
    return save_tiny(TinyViT(TinyViTConfig(image_size=16, dim=24, depth=1, heads=2)), path, {})


def reg_repa(encoder_file, *extra):
    return tiny_config(
        f"encoders=[{{name: tiny, path: {encoder_file}}}]", "reg.enabled=true", "repa.enabled=true", *extra
    )


def test_reg_repa_training_checkpoint_and_sampling(tmp_path, encoder_file):
    trainer = Trainer(reg_repa(encoder_file), tmp_path)
    assert trainer.cfg.reg.dim == 24 and trainer.cfg.repa.depth == 1 and trainer.cfg.encoders[0].resolution == 16
    before = [p.detach().clone() for p in trainer.encoders[0].parameters()]
    trainer.fit()
    enc = trainer.encoders[0]
    assert all(p.grad is None for p in enc.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, enc.parameters(), strict=True))
    ckpt = load_checkpoint(tmp_path)
    model_keys, objective_keys = ckpt.weights("model").keys(), ckpt.weights("objective").keys()
    assert not any("projector" in k for k in model_keys)  # training-only parts stay out of inference weights
    assert any("projectors" in k for k in objective_keys)
    assert any(k.startswith("stream_in.cls") for k in model_keys)
    run = load_run(str(tmp_path))  # rebuilt from the checkpoint alone, no encoder needed
    images, _ = sample_images(run.denoiser, run.cfg.sample, range(3))
    assert images.shape == (3, 3, 8, 8)


def test_reg_repa_resume_is_exact(tmp_path, encoder_file):
    cfg = reg_repa(encoder_file, "train.steps=4", "train.ckpt_every=2")
    straight = Trainer(cfg, tmp_path / "a")
    straight.fit()
    Trainer(cfg, tmp_path / "b").fit(stop_at=2)
    resumed = Trainer(cfg, tmp_path / "b")
    resumed.fit()
    for a, b in zip(straight.method.state_dict().values(), resumed.method.state_dict().values(), strict=True):
        assert torch.equal(a, b)

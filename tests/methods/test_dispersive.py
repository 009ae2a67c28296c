"""The dispersive loss (Wang & He 2025): its formula, its extremes, and the term trained through the loop."""

import math

import pytest
import torch

from repflow.methods.dispersive import dispersive_loss
from repflow.runtime.lookup import load_checkpoint
from repflow.train.loop import Trainer

from ..conftest import tiny_config


def test_formula_against_a_hand_computation_in_float64():
    z = torch.randn(5, 3, 4, dtype=torch.float64)
    flat = z.reshape(5, -1)
    total = sum(math.exp(-((flat[i] - flat[j]) ** 2).sum().item() / 12 / 0.7) for i in range(5) for j in range(5))
    assert dispersive_loss(z, temperature=0.7).item() == pytest.approx(math.log(total / 25), rel=1e-6)


def test_collapsed_batch_gives_zero_and_spread_batch_approaches_minus_log_b():
    same = torch.ones(8, 16, 4)
    assert dispersive_loss(same).item() == pytest.approx(0.0, abs=1e-6)
    spread = 100 * torch.randn(8, 16, 4)
    assert dispersive_loss(spread).item() == pytest.approx(-math.log(8), abs=1e-3)
    z = torch.randn(8, 16, 4, requires_grad=True)
    dispersive_loss(z).backward()
    with torch.no_grad():  # a step down the gradient spreads the features apart
        assert dispersive_loss(z - 0.5 * z.grad) < dispersive_loss(z)


def test_dispersive_term_trains_through_the_loop_and_adds_no_weights(tmp_path):
    cfg = tiny_config("dispersive.enabled=true", "dispersive.weight=0.5", "dispersive.temperature=0.5")
    trainer = Trainer(cfg, tmp_path)
    assert trainer.cfg.dispersive.depth == 2  # 0 resolves to the last block
    trainer.fit()
    row = (tmp_path / "metrics.jsonl").read_text().splitlines()[-1]
    assert '"dispersive": -' in row  # logged, negative (repulsion is rewarded)
    assert "objective" not in load_checkpoint(tmp_path).weight_names()  # no parameters of its own
    off = Trainer(tiny_config("train.steps=6"), tmp_path)  # may be switched off on resume, with a notice
    assert off.step == 4 and "dispersive.enabled: True -> False" in off.notices

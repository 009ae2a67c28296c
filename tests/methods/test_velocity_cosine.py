"""LightningDiT's velocity cosine loss: zero at the true velocity, the formula per position in float64."""

import pytest
import torch

from repflow.flow.loss import FlowSample
from repflow.flow.path import LinearPath
from repflow.methods import TrainBatch
from repflow.methods.velocity_cosine import VelocityCosineTerm
from repflow.models.dit import ModelOutput


def sample_with(pred, x_t, t, eps):
    return FlowSample(t=t, x_t={"x": x_t}, y=None, output=ModelOutput(pred={"x": pred}), eps={"x": eps})


def test_zero_at_the_true_velocity_and_the_formula_elsewhere():
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    t = torch.tensor([0.2, 0.5, 0.9])
    x_t = LinearPath().interpolate(x, eps, t)
    term = VelocityCosineTerm(LinearPath())
    batch = TrainBatch(x=x, y=None)
    loss, weight = term.loss(batch, sample_with(eps - x, x_t, t, eps))["velocity_cosine"]
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and weight == 1.0
    assert term.loss(batch, sample_with(x - eps, x_t, t, eps))["velocity_cosine"][0].item() == pytest.approx(2.0)
    pred = torch.randn(3, 4, 2, 2, generator=g)
    v = (eps - x).double()
    by_hand = sum(
        1 - (pred[b, :, i, j].double() @ v[b, :, i, j]) / (pred[b, :, i, j].double().norm() * v[b, :, i, j].norm())
        for b in range(3) for i in range(2) for j in range(2)
    ) / 12  # fmt: skip
    got = term.loss(batch, sample_with(pred, x_t, t, eps))["velocity_cosine"][0].item()
    assert got == pytest.approx(by_hand.item(), rel=1e-5)
    x_pred = VelocityCosineTerm(LinearPath(), prediction="x")  # an x-prediction is converted to v first
    assert x_pred.loss(batch, sample_with(x, x_t, t, eps))["velocity_cosine"][0].item() == pytest.approx(0, abs=1e-5)

"""iMF's guidance conditioning and velocity head in the MeanFlow objective, in float64: w and its interval drawn
per sample as iMF draws them, the per-sample target and loss against a hand computation, the velocity head's
loss zero at the true velocity (Lyy-iiis/imeanflow ``imf.py``)."""

import pytest
import torch
from torch import nn

from repflow.flow.meanflow import MeanFlowDraw, guidance_scale
from repflow.models import ModelOutput

from .test_meanflow import GaussianAverageVelocity, batch, loss_fn, tiny_network

IMF = {"guidance_conditioning": True, "velocity_head": True, "velocity_weight": 1.0, "tangent": "model"}


def test_w_is_drawn_from_imfs_power_law_and_the_interval_as_imf_draws_it():
    u = torch.linspace(0, 1, 11, dtype=torch.float64)
    assert torch.allclose(guidance_scale(u, 8.0, 1.0), 8.0**u, rtol=1e-14, atol=0)  # log-uniform on [1, 8]
    # density ~ w^-beta on [1, 8]: the inverse CDF is 1 / (1 - u (1 - 1/8)) for beta 2, 1 + 7 u for beta 0
    assert torch.allclose(guidance_scale(u, 8.0, 2.0), 1 / (1 - u * 7 / 8), rtol=1e-14, atol=0)
    assert torch.allclose(guidance_scale(u, 8.0, 0.0), 1 + 7 * u, rtol=1e-14, atol=0)
    shapes = {"x": (1, 2, 2)}
    mf = loss_fn(r_equals_t=0.5, class_dropout=0.2, guidance_conditioning=True)
    d = mf.draw(shapes, 64, torch.Generator().manual_seed(5))
    plain = loss_fn(r_equals_t=0.5, class_dropout=0.2).draw(shapes, 64, torch.Generator().manual_seed(5))
    assert plain.guidance is None  # without the option nothing more is drawn ...
    for a, b in ((d.t, plain.t), (d.r, plain.r), (d.eps["x"], plain.eps["x"]), (d.drop, plain.drop)):
        assert torch.equal(a, b)  # ... and with it, after the rest: the same pairs, noise and drops
    w, lo, hi = d.guidance.unbind(-1)
    equal = d.r == d.t
    assert int(equal.sum()) == 32 and (w >= 1).all() and (w <= 8).all() and w.std() > 0.5
    assert (lo[equal] == 0).all() and (hi[equal] == 1).all()  # r = t: guided on the whole of [0, 1] (iMF)
    assert ((lo[~equal] >= 0) & (lo[~equal] <= 0.5) & (hi[~equal] >= 0.5) & (hi[~equal] <= 1)).all()
    assert torch.equal(d.chunk(1, 16).guidance, d.guidance[16:32])  # a process's slice of the global draw


def test_per_sample_w_target_and_loss_against_a_hand_computation():
    """iMF's forward with w, t_lo, t_hi per sample: v_g = v + (1 - 1/w')(v_c - v_u), w' = w inside [t_lo, t_hi]
    else 1, v_c and v_u from the velocity head at h = 0 on (w', 0, 1) and (1, 0, 1); the JVP along (v_c, 1) on
    (w, t_lo, t_hi); the velocity loss on the head's output of that same call."""
    net, (clean, y) = tiny_network(guidance_input=True, velocity_head=1), batch()
    t = torch.tensor([0.3, 0.8, 0.2, 0.55, 0.9, 0.45], dtype=torch.float64)
    r = torch.cat([t[:2], t[2:] * torch.tensor([0.5, 0.1, 0.7, 0.3], dtype=torch.float64)])
    w = [1.0, 2.5, 7.9, 3.0, 5.0, 1.7]
    lo, hi = [0.0, 0.0, 0.3, 0.1, 0.2, 0.45], [1.0, 1.0, 0.7, 0.6, 0.6, 0.5]  # samples 2, 4 outside, 5 on lo
    guidance = torch.tensor([w, lo, hi], dtype=torch.float64).T  # (6, 3)
    drop = torch.tensor([True, False, False, True, False, False])
    eps = torch.randn(clean["x"].shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    draw = MeanFlowDraw(t, r, {"x": eps}, drop, guidance)
    mf = loss_fn(class_dropout=0.1, norm_p=0.5, **IMF)
    out, sample = mf(net, clean, y, draw=draw)

    view = (-1, 1, 1, 1)
    z, v = (1 - t.view(view)) * clean["x"] + t.view(view) * eps, eps - clean["x"]
    w_in = torch.tensor([w[i] if lo[i] <= t[i] <= hi[i] else 1.0 for i in range(6)], dtype=torch.float64)
    assert w_in.tolist() == [1.0, 2.5, 1.0, 3.0, 1.0, 1.7]
    ones, zeros = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    with torch.no_grad():
        v_c = net({"x": z}, t, y, h=zeros, guidance=torch.stack([w_in, zeros, ones], -1)).velocity["x"]
        v_u = net({"x": z}, t, torch.full_like(y, 3), h=zeros, guidance=torch.stack([ones, zeros, ones], -1))
    v_g = torch.where(drop.view(view), v, v + (1 - 1 / w_in).view(view) * (v_c - v_u.velocity["x"]))
    y_in = torch.where(drop, 3, y)

    def call(step: float):  # r fixed, (z, t) moved along (v_c, 1); the sample's own (w, t_lo, t_hi)
        return net({"x": z + step * v_c}, t + step, y_in, h=t + step - r, guidance=guidance)

    with torch.no_grad():
        du_dt = (call(1e-6).pred["x"] - call(-1e-6).pred["x"]) / 2e-6
    own = call(0.0)
    compound = own.pred["x"] + (t - r).view(view) * du_dt
    errors = (((compound - v_g) ** 2).sum(dim=(1, 2, 3)), ((own.velocity["x"] - v_g) ** 2).sum(dim=(1, 2, 3)))
    weighted = [(e / (e.detach() + 0.01) ** 0.5).mean() for e in errors]
    assert out.terms["meanflow_x"].item() == pytest.approx(weighted[0].item(), rel=1e-8)
    assert out.terms["meanflow_x_v"].item() == pytest.approx(weighted[1].item(), rel=1e-12)
    assert torch.allclose(sample.output.pred["x"], own.pred["x"], rtol=0, atol=1e-12)
    want = weighted[0] + weighted[1]
    for param in (net.out_x.weight, net.velocity_out.weight, net.t_embedder.guidance.scale.mlp[0].weight):
        got, ref = (torch.autograd.grad(loss, param, retain_graph=True)[0] for loss in (out.total, want))
        scale = ref.abs().max().item()  # the hand du/dt is a central difference: agreement to ~1e-9 of the scale
        assert scale > 0.1 and (got - ref).abs().max().item() < 1e-7 * scale
    # the head is trained by its own loss only: the u loss does not reach it
    (head,) = torch.autograd.grad(out.terms["meanflow_x"], net.velocity_out.weight, allow_unused=True)
    assert head is None or head.abs().max() == 0


class WithVelocityHead(nn.Module):
    """A network whose u is the true average velocity and whose velocity head the true instantaneous one plus
    ``offset``; it ignores labels and guidance (so v_c = v_u and the guided target is the true velocity)."""

    def __init__(self, truth: nn.Module, offset: float = 0.0):
        super().__init__()
        self.truth, self.offset = truth, offset

    def forward(self, states, t, y=None, return_hidden=(), h=None, guidance=None):
        u, v = self.truth(states, t, h=h).pred, self.truth(states, t).pred
        return ModelOutput(pred=u, velocity={k: x + self.offset for k, x in v.items()})


def test_velocity_head_loss_is_zero_at_the_true_velocity_and_not_elsewhere():
    x = {"x": torch.full((6, 2, 8, 8), 0.7, dtype=torch.float64)}  # a point mass: u and v are exact
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    g = torch.Generator().manual_seed(4)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.8 + 0.15
    r = torch.where(torch.arange(6) < 2, t, t * torch.rand(6, generator=g, dtype=torch.float64))
    guidance = torch.tensor([[3.0, 0.0, 1.0]] * 2 + [[6.0, 0.2, 0.8]] * 4, dtype=torch.float64)
    draw = MeanFlowDraw(t, r, {"x": torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64)}, torch.arange(6) < 1,
                        guidance)  # fmt: skip
    truth = GaussianAverageVelocity(mu=0.7, s=0.0)
    out, _ = loss_fn(class_dropout=0.1, **IMF)(WithVelocityHead(truth), x, y, draw=draw)
    assert out.total.item() < 1e-24 and out.terms["meanflow_x_v"].item() < 1e-24
    # a wrong head: its loss is not 0; with the target's own tangent the u loss still is (the head is separate)
    target_tangent = {**IMF, "tangent": "target"}
    wrong, _ = loss_fn(class_dropout=0.1, **target_tangent)(WithVelocityHead(truth, 0.1), x, y, draw=draw)
    assert wrong.terms["meanflow_x_v"].item() > 1e-3 and wrong.terms["meanflow_x"].item() < 1e-24

"""The MeanFlow objective in float64: the JVP target, r = t, a closed-form average velocity, guidance, weights."""

import math

import pytest
import torch
from torch import nn

from repflow.flow.denoiser import NetworkDenoiser
from repflow.flow.loss import FlowDraw, FlowMatching
from repflow.flow.meanflow import MeanFlowDraw, MeanFlowLoss, adaptive_weight
from repflow.flow.path import LinearPath
from repflow.flow.solvers import mean_jumps
from repflow.flow.timesteps import TimeSampler, time_grid
from repflow.models import SiTConfig, build_model


def tiny_network(interval: bool = True, classes: int = 3, **kw) -> nn.Module:
    """A float64 SiT with every weight random (the zero-initialised heads would make u = 0 and hide errors);
    ``kw``: more of its config (iMF's guidance_input, velocity_head)."""
    torch.manual_seed(0)
    cfg = SiTConfig(arch="SiT-T/4", depth=2, hidden_size=32, num_heads=2, patch_size=4, input_size=8,
                    in_channels=2, num_classes=classes, interval_input=interval, **kw)  # fmt: skip
    net = build_model(cfg).double()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return net


def loss_fn(**kw) -> MeanFlowLoss:
    return MeanFlowLoss(path=LinearPath(), time_sampler=TimeSampler("logit_normal", -0.4, 1.0), null_label=3, **kw)


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = {"x": torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64)}
    return x, torch.randint(0, 3, (n,), generator=g)


def test_jvp_total_derivative_equals_a_float64_central_difference():
    net, (clean, y), mf = tiny_network(), batch(), loss_fn()
    g = torch.Generator().manual_seed(2)
    t = torch.rand(6, generator=g, dtype=torch.float64) * 0.8 + 0.1
    r = t * torch.rand(6, generator=g, dtype=torch.float64)
    z = {"x": clean["x"] + 0.3}
    tangent = {"x": torch.randn(6, 2, 8, 8, generator=g, dtype=torch.float64)}
    u, du_dt, _ = mf.average_velocity(net, z, t, r, y, tangent)

    def u_at(step: float) -> torch.Tensor:  # r held fixed, so the interval h = t - r moves with t
        with torch.no_grad():
            return net({"x": z["x"] + step * tangent["x"]}, t + step, y, h=t + step - r).pred["x"]

    central = (u_at(1e-6) - u_at(-1e-6)) / 2e-6
    scale = du_dt["x"].abs().max().item()
    assert scale > 0.1
    assert (du_dt["x"] - central).abs().max().item() < 1e-7 * scale
    assert torch.allclose(u["x"].detach(), u_at(0.0), rtol=0, atol=1e-12)  # the math attention path: rounding
    assert u["x"].requires_grad and not du_dt["x"].requires_grad  # the target carries no gradient
    # MF-RAE's finite difference agrees to second order in its step
    _, fd, _ = loss_fn(derivative="finite_difference", fd_step=1e-4).average_velocity(net, z, t, r, y, tangent)
    assert (fd["x"] - du_dt["x"]).abs().max().item() < 1e-6 * scale


def test_r_equal_t_is_exactly_flow_matching():
    net, (clean, y), mf = tiny_network(), batch(), loss_fn(r_equals_t=1.0, norm_p=0.0, class_dropout=0.5)
    draw = mf.draw({"x": (2, 8, 8)}, 6, torch.Generator().manual_seed(3))
    assert torch.equal(draw.r, draw.t)
    out, _ = mf(net, clean, y, draw=draw)
    fm = FlowMatching(path=LinearPath(), time_sampler=mf.time_sampler, class_dropout=0.5, null_label=3)
    ref, _ = fm(net, clean, y, draw=FlowDraw(draw.t, {k: e.double() for k, e in draw.eps.items()}, draw.drop))
    values = clean["x"][0].numel()  # the official loss sums over a sample's values; flow matching averages
    assert out.total.item() == pytest.approx(values * ref.total.item(), rel=1e-12)
    grads = [torch.autograd.grad(loss, net.out_x.weight)[0] for loss in (out.total, values * ref.total)]
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-12)


class GaussianAverageVelocity(nn.Module):
    """The exact average velocity of data N(mu, s^2 I) on the linear path: z_t = m_t + sigma_t xi with m_t =
    (1 - t) mu, sigma_t = sqrt((1 - t)^2 s^2 + t^2), so the flow maps z_t to z_r = m_r + sigma_r / sigma_t (z_t -
    m_t) and u = (z_t - z_r) / (t - r); at h = 0 the instantaneous velocity."""

    def __init__(self, mu: float, s: float):
        super().__init__()
        self.mu, self.s = mu, s
        self.anchor = nn.Parameter(torch.zeros(1, dtype=torch.float64))  # a device and dtype for the denoiser

    def sigma(self, t):
        return ((1 - t) ** 2 * self.s**2 + t**2).sqrt()

    def forward(self, states, t, y=None, return_hidden=(), h=None):
        z = states["x"]
        h = torch.zeros_like(t) if h is None else h
        t_, h_ = t.view(-1, 1, 1, 1), h.view(-1, 1, 1, 1)
        r_ = t_ - h_
        m_t, m_r = (1 - t_) * self.mu, (1 - r_) * self.mu
        d_sigma = (t_ - (1 - t_) * self.s**2) / self.sigma(t_)  # d sigma_t / dt
        instant = -self.mu + d_sigma / self.sigma(t_) * (z - m_t)
        z_r = m_r + self.sigma(r_) / self.sigma(t_) * (z - m_t)
        safe = torch.where(h_ > 0, h_, torch.ones_like(h_))
        u = torch.where(h_ > 0, (z - z_r) / safe, instant)
        return type("Out", (), {"pred": {"x": u + 0 * self.anchor}, "hidden": {}, "shallow": {}})()


def test_gaussian_data_true_average_velocity_is_a_fixed_point_and_one_step_is_exact():
    truth, mf = GaussianAverageVelocity(mu=0.7, s=0.5), loss_fn()
    g = torch.Generator().manual_seed(4)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.9 + 0.05
    r = t * torch.rand(8, generator=g, dtype=torch.float64)
    z = {"x": torch.randn(8, 1, 2, 2, generator=g, dtype=torch.float64)}
    v = truth(z, t).pred  # the marginal velocity: along it the MeanFlow identity holds exactly
    u, du_dt, _ = mf.average_velocity(truth, z, t, r, None, v)
    target = v["x"] - (t - r).view(-1, 1, 1, 1) * du_dt["x"]
    assert (target - u["x"]).abs().max().item() < 1e-12

    # a point mass (s = 0): the conditional velocity is the marginal one, so the training loss itself is 0
    point, x = GaussianAverageVelocity(mu=0.7, s=0.0), {"x": torch.full((8, 1, 2, 2), 0.7, dtype=torch.float64)}
    d = mf.draw({"x": (1, 2, 2)}, 8, g)
    draw = MeanFlowDraw(d.t.double(), d.r.double(), {"x": d.eps["x"].double()}, d.drop)
    assert (draw.r < draw.t).any()
    out, _ = loss_fn(norm_p=0.0)(point, x, None, draw=draw)
    assert out.total.item() < 1e-24
    wrong, _ = loss_fn(norm_p=0.0)(GaussianAverageVelocity(0.6, 0.0), x, None, draw=draw)  # ... a wrong u's is not
    assert wrong.total.item() > 1e-3

    # sampling through the denoiser: 1, 2 or 4 jumps map the noise eps to mu + s eps exactly
    den = NetworkDenoiser(network=truth, path=LinearPath(), prediction="v", shapes={"x": (1, 2, 2)},
                          decoder=lambda s: s["x"], interval_input=True)  # fmt: skip
    eps = torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64)
    for steps in (1, 2, 4):
        sol = mean_jumps(lambda s, t_, r_: den.average_velocity(s, t_, r_, None), {"x": eps}, time_grid(steps))
        assert sol.nfe == steps
        assert (sol.state["x"] - (0.7 + 0.5 * eps)).abs().max().item() < 1e-12


def test_guidance_in_the_target_against_a_hand_computation():
    net, (clean, y), mf = tiny_network(), batch(), loss_fn(omega=0.6, kappa=0.3, guidance_interval=(0.2, 0.8))
    t = torch.tensor([0.1, 0.2, 0.5, 0.8, 0.9, 0.5], dtype=torch.float64)
    drop = torch.tensor([False, False, False, False, False, True])
    z = {"x": clean["x"] * 0.5}
    v = {"x": torch.randn_like(z["x"])}
    got = mf.guided_velocity(net, z, v, t, y, drop)["x"]
    for i in range(6):
        zi, ti = z["x"][i : i + 1], t[i : i + 1]
        labels = (y[i : i + 1], torch.tensor([3]))
        cond, null = (net({"x": zi}, ti, lbl, h=torch.zeros_like(ti)).pred["x"][0] for lbl in labels)
        inside = 0.2 <= t[i] <= 0.8 and not drop[i]
        want = 0.6 * v["x"][i] + 0.3 * cond + 0.1 * null if inside else v["x"][i]
        assert torch.allclose(got[i], want, atol=1e-12), i
    # kappa = 0 is omega v + (1 - omega) u(null), with one network call
    only = loss_fn(omega=2.0).guided_velocity(net, z, v, t, y, drop)["x"]
    null = net(z, t, torch.full_like(y, 3)).pred["x"]
    want = torch.where(drop.view(-1, 1, 1, 1), v["x"], 2.0 * v["x"] - null)
    assert torch.allclose(only, want, atol=1e-12)
    # the loss uses it: with r = t the target is v_g itself
    draw = MeanFlowDraw(t, t.clone(), {"x": torch.randn_like(clean["x"])}, drop)
    mf0 = loss_fn(omega=0.6, kappa=0.3, guidance_interval=(0.2, 0.8), norm_p=0.0, class_dropout=0.1)
    out, sample = mf0(net, clean, y, draw=draw)
    z_t = {"x": (1 - t.view(-1, 1, 1, 1)) * clean["x"] + t.view(-1, 1, 1, 1) * draw.eps["x"]}
    v_g = mf0.guided_velocity(net, z_t, {"x": draw.eps["x"] - clean["x"]}, t, y, drop)["x"]
    assert out.total.item() == pytest.approx(((sample.output.pred["x"] - v_g) ** 2).sum().item() / 6, rel=1e-12)


def test_adaptive_weight_value_and_gradient():
    loss = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64, requires_grad=True)
    for p, c in ((1.0, 0.01), (0.5, 0.2), (0.0, 0.01)):
        w = adaptive_weight(loss, p, c)
        expect = [v / (v + c) ** p for v in (0.0, 0.5, 3.0)]
        assert w.tolist() == pytest.approx(expect, rel=1e-14)
        (grad,) = torch.autograd.grad(w.sum(), loss)
        assert grad.tolist() == pytest.approx([1 / (v + c) ** p for v in (0.0, 0.5, 3.0)], rel=1e-14)  # sg(weight)


def test_draw_pairs_and_label_drops_follow_the_official_counts():
    mf = loss_fn(r_equals_t=0.75, class_dropout=0.3)
    d = mf.draw({"x": (1, 2, 2), "cls": (5,)}, 64, torch.Generator().manual_seed(5))
    assert (d.r <= d.t).all() and int((d.r == d.t).sum()) == 48  # int(64 * 0.75), as data_proportion
    assert d.drop.any() and not (d.drop & (d.r != d.t)).any()  # dropped labels lie among the r = t samples
    assert math.isclose(d.chunk(1, 16).t[0].item(), d.t[16].item())


def imf_draw(n: int = 6, seed: int = 6, equal: int = 2, dropped: int = 1) -> MeanFlowDraw:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.8 + 0.15
    r = torch.where(torch.arange(n) < equal, t, t * torch.rand(n, generator=g, dtype=torch.float64))
    eps = {"x": torch.randn(n, 2, 8, 8, generator=g, dtype=torch.float64)}
    return MeanFlowDraw(t, r, eps, torch.arange(n) < dropped)


def test_imf_v_loss_with_the_networks_own_tangent_against_a_hand_computation():
    """iMF (imf.py forward): tangent v_c = u(z_t, t, t | c) with the label kept, V = u + (t - r) sg(du/dt),
    loss sum (V - sg(v_g))^2 with the adaptive weight; v_g = v + (1 - 1/w)(v_c - v_u) is omega 1, kappa 1 - 1/w."""
    net, (clean, y), draw, w = tiny_network(), batch(), imf_draw(), 4.0
    mf = loss_fn(omega=1.0, kappa=1 - 1 / w, class_dropout=0.1, tangent="model", norm_p=0.5)
    out, sample = mf(net, clean, y, draw=draw)
    t, r, view = draw.t, draw.r, (-1, 1, 1, 1)
    z = (1 - t.view(view)) * clean["x"] + t.view(view) * draw.eps["x"]
    with torch.no_grad():
        v_c, v_u = (net({"x": z}, t, labels, h=torch.zeros_like(t)).pred["x"] for labels in (y, torch.full_like(y, 3)))
    v_t = draw.eps["x"] - clean["x"]
    v_g = torch.where(draw.drop.view(view), v_t, v_t + (1 - 1 / w) * (v_c - v_u))
    y_in = torch.where(draw.drop, 3, y)

    def u_at(step: float) -> torch.Tensor:  # r fixed, (z, t) moved along (v_c, 1)
        with torch.no_grad():
            return net({"x": z + step * v_c}, t + step, y_in, h=t + step - r).pred["x"]

    du_dt = (u_at(1e-6) - u_at(-1e-6)) / 2e-6
    compound = sample.output.pred["x"] + (t - r).view(view) * du_dt  # iMF's V, gradient through u only
    error = ((compound - v_g) ** 2).sum(dim=(1, 2, 3))
    want = (error / (error.detach() + 0.01) ** 0.5).mean()
    assert out.total.item() == pytest.approx(want.item(), rel=1e-8)
    grads = [torch.autograd.grad(loss, net.out_x.weight, retain_graph=True)[0] for loss in (out.total, want)]
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-10)
    # MeanFlow's tangent (v_g) gives another loss on the same draw: the option is what changes the target
    other, _ = loss_fn(omega=1.0, kappa=1 - 1 / w, class_dropout=0.1, norm_p=0.5)(net, clean, y, draw=draw)
    assert abs(other.total.item() - out.total.item()) > 1e-3 * out.total.item()


def test_imf_tangent_without_guidance_and_the_true_average_velocity_is_a_fixed_point():
    net, (clean, y), draw = tiny_network(), batch(), imf_draw(dropped=0)
    _, tangent = loss_fn(tangent="model").target_velocities(net, {"x": clean["x"]}, {"x": clean["x"]}, draw.t, y,
                                                            draw.drop)  # fmt: skip
    assert torch.equal(tangent["x"], net({"x": clean["x"]}, draw.t, y).pred["x"])
    # a point mass: the network's own velocity is the true one, so the iMF loss is 0 at the true u ...
    point, x = GaussianAverageVelocity(mu=0.7, s=0.0), {"x": torch.full((6, 2, 8, 8), 0.7, dtype=torch.float64)}
    out, _ = loss_fn(tangent="model", velocity_weight=1.0)(point, x, None, draw=draw)
    assert out.total.item() < 1e-24
    wrong, _ = loss_fn(tangent="model")(GaussianAverageVelocity(0.6, 0.0), x, None, draw=draw)  # ... not at a wrong u
    assert wrong.total.item() > 1e-3


def test_imf_velocity_loss_is_the_networks_h_zero_output_against_the_guided_velocity():
    net, (clean, y), draw = tiny_network(), batch(), imf_draw(equal=6)  # r = t everywhere
    mf = loss_fn(omega=1.0, kappa=0.5, class_dropout=0.1, velocity_weight=0.5, tangent="model")
    out, _ = mf(net, clean, y, draw=draw)
    # at r = t the average velocity is the h = 0 output and its target v_g: both terms agree exactly
    assert out.terms["meanflow_x_v"].item() == pytest.approx(out.terms["meanflow_x"].item(), rel=1e-12)
    assert out.total.item() == pytest.approx(1.5 * out.terms["meanflow_x"].item(), rel=1e-12)
    draw = imf_draw()  # r < t on most samples: the term is computed at h = 0 with the dropped labels
    out, _ = mf(net, clean, y, draw=draw)
    z = (1 - draw.t.view(-1, 1, 1, 1)) * clean["x"] + draw.t.view(-1, 1, 1, 1) * draw.eps["x"]
    v_g = mf.guided_velocity(net, {"x": z}, {"x": draw.eps["x"] - clean["x"]}, draw.t, y, draw.drop)["x"]
    pred = net({"x": z}, draw.t, torch.where(draw.drop, 3, y), h=torch.zeros_like(draw.t)).pred["x"]
    error = ((pred - v_g) ** 2).sum(dim=(1, 2, 3))
    want = (error / (error.detach() + 0.01)).mean()
    assert out.terms["meanflow_x_v"].item() == pytest.approx(want.item(), rel=1e-12)
    assert out.total.item() == pytest.approx(out.terms["meanflow_x"].item() + 0.5 * want.item(), rel=1e-12)
    assert out.terms["meanflow_x_v"].requires_grad


class XField(nn.Module):
    """pMF's field x(z_t, r, t) = z_t - t u(z_t, r, t) of a network whose u is exact (t >= min_denominator)."""

    def __init__(self, truth: nn.Module):
        super().__init__()
        self.truth = truth

    def forward(self, states, t, y=None, return_hidden=(), h=None):
        u = self.truth(states, t, y, h=h).pred["x"]
        x = states["x"] - t.view(-1, 1, 1, 1).clamp_min(0.05) * u
        return type("Out", (), {"pred": {"x": x}, "hidden": {}, "shallow": {}})()


class PointMassX(nn.Module):
    """Data at mu: every path is straight, so x(z_t, r, t) = z_t - t (eps - mu) = mu for every (r, t)."""

    def __init__(self, mu: float):
        super().__init__()
        self.mu = mu

    def forward(self, states, t, y=None, return_hidden=(), h=None):
        return type("Out", (), {"pred": {"x": torch.full_like(states["x"], self.mu)}, "hidden": {}})()


def test_pmf_x_prediction_true_field_is_a_fixed_point_and_one_step_is_exact():
    truth, mf = XField(GaussianAverageVelocity(mu=0.7, s=0.5)), loss_fn(prediction="x")
    g = torch.Generator().manual_seed(7)
    t = torch.rand(8, generator=g, dtype=torch.float64) * 0.85 + 0.1
    r = t * torch.rand(8, generator=g, dtype=torch.float64)
    z = {"x": torch.randn(8, 1, 2, 2, generator=g, dtype=torch.float64)}
    v = truth.truth(z, t).pred  # the marginal velocity
    # the JVP runs through u = (z - x) / t, whose own t- and z-dependence the total derivative must carry
    u, du_dt, _ = mf.average_velocity(truth, z, t, r, None, v)
    assert (u["x"] - truth.truth(z, t, h=t - r).pred["x"]).abs().max().item() < 1e-12
    target = v["x"] - (t - r).view(-1, 1, 1, 1) * du_dt["x"]
    assert (target - u["x"]).abs().max().item() < 1e-12
    # a point mass at mu: the true x-field is mu itself; the loss is 0 there (also on r = t pairs with t below
    # 0.05, where pMF divides by 0.05 both the network's and the true velocity), and not at a wrong mu
    x = {"x": torch.full((8, 1, 2, 2), 0.7, dtype=torch.float64)}
    draw = MeanFlowDraw(t, r, {"x": torch.randn(8, 1, 2, 2, generator=g, dtype=torch.float64)}, torch.zeros(8) > 0)
    t_low = torch.full((4,), 0.02, dtype=torch.float64)
    low = MeanFlowDraw(t_low, t_low.clone(), {"x": torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)},
                       torch.zeros(4) > 0)  # fmt: skip
    for mu, d, n in ((0.7, draw, 8), (0.7, low, 4)):
        for kw in ({}, {"tangent": "model", "velocity_weight": 1.0}):
            out, _ = loss_fn(prediction="x", norm_p=0.0, **kw)(PointMassX(mu), {"x": x["x"][:n]}, None, draw=d)
            assert out.total.item() < 1e-24
    wrong, _ = loss_fn(prediction="x", norm_p=0.0)(PointMassX(0.6), x, None, draw=draw)
    assert wrong.total.item() > 1e-3
    # at t < 0.05 the velocity is pMF's (z_t - x) / 0.05, not eps - x
    z_low = (1 - 0.02) * x["x"][:4] + 0.02 * low.eps["x"]
    got = mf.as_average_velocity({"x": x["x"][:4]}, {"x": z_low}, low.t)["x"]
    assert torch.allclose(got, (z_low - 0.7) / 0.05, rtol=0, atol=1e-14)
    # sampling converts the same way: 1 and 2 jumps of an x-predicting network map eps to mu + s eps exactly
    den = NetworkDenoiser(network=truth, path=LinearPath(), prediction="x", shapes={"x": (1, 2, 2)},
                          decoder=lambda s: s["x"], interval_input=True, min_denominator=0.05)  # fmt: skip
    eps = torch.randn(5, 1, 2, 2, generator=g, dtype=torch.float64)
    for steps in (1, 2):
        sol = mean_jumps(lambda s, t_, r_: den.average_velocity(s, t_, r_, None), {"x": eps}, time_grid(steps))
        assert sol.nfe == steps and (sol.state["x"] - (0.7 + 0.5 * eps)).abs().max().item() < 1e-12


def test_pmf_needs_the_linear_path():
    from repflow.flow.path import build_path

    with pytest.raises(ValueError, match="x on the linear path"):
        MeanFlowLoss(path=build_path("cosine"), time_sampler=TimeSampler(), prediction="x")

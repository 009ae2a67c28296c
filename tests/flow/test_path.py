import pytest
import torch

from repflow.flow.path import KINDS, CosinePath, LinearPath, build_path

PATHS = [LinearPath(), CosinePath()]


@pytest.fixture(autouse=True)
def _float64():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_time_convention_t0_is_data_t1_is_noise(path):
    x, eps = torch.randn(4, 3), torch.randn(4, 3)
    assert torch.allclose(path.interpolate(x, eps, torch.zeros(4)), x, atol=1e-12)
    assert torch.allclose(path.interpolate(x, eps, torch.ones(4)), eps, atol=1e-12)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_velocity_is_the_time_derivative_of_x_t(path):
    x, eps = torch.randn(5, 2, 3), torch.randn(5, 2, 3)
    t = torch.rand(5, requires_grad=True)
    x_t = path.interpolate(x, eps, t)
    # d x_t / dt per sample: one backward per output coordinate (tiny tensors, float64)
    grads = torch.stack(
        [torch.autograd.grad(x_t.reshape(5, -1)[:, j].sum(), t, retain_graph=True)[0] for j in range(6)], 1
    )
    v = path.velocity(x, eps, t.detach()).reshape(5, -1)
    assert torch.allclose(grads, v, atol=1e-10)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_coefficients_match_their_derivatives(path):
    t = torch.linspace(0.01, 0.99, 50, requires_grad=True)
    a, s, da, ds = path.coefficients(t)
    assert torch.allclose(torch.autograd.grad(a.sum(), t, retain_graph=True)[0], da, atol=1e-10)
    assert torch.allclose(torch.autograd.grad(s.sum(), t)[0], ds, atol=1e-10)


def test_linear_path_formulas():
    x, eps, t = torch.randn(3, 2), torch.randn(3, 2), torch.rand(3)
    path = LinearPath()
    assert torch.allclose(path.interpolate(x, eps, t), (1 - t)[:, None] * x + t[:, None] * eps)
    assert torch.allclose(path.velocity(x, eps, t), eps - x)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
@pytest.mark.parametrize("src", KINDS)
@pytest.mark.parametrize("dst", KINDS)
def test_conversions_recover_every_quantity(path, src, dst):
    x, eps = torch.randn(6, 4), torch.randn(6, 4)
    t = torch.rand(6) * 0.9 + 0.05
    x_t = path.interpolate(x, eps, t)
    truth = {"x": x, "eps": eps, "v": path.velocity(x, eps, t)}
    assert torch.allclose(path.convert(truth[src], src, dst, x_t, t), truth[dst], atol=1e-10)
    # and back again
    there = path.convert(truth[src], src, dst, x_t, t)
    assert torch.allclose(path.convert(there, dst, src, x_t, t), truth[src], atol=1e-9)


def test_x_to_v_clips_the_denominator_like_jit():
    path = LinearPath()
    x_pred, x_t = torch.randn(2, 3), torch.randn(2, 3)
    t = torch.tensor([0.01, 0.5])
    v = path.convert(x_pred, "x", "v", x_t, t, min_denominator=0.05)
    expected = (x_t - x_pred) / torch.clamp(t, min=0.05)[:, None]
    assert torch.allclose(v, expected)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: p.name)
def test_score_from_velocity_is_minus_eps_over_sigma(path):
    x, eps, t = torch.randn(4, 3), torch.randn(4, 3), torch.rand(4) * 0.9 + 0.05
    x_t, v = path.interpolate(x, eps, t), path.velocity(x, eps, t)
    assert torch.allclose(path.score_from_velocity(v, x_t, t), -eps / path.coefficients(t)[1][:, None], atol=1e-9)


def test_ratio_inversion():
    for path in PATHS:
        t = torch.rand(10) * 0.98 + 0.01
        a, s, _, _ = path.coefficients(t)
        assert torch.allclose(path.t_from_ratio(s / a), t, atol=1e-10)


def test_unknown_path_and_kind_are_clear():
    with pytest.raises(ValueError, match="unknown path 'vp'"):
        build_path("vp")
    with pytest.raises(ValueError, match="unknown prediction kind"):
        LinearPath().convert(torch.zeros(1, 1), "score", "v", torch.zeros(1, 1), torch.ones(1))

"""Solvers against a problem with a known answer: Gaussian data.

Data x ~ N(mu, s^2) (per coordinate), noise eps ~ N(0, 1). Then x_t ~ N(m_t, std_t^2) with m_t = alpha_t mu and
std_t^2 = alpha_t^2 s^2 + sigma_t^2 (linear path: (1 - t)^2 s^2 + t^2), the exact probability-flow velocity is
    v(x, t) = m_t' + (std_t' / std_t) (x - m_t),
and the flow maps noise z at t = 1 to mu + s z at t = 0.
"""

import math

import pytest
import torch

from repflow.flow.path import CosinePath, LinearPath
from repflow.flow.solvers import dopri5, dpm_solver_2m, euler, euler_maruyama, heun, sde_grid
from repflow.flow.timesteps import time_grid

MU, S = 0.7, 0.3


def gaussian_flow(path, mu=MU, s=S):
    """The exact velocity of N(mu, s^2) data on any path: x_t ~ N(alpha_t mu, alpha_t^2 s^2 + sigma_t^2), and
    the flow moves x_t by its standardised offset. ``s = 0`` is a single data point."""

    def velocity(state, t, t_step=None):
        a, sg, da, dsg = (c.item() for c in path.coefficients(torch.tensor(float(t), dtype=torch.float64)))
        std = math.sqrt(a * a * s * s + sg * sg)
        d_std = (a * da * s * s + sg * dsg) / std
        return {"x": da * mu + d_std / std * (state["x"] - a * mu)}

    return velocity


gaussian_velocity = gaussian_flow(LinearPath())


def exact(z):
    return MU + S * z


@pytest.fixture
def z():
    return torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _err(sol, z):
    return (sol.state["x"] - exact(z)).abs().max().item()


def test_euler_converges_first_order(z):
    errs = [_err(euler(gaussian_velocity, {"x": z}, time_grid(n)), z) for n in (20, 40, 80)]
    assert errs[0] / errs[1] == pytest.approx(2, rel=0.15)
    assert errs[1] / errs[2] == pytest.approx(2, rel=0.1)


def test_heun_converges_second_order(z):
    errs = [_err(heun(gaussian_velocity, {"x": z}, time_grid(n)), z) for n in (10, 20, 40, 80)]
    ratios = [a / b for a, b in zip(errs, errs[1:], strict=False)]
    assert all(r == pytest.approx(4, rel=0.2) for r in ratios[1:]), ratios
    assert errs[-1] < 1e-3


def test_heun_nfe_skips_correction_on_last_step(z):
    calls = []

    def counting(state, t, t_step):
        calls.append(t)
        return gaussian_velocity(state, t)

    sol = heun(counting, {"x": z}, time_grid(10))
    assert sol.nfe == 19 == len(calls)
    assert 0.0 not in calls  # the velocity is never evaluated at t = 0


def test_dopri5_is_accurate(z):
    sol = dopri5(gaussian_velocity, {"x": z}, rtol=1e-7, atol=1e-7)
    assert _err(sol, z) < 1e-5
    assert sol.nfe > 0


def test_solvers_integrate_several_streams_jointly(z):
    state = {"x": z, "cls": z[:, :2].clone()}

    def vel(s, t, t_step):
        return {
            "x": gaussian_velocity({"x": s["x"]}, t)["x"],
            "cls": gaussian_velocity({"x": s["cls"]}, t)["x"],
        }

    sol = heun(vel, state, time_grid(40))
    assert torch.allclose(sol.state["cls"], sol.state["x"][:, :2])


def test_sde_final_step_is_noise_free_and_nfe(z):
    """Every stochastic step draws noise once; the last step (t_last -> 0) draws none."""
    draws = []

    def noise(state):
        draws.append(1)
        return {k: torch.zeros_like(v) for k, v in state.items()}

    path = LinearPath()
    sol = euler_maruyama(gaussian_velocity, {"x": z}, sde_grid(25, 0.04), path, noise)
    assert len(draws) == 24 and sol.nfe == 25

    # the same run with noise: the result differs from the noise-free run only through the first 24 draws,
    # i.e. re-running with identical draws reproduces the sample exactly (no hidden randomness at the end)
    g = torch.Generator().manual_seed(1)
    table = [torch.randn(z.shape, generator=g, dtype=z.dtype) for _ in range(24)]
    it1, it2 = iter(table), iter(table)
    a = euler_maruyama(gaussian_velocity, {"x": z}, sde_grid(25), path, lambda s: {"x": next(it1)})
    b = euler_maruyama(gaussian_velocity, {"x": z}, sde_grid(25), path, lambda s: {"x": next(it2)})
    assert torch.equal(a.state["x"], b.state["x"])


def test_sde_samples_the_right_distribution():
    n = 20000
    z = torch.randn(n, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    sol = euler_maruyama(
        gaussian_velocity,
        {"x": z},
        sde_grid(200),
        LinearPath(),
        lambda s: {"x": torch.randn(s["x"].shape, generator=g, dtype=torch.float64)},
    )
    x = sol.state["x"]
    assert x.mean().item() == pytest.approx(MU, abs=0.01)
    assert x.std().item() == pytest.approx(S, abs=0.02)


def test_steps_must_be_positive(z):
    with pytest.raises(ValueError, match="at least"):
        euler(gaussian_velocity, {"x": z}, [1.0])
    with pytest.raises(ValueError, match="at least"):
        time_grid(0)
    with pytest.raises(ValueError, match="at least 2"):
        sde_grid(1)


def test_heun_decides_per_step_with_the_step_start_time(z):
    """Both stages of a Heun step see the step's start time (whether to guide is decided once per step)."""
    seen = []

    def recording(state, t, t_step):
        seen.append((t, t_step))
        return gaussian_velocity(state, t)

    grid = time_grid(4)
    heun(recording, {"x": z}, grid)
    assert seen[:2] == [(grid[0], grid[0]), (grid[1], grid[0])]  # predictor at t_cur, corrector at t_next
    assert seen[2:4] == [(grid[1], grid[1]), (grid[2], grid[1])]


def test_shifted_time_grid_integrates_the_same_flow(z):
    """A shifted grid is another discretisation of the same ODE: it still converges to the exact map."""
    for shift in (1.0, 3.0):
        grid = time_grid(200, shift)
        assert grid[0] == 1.0 and grid[-1] == 0.0
        assert _err(heun(gaussian_velocity, {"x": z}, grid), z) < 2e-3


# -- DPM-Solver++(2M) --------------------------------------------------------------------------------------------


def flow_map(path, x, t_from, t_to, mu=MU, s=S):
    """Where the exact flow takes x from ``t_from`` to ``t_to``: the same standardised offset."""

    def mean_std(t):
        a, sg, _, _ = (c.item() for c in path.coefficients(torch.tensor(float(t), dtype=torch.float64)))
        return a * mu, math.sqrt(a * a * s * s + sg * sg)

    (m_from, std_from), (m_to, std_to) = mean_std(t_from), mean_std(t_to)
    return m_to + std_to / std_from * (x - m_from)


PATH_KINDS = [LinearPath(), CosinePath()]


@pytest.mark.parametrize("path", PATH_KINDS, ids=lambda p: p.name)
def test_dpm_solver_2m_is_second_order_in_lambda(z, path):
    """On a grid uniform in lambda = log(alpha / sigma) (from t = 0.98 to 0.02) halving the step divides the error
    by 4, Euler's by 2. (The step-ratio term of the multistep formula is pinned by the comparison with diffusers:
    on smooth grids a wrong ratio telescopes and keeps the order.)"""
    a, b = 0.98, 0.02
    lam = [math.log(c[0] / c[1]) for c in (path.coefficients(torch.tensor(t, dtype=torch.float64)) for t in (a, b))]

    def grid(n):  # t_from_ratio(sigma / alpha) inverts lambda
        inner = [lam[0] + (lam[1] - lam[0]) * i / n for i in range(1, n)]
        return [a, *(path.t_from_ratio(torch.tensor(math.exp(-v))).item() for v in inner), b]

    x_a, x_b = flow_map(path, z, 1.0, a), flow_map(path, z, 1.0, b)
    err = lambda sol: (sol.state["x"] - x_b).abs().max().item()  # noqa: E731
    v = gaussian_flow(path)
    dpm = [err(dpm_solver_2m(v, {"x": x_a}, grid(n), path)) for n in (20, 40, 80)]
    eul = [err(euler(v, {"x": x_a}, grid(n))) for n in (20, 40, 80)]
    assert dpm[1] / dpm[2] == pytest.approx(4, rel=0.1), dpm
    assert eul[1] / eul[2] == pytest.approx(2, rel=0.1), eul
    assert dpm[2] < 1e-3


@pytest.mark.parametrize("path", PATH_KINDS, ids=lambda p: p.name)
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_dpm_solver_2m_on_the_sampling_grid(z, path, shift):
    """On repflow's grid (uniform in t from 1 to 0, shifted) the steps next to either end stay O(1) long in lambda
    however many there are, which costs a log factor: error ~ log(N) / N^2, an observed order of 1.6-1.8 at
    640 -> 1280 steps, against 1 for Euler."""
    v = gaussian_flow(path)
    err = lambda sol: (sol.state["x"] - (MU + S * z)).abs().max().item()  # noqa: E731
    dpm = [err(dpm_solver_2m(v, {"x": z}, time_grid(n, shift), path)) for n in (640, 1280)]
    eul = [err(euler(v, {"x": z}, time_grid(n, shift))) for n in (640, 1280)]
    assert 1.55 < math.log2(dpm[0] / dpm[1]) < 2.05, dpm
    assert math.log2(eul[0] / eul[1]) == pytest.approx(1, abs=0.05), eul
    assert dpm[1] < eul[1] / 8


@pytest.mark.parametrize("path", PATH_KINDS, ids=lambda p: p.name)
def test_dpm_solver_2m_is_exact_for_a_single_data_point(z, path):
    """With one data point the data prediction is constant and the solver exact in any number of steps; Euler
    is exact on the straight linear paths only."""
    v = gaussian_flow(path, s=0.0)
    for steps, shift in ((1, 1.0), (2, 1.0), (3, 3.0)):
        sol = dpm_solver_2m(v, {"x": z}, time_grid(steps, shift), path)
        assert (sol.state["x"] - MU).abs().max() < 1e-12
    curved = (euler(v, {"x": z}, time_grid(3)).state["x"] - MU).abs().max()
    assert curved > 1e-2 if path.name == "cosine" else curved < 1e-12


def test_dpm_solver_2m_evaluates_once_per_step_never_at_the_end(z):
    seen = []

    def recording(state, t, t_step):
        seen.append((t, t_step))
        return gaussian_velocity(state, t)

    grid = time_grid(7, 2.0)
    sol = dpm_solver_2m(recording, {"x": z}, grid, LinearPath())
    assert sol.nfe == 7 == len(seen) and seen == [(t, t) for t in grid[:-1]]
    rae = time_grid(6, 2.0, "rae")  # ends at t > 0: its last step is second order like the others
    assert dpm_solver_2m(recording, {"x": z}, rae, LinearPath()).nfe == 5


@pytest.mark.slow
def test_dpm_solver_2m_matches_diffusers(z):
    """diffusers' DPMSolverMultistepScheduler (DPM-Solver++, order 2, midpoint, flow sigmas, first order onto
    sigma = 0) stepped on the same grid gives the same samples, to its float32 arithmetic."""
    from repflow._compat import import_torchvision_if_present

    import_torchvision_if_present()  # diffusers imports torchvision
    scheduler_class = pytest.importorskip("diffusers").DPMSolverMultistepScheduler

    path, v = LinearPath(), gaussian_flow(LinearPath())
    for steps, shift in ((6, 1.0), (10, 3.0)):
        grid = time_grid(steps, shift)
        scheduler = scheduler_class(use_flow_sigmas=True, prediction_type="flow_prediction",
                                                algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                                lower_order_final=False, final_sigmas_type="zero")  # fmt: skip
        scheduler.set_timesteps(steps)
        scheduler.sigmas = torch.tensor(grid, dtype=torch.float64)  # their sigma is our t on the linear path
        x = z.clone()
        for i, timestep in enumerate(scheduler.timesteps):
            x = scheduler.step(v({"x": x}, grid[i])["x"], timestep, x, return_dict=False)[0]
        ours = dpm_solver_2m(v, {"x": z}, grid, path).state["x"]
        assert (x - ours).abs().max() < 1e-6

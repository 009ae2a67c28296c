"""Samplers as pure functions: integrate a velocity field over a time grid from noise (t = 1) to data (t = 0).

The state is a dict of tensors (the image ``x`` and, for REG, the class token ``cls``): every stream is
integrated jointly on the same grid with the same scheme. ``velocity(state, t, t_step)`` takes Python floats:
``t`` where the field is evaluated and ``t_step``, the start of the solver step the evaluation belongs to
(decisions taken once per step, such as whether to guide under ``sample.cfg_rule=step``, use it: a Heun
corrector at ``t_next`` is guided as its step at ``t_cur`` was, as in the official REPA/REG sampler). Grids
come from :func:`repflow.flow.timesteps.time_grid` (shift included). Every solver returns the final state and
the number of velocity evaluations (NFE).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .path import Path

State = dict[str, Tensor]
Velocity = Callable[[State, float, float], State]
NoiseFn = Callable[[State], State]


@dataclass
class Solution:
    state: State
    nfe: int


def _axpy(a: float, x: State, y: State) -> State:
    """y + a * x, stream by stream."""
    return {k: y[k] + a * x[k] for k in y}


def _check_grid(grid: Sequence[float], minimum: int = 1) -> list[float]:
    grid = [float(t) for t in grid]
    if len(grid) < minimum + 1:
        raise ValueError(f"the sampler needs at least {minimum} steps, got {len(grid) - 1}")
    return grid


def euler(velocity: Velocity, state: State, grid: Sequence[float]) -> Solution:
    grid = _check_grid(grid)
    for t_cur, t_next in zip(grid[:-1], grid[1:], strict=True):
        state = _axpy(t_next - t_cur, velocity(state, t_cur, t_cur), state)
    return Solution(state, len(grid) - 1)


def heun(velocity: Velocity, state: State, grid: Sequence[float]) -> Solution:
    """Heun's 2nd-order method; the last step is a plain Euler step (no evaluation at the final time)."""
    grid = _check_grid(grid)
    steps, nfe = len(grid) - 1, 0
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:], strict=True)):
        dt = t_next - t_cur
        d_cur = velocity(state, t_cur, t_cur)
        nfe += 1
        proposal = _axpy(dt, d_cur, state)
        if i < steps - 1:
            d_next = velocity(proposal, t_next, t_cur)
            nfe += 1
            state = {k: state[k] + dt * 0.5 * (d_cur[k] + d_next[k]) for k in state}
        else:
            state = proposal
    return Solution(state, nfe)


def sde_diffusion(t: float) -> float:
    """g(t)^2 of the reverse SDE: 2t (SiT/REPA/REG), vanishing at the data end."""
    return 2.0 * t


def sde_grid(steps: int, t_last: float = 0.04, shift: float = 1.0) -> list[float]:
    """The SDE's grid: ``steps`` points from 1 down to ``t_last`` (shifted like the training times), then 0."""
    from .timesteps import shift_time

    if steps < 2:
        raise ValueError(f"the SDE sampler needs at least 2 steps, got {steps}")
    grid = shift_time(torch.linspace(1.0, t_last, steps, dtype=torch.float64), shift)
    return grid.tolist() + [0.0]


def euler_maruyama(
    velocity: Velocity,
    state: State,
    grid: Sequence[float],
    path: Path,
    noise: NoiseFn,
    diffusion: Callable[[float], float] = sde_diffusion,
) -> Solution:
    """Reverse-time SDE with the same marginals as the flow: dx = [v - g^2/2 * score] dt + g dW.

    Stochastic Euler-Maruyama steps between the grid points down to ``grid[-2]``, then one noise-free mean step
    to ``grid[-1]`` (SPEC §1): the final sample carries no injected noise. NFE = len(grid) - 1.
    """
    grid = _check_grid(grid, minimum=2)

    def drift(s: State, t: float) -> State:
        v = velocity(s, t, t)
        g2 = diffusion(t)
        return {k: v[k] - 0.5 * g2 * path.score_from_velocity(v[k], s[k], t) for k in s}

    for t_cur, t_next in zip(grid[:-2], grid[1:-1], strict=True):
        dt = t_next - t_cur
        d = drift(state, t_cur)
        z = noise(state)
        g = diffusion(t_cur) ** 0.5
        state = {k: state[k] + dt * d[k] + g * abs(dt) ** 0.5 * z[k] for k in state}
    t_cur, t_next = grid[-2], grid[-1]
    state = _axpy(t_next - t_cur, drift(state, t_cur), state)  # mean step, no noise
    return Solution(state, len(grid) - 1)


def dopri5(
    velocity: Velocity, state: State, rtol: float = 1e-4, atol: float = 1e-4, t_start: float = 1.0, t_end: float = 0.0
) -> Solution:
    """Adaptive Dormand-Prince through torchdiffeq; NFE is whatever the step-size control needed."""
    from torchdiffeq import odeint

    keys = sorted(state)
    nfe = 0

    def func(t: Tensor, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        nonlocal nfe
        nfe += 1
        v = velocity(dict(zip(keys, y, strict=True)), float(t), float(t))
        return tuple(v[k] for k in keys)

    y0 = tuple(state[k] for k in keys)
    t = torch.tensor([t_start, t_end], dtype=torch.float64, device=y0[0].device)
    ys = odeint(func, y0, t, rtol=rtol, atol=atol, method="dopri5")
    return Solution({k: ys[i][-1] for i, k in enumerate(keys)}, nfe)


def _alpha_sigma_lambda(path: Path, t: float) -> tuple[float, float, float]:
    """``alpha_t``, ``sigma_t`` and the half log-SNR ``lambda_t = log(alpha_t / sigma_t)`` in float64:
    -inf where alpha vanishes (pure noise), +inf where sigma does (data)."""
    a, s, _, _ = (c.item() for c in path.coefficients(torch.tensor(float(t), dtype=torch.float64)))
    lam = math.inf if s == 0 else -math.inf if a == 0 else math.log(a) - math.log(s)
    return a, s, lam


def dpm_solver_2m(velocity: Velocity, state: State, grid: Sequence[float], path: Path) -> Solution:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2): the multistep second-order solver in data prediction.

    ``v = (d_sigma x_t - det x) / sigma`` makes the flow ODE linear in ``x_t`` given the data prediction ``x``
    (taken from the velocity through ``path.convert``, so any network, prediction and guidance), and its exact
    solution from s to t is, with ``lambda = log(alpha / sigma)`` and ``h = lambda_t - lambda_s``:
        x_t = (sigma_t / sigma_s) x_s + alpha_t int_{lambda_s}^{lambda_t} e^{lambda - lambda_t} x(lambda) dlambda.
    Each step takes ``x`` linear in lambda through the current and the previous prediction
    ``D = x_i + (x_i - x_{i-1}) h / (2 h_prev)``, so ``x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D``.
    First order (``D = x_i``) where there is no usable slope: the first step, the second (its predecessor
    started at lambda = -inf) and a last step onto t = 0 (h = inf: the result is the data prediction itself,
    as DPM-Solver++ and diffusers end); none costs the order, but on a grid uniform in t the steps next to
    either end stay O(1) long in lambda, so the error goes as log(N) / N^2 (tests/flow/test_solvers.py).
    One evaluation per step, never at the final time: NFE = steps.
    """
    grid = _check_grid(grid)
    prev_x, prev_h, nfe = None, math.inf, 0
    _, sigma_s, lam_s = _alpha_sigma_lambda(path, grid[0])
    for t_cur, t_next in zip(grid[:-1], grid[1:], strict=True):
        v = velocity(state, t_cur, t_cur)
        nfe += 1
        x = {k: path.convert(v[k], "v", "x", state[k], t_cur) for k in state}  # the data prediction
        alpha_t, sigma_t, lam_t = _alpha_sigma_lambda(path, t_next)
        h = lam_t - lam_s
        if prev_x is not None and math.isfinite(h) and math.isfinite(prev_h):
            c = h / (2 * prev_h)
            d = {k: x[k] + c * (x[k] - prev_x[k]) for k in x}
        else:
            d = x
        decay, gain = sigma_t / sigma_s, alpha_t * -math.expm1(-h)  # expm1: exact for small h; h = inf gives 1
        state = {k: decay * state[k] + gain * d[k] for k in state}
        prev_x, prev_h, sigma_s, lam_s = x, h, sigma_t, lam_t
    return Solution(state, nfe)

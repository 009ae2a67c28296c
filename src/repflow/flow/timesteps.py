"""Training-time distributions over t (t = 0 data, t = 1 noise) and the resolution shift."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .path import Path

TIME_KINDS = ("uniform", "logit_normal", "lognormal")


def shift_time(t: Tensor, shift: float) -> Tensor:
    """``t <- s t / (1 + (s - 1) t)``: s > 1 moves mass towards noise (SD3 / RAE); s = 1 is the identity."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


GRIDS = ("uniform", "rae")


def time_grid(steps: int, shift: float = 1.0, kind: str = "uniform") -> list[float]:
    """Sampling times from 1 (noise) towards 0, shifted like the training times (RAE: the dimension-dependent
    shift applies at sampling too), computed in float64.

    - ``uniform``: ``steps + 1`` points from 1 to 0, so ``steps`` solver steps ending at the data;
    - ``rae``: the official RAE sampler's grid, ``1 - linspace(0, 0.999, steps)``: ``steps`` points, so
      ``steps - 1`` solver steps, ending at t = shift(0.001) (0.0069 at RAE's shift of 6.93) without a last
      step to 0 (their ``ode`` passes these points to torchdiffeq's fixed-grid solvers).
    """
    if kind == "uniform":
        if steps < 1:
            raise ValueError(f"a time grid needs at least 1 step, got {steps}")
        grid = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    elif kind == "rae":
        if steps < 2:
            raise ValueError(f"the rae time grid needs at least 2 points, got {steps}")
        grid = 1 - torch.linspace(0.0, 0.999, steps, dtype=torch.float64)
    else:
        raise ValueError(f"unknown time grid {kind!r}; choose from {', '.join(GRIDS)}")
    return shift_time(grid, shift).tolist()


def dimension_shift(data_dim: int, base_dim: int = 4096) -> float:
    """RAE's dimension-dependent shift ``s = sqrt(m / base)``, m = tokens x channels of the data."""
    if data_dim <= 0 or base_dim <= 0:
        raise ValueError(f"dimension shift needs positive sizes, got data_dim={data_dim}, base={base_dim}")
    return math.sqrt(data_dim / base_dim)


@dataclass(frozen=True)
class TimeSampler:
    """Draws per-sample training times.

    - ``uniform``: t ~ U(0, 1) (SiT, REPA, REG default).
    - ``logit_normal``: t = sigmoid(mean + std n). JiT's (mu = -0.8, sigma = 0.8, clean = 1) is mean = +0.8
      here, because our t runs the other way.
    - ``lognormal``: REPA's option, sigma_t / alpha_t ~ LogNormal(mean, std) (EDM-style), mapped to t by the
      path; on the linear path it coincides with logit-normal.
    The shift is applied afterwards.
    """

    kind: str = "uniform"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    def __post_init__(self):
        if self.kind not in TIME_KINDS:
            raise ValueError(f"unknown time distribution {self.kind!r}; choose from {TIME_KINDS}")
        if self.shift <= 0:
            raise ValueError(f"time shift must be positive, got {self.shift}")

    def sample(self, n: int, path: Path, generator: torch.Generator | None = None, device=None) -> Tensor:
        device = device or (generator.device if generator is not None else "cpu")
        if self.kind == "uniform":
            t = torch.rand(n, generator=generator, device=device)
        else:
            z = self.mean + self.std * torch.randn(n, generator=generator, device=device)
            t = torch.sigmoid(z) if self.kind == "logit_normal" else path.t_from_ratio(z.exp())
        return shift_time(t, self.shift)

"""Classifier-free guidance with a time interval, as a closure around a conditional velocity.

``out = u + w (c - u)`` on the velocity of every stream (all channels: DiT's "first 3 channels" was a legacy
reproduction detail), with one scale per stream (REG guides its class token separately). Guidance is active
for ``lo <= t <= hi`` (t = 1 is noise: REPA's interval is (0, 0.7)); outside it, and when every scale is 1,
only the conditional branch is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor

from .solvers import State, Velocity

ConditionalVelocity = Callable[[State, float, Tensor | None], State]


def classifier_free(
    velocity: ConditionalVelocity,
    y: Tensor | None,
    null_label: int,
    scales: Mapping[str, float],
    interval: tuple[float, float] = (0.0, 1.0),
) -> Velocity:
    lo, hi = interval
    if lo > hi:
        raise ValueError(f"guidance interval must have lo <= hi, got {interval}")
    active = y is not None and any(w != 1.0 for w in scales.values())

    def guided(state: State, t: float) -> State:
        if not active or not (lo <= t <= hi):
            return velocity(state, t, y)
        doubled = {k: torch.cat([v, v]) for k, v in state.items()}  # one batched pass: cond then uncond
        out = velocity(doubled, t, torch.cat([y, torch.full_like(y, null_label)]))
        result = {}
        for k, v in out.items():
            cond, uncond = v.chunk(2)
            w = scales.get(k, 1.0)
            result[k] = uncond + w * (cond - uncond)
        return result

    return guided

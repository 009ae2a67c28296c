"""Guidance: ``out = g + w (c - g)`` on the velocity of every stream, inside a time interval.

``c`` is the conditional velocity of the model being sampled and ``g`` a guide velocity:

- classifier-free guidance: the model itself with the null label (``Guide(null_label=K)``); the conditional
  and the null-label halves go through the network in one batched call;
- AutoGuidance (Karras et al. 2024, used by RAE): another, weaker network with the same labels
  (``Guide(other_velocity)``): two calls.

One scale per stream (REG guides its class token separately), all channels (DiT's "first 3 channels" was a
legacy reproduction detail). Where guidance is active is a family's own rule (``sample.cfg_rule``; t = 1 is
noise, ``interval = (lo, hi)``):

- ``step`` (SiT / REPA / REG's samplers): decided once per solver step at its start time ``t_step``, inclusive,
  ``lo <= t_step <= hi``; a Heun corrector is guided as its step was. REPA's interval is (0, 0.7).
- ``evaluation_strict`` (the official JiT ``denoiser.py``): decided at every evaluation at its own time ``t``,
  strict bounds. JiT writes ``(s < high) & ((low == 0) | (s > low))`` in its time ``s = 1 - t`` (s = 1 is
  data); with ``(lo, hi) = (1 - high, 1 - low)`` that is ``lo < t and (t < hi or hi == 1)``: strict at both
  ends, except that ``hi = 1`` (JiT's ``low = 0``) keeps the noise end. JiT's (0.1, 1.0) is (0, 0.9) here.

Outside the interval, and when every scale is 1, only the conditional branch is evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import CFG_RULES
from .solvers import State, Velocity

ConditionalVelocity = Callable[[State, float, Tensor | None], State]
# times carry float rounding (1 - 0.7 is 0.30000000000000004): a time this close to a bound is on it, so the
# strict rule never guides a grid point that lands on its bound, as the official rule means (its float32
# comparison puts such a point on either side by rounding)
ON_BOUND = 1e-9


@dataclass(frozen=True)
class Guide:
    """What the conditional velocity is guided away from: ``velocity`` (another network; None: the model
    itself, batched with the conditional call) at the null label ``null_label`` (CFG) or at the same labels
    (``null_label`` None: AutoGuidance)."""

    velocity: ConditionalVelocity | None = None
    null_label: int | None = None

    def __post_init__(self) -> None:
        if self.velocity is None and self.null_label is None:
            raise ValueError("a guide is the model at the null label or another network; got neither")


def guidance_active(rule: str, interval: tuple[float, float], t: float, t_step: float) -> bool:
    """Whether an evaluation at time ``t``, in the solver step that started at ``t_step``, is guided."""
    lo, hi = interval
    if rule == "step":
        return lo <= t_step <= hi
    if rule == "evaluation_strict":
        return t > lo + ON_BOUND and (hi == 1.0 or t < hi - ON_BOUND)
    raise ValueError(f"unknown guidance rule {rule!r}; choose from {', '.join(CFG_RULES)}")


def guided(
    velocity: ConditionalVelocity,
    y: Tensor | None,
    guide: Guide | None,
    scales: Mapping[str, float],
    interval: tuple[float, float] = (0.0, 1.0),
    rule: str = "step",
) -> Velocity:
    """The solver's velocity ``(state, t, t_step) -> state``: ``velocity`` at labels ``y``, guided by ``guide``
    where ``rule`` says (see the module docstring)."""
    lo, hi = interval
    if lo > hi:
        raise ValueError(f"guidance interval must have lo <= hi, got {interval}")
    guidance_active(rule, interval, 0.5, 0.5)  # an unknown rule fails here, not mid-sampling
    if guide is not None and guide.null_label is not None and y is None:
        raise ValueError("classifier-free guidance needs a class-conditional model and labels")
    active = guide is not None and any(w != 1.0 for w in scales.values())

    def combined(state: State, t: float, t_step: float) -> State:
        if not active or not guidance_active(rule, interval, t, t_step):
            return velocity(state, t, y)
        if guide.velocity is None:  # one call: the conditional half, then the null-label half
            doubled = {k: torch.cat([v, v]) for k, v in state.items()}
            both = velocity(doubled, t, torch.cat([y, torch.full_like(y, guide.null_label)]))
            cond, weak = {k: v.chunk(2)[0] for k, v in both.items()}, {k: v.chunk(2)[1] for k, v in both.items()}
        else:
            labels = y if guide.null_label is None or y is None else torch.full_like(y, guide.null_label)
            cond, weak = velocity(state, t, y), guide.velocity(state, t, labels)
        return {k: weak[k] + scales.get(k, 1.0) * (cond[k] - weak[k]) for k in cond}

    return combined


def classifier_free(
    velocity: ConditionalVelocity,
    y: Tensor | None,
    null_label: int,
    scales: Mapping[str, float],
    interval: tuple[float, float] = (0.0, 1.0),
    rule: str = "step",
) -> Velocity:
    """Classifier-free guidance: the same network with the null label as the guide, batched."""
    return guided(velocity, y, Guide(null_label=null_label), scales, interval, rule)

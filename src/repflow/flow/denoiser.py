"""What generation integrates: the :class:`Denoiser` protocol, and the one for a network predicting x, eps or v.

A denoiser knows the per-sample shapes of its state (the image ``x``; REG's class token ``cls``), its labels
(classes and the null label for classifier-free guidance), the velocity at ``(state, t, y)`` (whatever the
network predicts is converted to v inside), the time shift of its sampling grid, and how to ``decode`` a
final state to images in [-1, 1] (a codec, or a method's own head). Samplers, guidance and exports never
need to know more.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from ..config import SampleConfig
from ..runtime.precision import autocast_for, full_precision
from .path import Path, expand_t
from .solvers import State


class Denoiser(Protocol):
    shapes: Mapping[str, tuple[int, ...]]  # per-sample shape of every stream
    num_classes: int  # 0: unconditional
    null_label: int | None  # the label meaning "no class" (None: no classifier-free guidance)
    path: Path  # the interpolation (the SDE derives its score from it)
    shift: float  # time shift of the sampling grid (RAE's dimension shift; 1: none)
    noise_scale: float  # the image stream starts from noise_scale * N(0, I) (JiT at 512 px: 2)

    def velocity(self, state: State, t: float, y: Tensor | None) -> State: ...

    def decode(self, state: State) -> Tensor:
        """Final state -> images (N, C, H, W) in [-1, 1]."""
        ...

    def guidance_scales(self, opts: SampleConfig) -> dict[str, float]:
        """Guidance scale per stream for these sampling options."""
        ...


@dataclass
class NetworkDenoiser:
    """A network mapping ``(states, t, y)`` to per-stream predictions of ``prediction`` (x, eps or v)."""

    network: nn.Module
    path: Path
    prediction: str
    shapes: Mapping[str, tuple[int, ...]]
    decoder: Callable[[State], Tensor]
    num_classes: int = 0
    null_label: int | None = None
    shift: float = 1.0
    noise_scale: float = 1.0
    min_denominator: float = 0.05
    precision: str = "auto"
    scales: Callable[[SampleConfig], dict[str, float]] | None = None
    internal_scale: float = 1.0  # RAEv2's internal guidance: shallow + w (full - shallow), for t in the interval
    internal_interval: tuple[float, float] = (0.0, 1.0)
    interval_input: bool = False  # MeanFlow: the network also takes the interval h = t - r (average_velocity)
    guidance_input: bool = False  # iMF: the network takes (w, t_lo, t_hi): sample.cfg and cfg_interval go in
    guidance: tuple[float, float, float] = (1.0, 0.0, 1.0)  # that input, set from the options by for_options
    device: torch.device = field(init=False)
    dtype: torch.dtype = field(init=False)  # of the state: float64 for a float64 network (checks), else float32

    def __post_init__(self) -> None:
        param = next(self.network.parameters())
        self.device, self.dtype = param.device, full_precision(param[:0]).dtype

    def for_options(self, opts: SampleConfig) -> NetworkDenoiser:
        """This denoiser with the sampling options that change the velocity itself (internal guidance; DDT's
        encoder reuse, a fresh count for every generation)."""
        network, guidance = self.network, self.guidance
        if self.guidance_input:  # the scale is an input of the network, not a mix of two calls
            guidance = (opts.cfg, *map(float, opts.cfg_interval))
        if opts.encoder_reuse != 1:
            if not hasattr(network, "with_encoder_reuse"):
                raise ValueError(f"sample.encoder_reuse={opts.encoder_reuse} needs a network with a condition "
                                 "encoder (model.family=ddt); set it to 1")  # fmt: skip
            network = network.with_encoder_reuse(opts.encoder_reuse)
        if (opts.internal_guidance == self.internal_scale and tuple(opts.internal_interval) == self.internal_interval
                and network is self.network and guidance == self.guidance):  # fmt: skip
            return self
        return dataclasses.replace(self, network=network, internal_scale=opts.internal_guidance,
                                   internal_interval=tuple(opts.internal_interval), guidance=guidance)  # fmt: skip

    def _to_velocity(self, preds: Mapping[str, Tensor], state: State, t_vec: Tensor) -> State:
        return {k: self.path.convert(preds[k].to(s.dtype), self.prediction, "v", s, expand_t(t_vec, s).to(s.dtype),
                                     self.min_denominator) for k, s in state.items()}  # fmt: skip

    @torch.no_grad()
    def velocity(self, state: State, t: float, y: Tensor | None) -> State:
        return self._velocity(state, t, y)

    @torch.no_grad()
    def average_velocity(self, state: State, t: float, r: float, y: Tensor | None) -> State:
        """MeanFlow: the average velocity over [r, t], so that ``z_r = z_t - (t - r) u``."""
        if not self.interval_input:
            raise ValueError("average velocities need a MeanFlow network (method.kind=meanflow)")
        return self._velocity(state, t, y, t - r)

    def _velocity(self, state: State, t: float, y: Tensor | None, interval: float | None = None) -> State:
        x = next(iter(state.values()))
        t_vec = torch.full((x.shape[0],), t, device=x.device, dtype=self.dtype)
        inputs = {} if interval is None else {"h": torch.full_like(t_vec, interval)}  # a flow network takes no h
        if self.guidance_input:
            inputs["guidance"] = torch.tensor(self.guidance, device=x.device, dtype=self.dtype).expand(x.shape[0], 3)
        with autocast_for(self.device, self.precision):
            out = self.network({k: full_precision(v) for k, v in state.items()}, t_vec, y, **inputs)
        v = self._to_velocity(out.pred, state, t_vec)
        lo, hi = self.internal_interval
        if self.internal_scale != 1.0 and lo <= t <= hi:  # decided at each evaluation's own t, as RAEv2
            if not out.shallow:
                raise ValueError("internal guidance needs a network with an internal output (model.internal_depth)")
            weak = self._to_velocity(out.shallow, state, t_vec)
            v = {k: weak[k] + self.internal_scale * (v[k] - weak[k]) if k in weak else v[k] for k in v}
        return v

    def decode(self, state: State) -> Tensor:
        return self.decoder(state)

    def guidance_scales(self, opts: SampleConfig) -> dict[str, float]:
        if self.guidance_input:  # the network guides itself (one call): nothing to mix
            return {k: 1.0 for k in self.shapes}
        return self.scales(opts) if self.scales is not None else {k: opts.cfg for k in self.shapes}

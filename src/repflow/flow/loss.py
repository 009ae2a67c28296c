"""The flow-matching loss: one callable holding only its hyperparameters (edm2 style).

Every stream of the state (the image ``x``; REG's class token ``cls``) is noised with the *same* t and its own
noise. The network predicts ``prediction`` (v, x or eps); prediction and target are both converted to
``loss_space`` with the same clipped conversion, so the loss is exactly zero at the true target (JiT's x-pred
with a v-space loss is ``prediction="x", loss_space="v"``).

Randomness (t, noise, label dropout) is drawn for the *global* batch from a generator shared by all
processes and then sliced (:class:`FlowDraw`), so a sample's noise does not depend on how the batch is split
over processes or accumulation steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..runtime.precision import full_precision
from .path import Kind, Path
from .timesteps import TimeSampler


@dataclass
class LossOutput:
    """The scalar to minimise and its named, unweighted terms (for logging)."""

    total: Tensor
    terms: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class FlowDraw:
    """The random quantities of one flow-matching step: times, noise per stream, label-drop mask."""

    t: Tensor  # (B,)
    eps: dict[str, Tensor]
    drop: Tensor  # (B,) bool

    def chunk(self, index: int, size: int) -> FlowDraw:
        sl = slice(index * size, (index + 1) * size)
        return FlowDraw(self.t[sl], {k: v[sl] for k, v in self.eps.items()}, self.drop[sl])


@dataclass
class FlowSample:
    """What one flow-matching evaluation saw and produced; extra loss terms read from it."""

    t: Tensor  # (B,)
    x_t: dict[str, Tensor]
    y: Tensor | None  # labels after dropout
    output: object  # ModelOutput: .pred per stream, .hidden per block
    eps: dict[str, Tensor] = field(default_factory=dict)  # the noise per stream (targets of extra terms)


def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch."""
    return x.reshape(x.shape[0], -1).mean(dim=1)


def draw_noise(shapes: Mapping[str, Sequence[int]], n: int, generator: torch.Generator | None, device,
               noise_scale: float) -> dict[str, Tensor]:  # fmt: skip
    """Noise for every stream (per-sample shapes), in sorted stream order (the order is part of what a seed
    gives); the image's scaled by ``noise_scale`` (JiT at 512 px: 2)."""
    eps = {k: torch.randn((n, *shapes[k]), generator=generator, device=device) for k in sorted(shapes)}
    if noise_scale != 1.0 and "x" in eps:
        eps["x"] = eps["x"] * noise_scale
    return eps


def step_draw(objective, clean: Mapping[str, Tensor], draw, generator: torch.Generator | None):
    """The draw a loss call uses: the one given (drawn for the global batch, then sliced) or, alone, a fresh one
    for this batch from ``objective.draw``."""
    if draw is not None:
        return draw
    x = clean["x"]
    return objective.draw({k: v.shape[1:] for k, v in clean.items()}, x.shape[0], generator, x.device)


def drop_labels(y: Tensor | None, drop: Tensor, class_dropout: float, null_label: int) -> Tensor | None:
    """Classifier-free guidance training: the dropped samples' labels become the null label."""
    if y is None or class_dropout <= 0:
        return y
    return torch.where(drop, torch.full_like(y, null_label), y)


@dataclass
class FlowMatching:
    path: Path
    time_sampler: TimeSampler
    prediction: Kind = "v"
    loss_space: Kind = "v"
    min_denominator: float = 0.05
    class_dropout: float = 0.0
    null_label: int = 0  # the label that means "no class" (the model's extra embedding row)
    noise_scale: float = 1.0  # the image stream's noise is noise_scale * N(0, I) (JiT at 512 px: 2)
    internal_weight: float = 1.0  # weight of the loss of a network's internal (shallow) output, when it has one

    def draw(
        self, shapes: Mapping[str, Sequence[int]], n: int, generator: torch.Generator | None, device=None
    ) -> FlowDraw:
        """Draw t, noise for every stream (per-sample shapes) and the label-drop mask for n samples."""
        t = self.time_sampler.sample(n, self.path, generator, device=device)
        eps = draw_noise(shapes, n, generator, device, self.noise_scale)
        drop = torch.rand(n, generator=generator, device=device) < self.class_dropout
        return FlowDraw(t, eps, drop)

    def stream_loss(self, pred: Tensor, clean: Tensor, eps: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample squared error in ``loss_space`` (B,)."""
        target = self.path.target(self.prediction, clean, eps, t)
        convert = lambda q: self.path.convert(  # noqa: E731
            q, self.prediction, self.loss_space, x_t, t, self.min_denominator
        )
        return mean_flat((convert(full_precision(pred)) - convert(full_precision(target))) ** 2)

    def __call__(self, model, clean: Mapping[str, Tensor], y: Tensor | None, weights: Mapping[str, float] | None = None,
                 draw: FlowDraw | None = None, generator: torch.Generator | None = None,
                 return_hidden: Sequence[int] = ()) -> tuple[LossOutput, FlowSample]:  # fmt: skip
        weights = weights or {}
        draw = step_draw(self, clean, draw, generator)
        t = draw.t
        x_t = {k: self.path.interpolate(full_precision(v), draw.eps[k], t) for k, v in clean.items()}
        y = drop_labels(y, draw.drop, self.class_dropout, self.null_label)
        out = model(x_t, t, y, return_hidden=tuple(return_hidden))
        terms = {f"flow_{k}": self.stream_loss(out.pred[k], clean[k], draw.eps[k], x_t[k], t).mean() for k in clean}
        total = sum(weights.get(k, 1.0) * terms[f"flow_{k}"] for k in clean)
        for k, pred in getattr(out, "shallow", {}).items():  # RAEv2: the internal output has the same target
            terms[f"flow_{k}_internal"] = self.stream_loss(pred, clean[k], draw.eps[k], x_t[k], t).mean()
            total = total + self.internal_weight * weights.get(k, 1.0) * terms[f"flow_{k}_internal"]
        return LossOutput(total=total, terms=terms), FlowSample(t=t, x_t=x_t, y=y, output=out, eps=draw.eps)

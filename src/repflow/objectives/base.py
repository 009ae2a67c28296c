"""The training objective: flow matching on every stream, plus composable extra terms.

A method adds itself as a :class:`Term` (REPA: an alignment loss on hidden states; REG: an extra stream to
denoise) without touching the loop or the flow loss. Terms may own trainable modules (REPA's projector);
they live here, not in the network, so inference weights never contain them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..flow.loss import FlowDraw, FlowMatching, FlowSample, LossOutput


@dataclass
class TrainBatch:
    x: Tensor  # clean data in model space (B, C, H, W), float
    y: Tensor | None  # class labels (B,) or None when unconditional
    features: dict[str, Tensor] = field(default_factory=dict)  # frozen-encoder outputs, e.g. "patch", "cls"

    def chunk(self, index: int, size: int) -> TrainBatch:
        sl = slice(index * size, (index + 1) * size)
        return TrainBatch(
            self.x[sl], None if self.y is None else self.y[sl], {k: v[sl] for k, v in self.features.items()}
        )


class Term(nn.Module):
    """An extra part of the objective. Override what you need."""

    #: blocks (1-indexed) whose hidden states this term reads from the network
    hidden_layers: tuple[int, ...] = ()

    def streams(self, batch: TrainBatch) -> dict[str, tuple[Tensor, float]]:
        """Extra clean streams to denoise jointly with the image: name -> (tensor (B, ...), loss weight)."""
        return {}

    def loss(self, batch: TrainBatch, sample: FlowSample) -> dict[str, tuple[Tensor, float]]:
        """Named extra loss terms: name -> (scalar, weight)."""
        return {}


class Objective(nn.Module):
    def __init__(self, flow: FlowMatching, terms: Sequence[Term] = ()):
        super().__init__()
        self.flow = flow
        self.terms = nn.ModuleList(terms)

    def clean_streams(self, batch: TrainBatch) -> tuple[dict[str, Tensor], dict[str, float]]:
        streams, weights = {"x": batch.x}, {"x": 1.0}
        for term in self.terms:
            for name, (value, weight) in term.streams(batch).items():
                streams[name], weights[name] = value, weight
        return streams, weights

    def draw(self, batch: TrainBatch, n: int, generator: torch.Generator | None) -> FlowDraw:
        """Randomness for ``n`` samples shaped like this batch's streams (see FlowDraw)."""
        streams, _ = self.clean_streams(batch)
        return self.flow.draw({k: v.shape[1:] for k, v in streams.items()}, n, generator, batch.x.device)

    def forward(self, model: nn.Module, batch: TrainBatch, draw: FlowDraw) -> LossOutput:
        streams, weights = self.clean_streams(batch)
        layers = sorted({i for term in self.terms for i in term.hidden_layers})
        out, sample = self.flow(model, streams, batch.y, weights, draw=draw, return_hidden=layers)
        total, terms = out.total, dict(out.terms)
        for term in self.terms:
            for name, (value, weight) in term.loss(batch, sample).items():
                terms[name] = value
                total = total + weight * value
        return LossOutput(total=total, terms=terms)


class ModelWithObjective(nn.Module):
    """What the optimiser (and DDP) sees: the network plus the objective's trainable parts."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: TrainBatch, draw: FlowDraw) -> LossOutput:
        return self.objective(self.model, batch, draw)

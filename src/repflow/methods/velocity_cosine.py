"""LightningDiT's velocity direction loss (hustvl/LightningDiT, ``transport.use_cosine_loss``).

``L_cos = mean_{b, h, w} (1 - cos(v_pred, v))``, the cosine over the channels at every position, added to the
flow loss with weight 1 in the authors' recipe (their ``train.py``: ``loss = cos_loss.mean() + mse_loss``).
Any prediction is converted to v first; the sign of v (repflow's time runs the other way) does not change a
cosine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch.nn.functional as F
from torch import Tensor

from ..config import Config, Section, checked, nonnegative
from ..flow.loss import FlowSample
from ..flow.path import Path, build_path, expand_t
from ..registry import TERMS
from .base import MethodEnv, TrainBatch
from .flow import Term


@dataclass(frozen=True)
class VelocityCosineConfig(Section):
    """LightningDiT's cosine loss between the predicted and the true velocity, per position."""

    PREFIX: ClassVar[str] = "velocity_cosine."
    enabled: bool = False
    weight: float = checked(1.0, nonnegative)


@TERMS.register("velocity_cosine", VelocityCosineConfig)
class VelocityCosineTerm(Term):
    section = "velocity_cosine"

    def __init__(self, path: Path, prediction: str = "v", weight: float = 1.0, min_denominator: float = 0.05):
        super().__init__()
        self.path, self.prediction, self.weight, self.min_denominator = path, prediction, weight, min_denominator

    @classmethod
    def build(cls, cfg: Config, env: MethodEnv, network) -> VelocityCosineTerm:
        f = cfg.flow
        return cls(build_path(f.path), f.prediction, cfg.velocity_cosine.weight, f.min_denominator)

    def loss(self, batch: TrainBatch, sample: FlowSample) -> dict[str, tuple[Tensor, float]]:
        x_t, t = sample.x_t["x"], sample.t
        pred = sample.output.pred["x"].float()
        v_pred = self.path.convert(pred, self.prediction, "v", x_t, expand_t(t, x_t), self.min_denominator)
        v = self.path.target("v", batch.x.float(), sample.eps["x"], t)
        return {"velocity_cosine": ((1 - F.cosine_similarity(v_pred, v, dim=1)).mean(), self.weight)}

"""JiT's toy experiment (its Figure 2) as a method: 2-D data on a low-dimensional manifold inside D dimensions.

A spiral in the plane is embedded in R^D by a fixed random column-orthogonal matrix (D x 2); a small MLP is
trained to denoise it, predicting x, eps or v (``flow.prediction``) with the loss in v space for all three,
as the paper does. With D >> the network's width, x-prediction still finds the 2-D manifold while eps- and
v-prediction, which must output a full-rank D-dimensional quantity, fail. The data is drawn fresh every step
from the run's generator (the image loader's batch is unused), so the whole run is reproducible and goes
through the one training loop; ``repflow bench manifold`` trains the grid and draws the figure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..config import Config, MethodConfig, checked, positive, to_dict
from ..flow.denoiser import NetworkDenoiser
from ..flow.loss import FlowDraw, LossOutput
from ..flow.path import build_path
from ..models.dit import ModelOutput
from ..registry import METHODS
from .base import Method, MethodEnv, TrainBatch
from .flow import build_flow_matching


@dataclass(frozen=True)
class ManifoldConfig(MethodConfig):
    kind: str = "manifold"
    dim: int = checked(512, positive)  # D: the ambient dimension
    width: int = checked(256, positive)  # the MLP's hidden width
    depth: int = checked(5, positive)  # hidden layers
    turns: float = checked(2.0, positive)  # of the spiral
    basis_seed: int = 1234  # the fixed random embedding


def embedding(dim: int, seed: int) -> Tensor:
    """A fixed (D, 2) matrix with orthonormal columns (the identity's first columns for D = 2)."""
    if dim == 2:
        return torch.eye(2)
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(dim, 2, generator=g, dtype=torch.float64))
    return q.float()


def spiral(n: int, turns: float, generator: torch.Generator | None = None, device=None) -> Tensor:
    """Points (n, 2) on an Archimedean spiral of radius up to ~1, with a little thickness."""
    u = torch.rand(n, generator=generator, device=device)
    angle = 2 * math.pi * turns * u.sqrt()
    radius = 0.15 + 0.85 * u.sqrt()
    points = torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1)
    return points + 0.01 * torch.randn(n, 2, generator=generator, device=device)


class ToyDenoiser(nn.Module):
    """The paper's ReLU MLP on ``[x_t, t]`` -> prediction, in the network interface the flow code expects.
    (ReLU and the raw t matter: with SiLU or a sinusoidal t embedding the 2-D spiral itself comes out blurred,
    3-4x farther from the data at equal steps.)"""

    def __init__(self, dim: int, width: int, depth: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(dim + 1, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, dim))
        self.mlp = nn.Sequential(*layers)

    null_label = None
    num_classes = 0

    def forward(self, states: dict[str, Tensor], t: Tensor, y: Tensor | None = None, return_hidden=()) -> ModelOutput:
        x = states["x"]
        return ModelOutput(pred={"x": self.mlp(torch.cat([x, t.to(x.dtype)[:, None]], dim=1))})


@METHODS.register("manifold", ManifoldConfig)
class ManifoldMethod(Method):
    uses_model_section: ClassVar[bool] = False
    uses_data: ClassVar[bool] = False
    ema_networks: ClassVar[tuple[str, ...]] = ("model",)

    def __init__(self, cfg: Config, env: MethodEnv):
        super().__init__(cfg, env)
        m = cfg.method
        self.add_network("model", ToyDenoiser(m.dim, m.width, m.depth))
        self.register_buffer("basis", embedding(m.dim, m.basis_seed), persistent=False)
        self.flow = build_flow_matching(cfg.replace(**{"model.num_classes": 0}), null_label=0)

    def draw(self, batch: TrainBatch, n: int, generator: torch.Generator | None) -> FlowDraw:
        device = batch.x.device
        draw = self.flow.draw({"x": (self.cfg.method.dim,)}, n, generator, device)
        draw.eps["points"] = spiral(n, self.cfg.method.turns, generator, device)  # the data, drawn like noise
        return draw

    def forward(self, batch: TrainBatch, draw: FlowDraw, phase: str = "main", step: int = 0) -> LossOutput:
        x = draw.eps["points"] @ self.basis.T  # (B, D): the manifold in R^D
        flow_draw = FlowDraw(draw.t, {"x": draw.eps["x"]}, draw.drop)
        out, _ = self.flow(self.model, {"x": x}, None, draw=flow_draw)
        return out

    def describe(self) -> str:
        m, f = self.cfg.method, self.cfg.flow
        return f"manifold toy (D={m.dim}, MLP {m.depth}x{m.width}; {f.prediction}-prediction, loss in {f.loss_space})"

    @classmethod
    def resume_key(cls, cfg: Config) -> dict:
        return {"method": to_dict(cfg.method), "flow.prediction": cfg.flow.prediction}

    @classmethod
    def inference_networks(cls, cfg: Config) -> dict[str, nn.Module]:
        m = cfg.method
        return {"model": ToyDenoiser(m.dim, m.width, m.depth)}

    @classmethod
    def denoiser(cls, cfg: Config, networks, device: torch.device, codec=None):
        basis = embedding(cfg.method.dim, cfg.method.basis_seed).to(device)
        return NetworkDenoiser(
            network=networks["model"], path=build_path(cfg.flow.path), prediction=cfg.flow.prediction,
            shapes={"x": (cfg.method.dim,)}, decoder=lambda s: s["x"] @ basis,  # back to the plane
            min_denominator=cfg.flow.min_denominator, precision="fp32",
        )  # fmt: skip

    def preview(self, weights, batch):
        return None  # `repflow bench manifold` draws the points


def manifold_scores(points: Tensor, basis: Tensor, generated: Tensor, turns: float) -> dict[str, float]:
    """Quality of generated D-dimensional samples (all 0 for perfect ones): ``off_manifold``, the RMS norm of their
    component outside the data's plane; ``to_data``, the mean distance of their in-plane projection to the
    nearest of many true spiral points (are the samples on the spiral?); ``coverage``, the mean distance of
    the true points to the nearest projected sample (is all of the spiral generated?)."""
    inplane = (generated @ basis).double()  # (N, 2)
    off = generated - (generated @ basis) @ basis.T
    dist = torch.cdist(inplane, points.double())
    return {
        "off_manifold": float(off.norm(dim=1).pow(2).mean().sqrt()),
        "to_data": float(dist.min(1).values.mean()),
        "coverage": float(dist.min(0).values.mean()),
    }

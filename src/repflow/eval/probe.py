"""Linear probe: how linearly decodable the class is from a representation (REPA's probing of SiT features).

A closed-form ridge-regression classifier on standardised features: W = argmin |X W - Y|^2 + lam n |W|^2 with
Y the one-hot labels (bias unpenalised, via centring), prediction argmax(X W). Deterministic, no learning
rate or epochs to tune, and fast for the few thousand examples these analyses use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class ProbeResult:
    train_accuracy: float
    test_accuracy: float
    num_train: int
    num_test: int


def fit_ridge(x: Tensor, y: Tensor, num_classes: int, l2: float = 1e-3) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(weight (d, classes), bias (classes,), feature mean, feature scale) of the ridge classifier."""
    mean, scale = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / scale
    targets = torch.nn.functional.one_hot(y, num_classes).to(z.dtype)
    target_mean = targets.mean(0)
    n, d = z.shape
    gram = z.T @ z + l2 * n * torch.eye(d, dtype=z.dtype)
    weight = torch.linalg.solve(gram, z.T @ (targets - target_mean))  # (d, classes)
    return weight, target_mean, mean, scale


def linear_probe(
    train_x: np.ndarray | Tensor,
    train_y: np.ndarray | Tensor,
    test_x: np.ndarray | Tensor,
    test_y: np.ndarray | Tensor,
    num_classes: int,
    l2: float = 1e-3,
) -> ProbeResult:
    """Fit on the training split, report accuracy on both splits."""
    tx, vx = (torch.as_tensor(np.asarray(a), dtype=torch.float64) for a in (train_x, test_x))
    ty, vy = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in (train_y, test_y))
    if tx.ndim != 2 or vx.ndim != 2 or tx.shape[1] != vx.shape[1]:
        raise ValueError(f"probe features must be (n, d) with equal d: {tuple(tx.shape)}, {tuple(vx.shape)}")
    if tx.shape[0] != ty.shape[0] or vx.shape[0] != vy.shape[0]:
        raise ValueError("probe features and labels differ in length")
    weight, bias, mean, scale = fit_ridge(tx, ty, num_classes, l2)

    def accuracy(x: Tensor, y: Tensor) -> float:
        pred = (((x - mean) / scale) @ weight + bias).argmax(1)
        return float((pred == y).double().mean())

    return ProbeResult(accuracy(tx, ty), accuracy(vx, vy), tx.shape[0], vx.shape[0])

"""Inception Score and improved precision / recall, with the ADM evaluator's definitions.

- IS: softmax of the unbiased logits; over consecutive splits of ``split_size`` samples (ADM: 5000, so a
  50K evaluation averages 10 splits), exp(mean KL(p(y|x) || p(y))); the mean over splits.
- Precision / recall (Kynkäänniemi et al. 2019) on pool_3 features with k = 3: a point is inside a set's
  manifold if its squared distance to some member is at most that member's squared distance to its k-th
  nearest neighbour in its own set (the point itself counts as neighbour 0). Precision: fraction of samples
  inside the reference manifold; recall: fraction of references inside the sample manifold.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def inception_score(logits: np.ndarray | Tensor, split_size: int = 5000) -> float:
    """ADM's Inception Score of (N, 1008) unbiased logits."""
    logits = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must be (N, classes) with N > 0, got shape {tuple(logits.shape)}")
    scores = []
    for lo in range(0, logits.shape[0], split_size):
        log_p = torch.log_softmax(logits[lo : lo + split_size], dim=1)  # log p(y|x)
        log_marginal = torch.logsumexp(log_p, dim=0) - math.log(log_p.shape[0])  # log p(y)
        kl = (log_p.exp() * (log_p - log_marginal)).sum(dim=1).mean()
        scores.append(float(kl.exp()))
    return float(np.mean(scores))


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances (A, B), clamped at 0 against round-off."""
    return ((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None]).clamp_(min=0)


def manifold_radii(features: Tensor, k: int = 3, batch: int = 10000) -> Tensor:
    """Squared distance of each point to its k-th nearest neighbour within the set (itself excluded)."""
    n = features.shape[0]
    if n <= k:
        raise ValueError(f"precision/recall with k={k} needs more than {k} points per set, got {n}")
    radii = torch.empty(n, dtype=features.dtype, device=features.device)
    for lo in range(0, n, batch):
        d = _sq_dists(features[lo : lo + batch], features)
        radii[lo : lo + batch] = d.kthvalue(k + 1, dim=1).values  # value k+1 in sorted order: self is first
    return radii


def _inside(points: Tensor, manifold: Tensor, radii: Tensor, batch: int) -> Tensor:
    """For each point: is it within radius of some manifold member?"""
    found = torch.zeros(points.shape[0], dtype=torch.bool, device=points.device)
    for lo in range(0, points.shape[0], batch):
        rows = points[lo : lo + batch]
        hit = torch.zeros(rows.shape[0], dtype=torch.bool, device=points.device)
        for mlo in range(0, manifold.shape[0], batch):
            d = _sq_dists(rows, manifold[mlo : mlo + batch])
            hit |= (d <= radii[None, mlo : mlo + batch]).any(dim=1)
        found[lo : lo + batch] = hit
    return found


def precision_recall(
    reference: np.ndarray | Tensor,
    samples: np.ndarray | Tensor,
    k: int = 3,
    batch: int = 10000,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """(precision, recall) of ``samples`` against ``reference`` (both (N, D) features)."""
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float32, device=device)
    gen = torch.as_tensor(np.asarray(samples), dtype=torch.float32, device=device)
    if ref.ndim != 2 or gen.ndim != 2 or ref.shape[1] != gen.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(ref.shape)} vs {tuple(gen.shape)}")
    ref_radii, gen_radii = manifold_radii(ref, k, batch), manifold_radii(gen, k, batch)
    precision = _inside(gen, ref, ref_radii, batch).double().mean().item()
    recall = _inside(ref, gen, gen_radii, batch).double().mean().item()
    return precision, recall

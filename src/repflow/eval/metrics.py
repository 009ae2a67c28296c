"""Inception Score, improved precision / recall (the ADM evaluator's definitions) and KID.

- IS: softmax of the unbiased logits; over consecutive splits of ``split_size`` samples (ADM: 5000, so a
  50K evaluation averages 10 splits), exp(mean KL(p(y|x) || p(y))); the mean over splits.
- Precision / recall (Kynkäänniemi et al. 2019) on pool_3 features with k = 3: a point is inside a set's
  manifold if its squared distance to some member is at most that member's squared distance to its k-th
  nearest neighbour in its own set (the point itself counts as neighbour 0). Precision: fraction of samples
  inside the reference manifold; recall: fraction of references inside the sample manifold.
- KID (Bińkowski et al. 2018): the unbiased estimate of the squared MMD with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3 between ``subsets`` random subsets of ``subset_size`` samples and as many references,
  drawn as torch-fidelity draws them (``np.random.RandomState(seed)``, seed 2020, samples then references, without
  replacement; the size capped at the smaller set as clean-fid does): their mean and (population) standard
  deviation. For subsets X, Y of size m: (sum_{i!=j} k(x_i, x_j) + sum_{i!=j} k(y_i, y_j)) / (m (m - 1))
  - 2 sum_{i,j} k(x_i, y_j) / m^2, in float64.
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


def mmd2_unbiased(x: Tensor, y: Tensor) -> float:
    """The unbiased squared MMD of two (m, d) sets with KID's cubic polynomial kernel."""
    m, d = x.shape

    def kernel(a: Tensor, b: Tensor) -> Tensor:
        return (a @ b.T / d + 1) ** 3

    k_xx, k_yy = kernel(x, x), kernel(y, y)
    within = k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()
    return float(within / (m * (m - 1)) - 2 * kernel(x, y).sum() / (m * m))


def kernel_inception_distance(
    samples: np.ndarray | Tensor,
    reference: np.ndarray | Tensor,
    subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 2020,
) -> tuple[float, float, int]:
    """(mean, standard deviation, subset size used) of the squared MMD over random subsets (see the docstring)."""
    gen = torch.as_tensor(np.asarray(samples), dtype=torch.float64)
    ref = torch.as_tensor(np.asarray(reference), dtype=torch.float64)
    if gen.ndim != 2 or ref.ndim != 2 or gen.shape[1] != ref.shape[1]:
        raise ValueError(f"feature shapes do not match: {tuple(gen.shape)} vs {tuple(ref.shape)}")
    m = min(subset_size, gen.shape[0], ref.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(f"KID needs at least 2 samples and references and one subset, got {m} and {subsets}")
    rng = np.random.RandomState(seed)
    values = []
    for _ in range(subsets):
        x = gen[torch.from_numpy(rng.choice(gen.shape[0], m, replace=False))]
        y = ref[torch.from_numpy(rng.choice(ref.shape[0], m, replace=False))]
        values.append(mmd2_unbiased(x, y))
    return float(np.mean(values)), float(np.std(values)), m

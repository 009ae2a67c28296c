"""Gaussian feature statistics and the Fréchet distance (FID on pool_3, sFID on mixed_6/conv).

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), with S the unbiased covariance (``np.cov``),
as in TTUR, the ADM evaluator and clean-fid. The trace of the matrix square root is computed from the
eigenvalues of the symmetric PSD matrix S1^(1/2) S2 S1^(1/2) (similar to S1 S2, hence the same spectrum),
in float64: stable where ``scipy.linalg.sqrtm`` of the non-symmetric product needs an epsilon and a check
for imaginary parts (few samples, rank-deficient covariances).

With fewer samples than dimensions (S1 = A^T A, A the (n, D) centred features over sqrt(n - 1)), the non-zero
eigenvalues of S1 S2 are those of the small (n, n) matrix A S2 A^T: exact, and far cheaper than two D x D
eigendecompositions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Stats:
    mu: np.ndarray  # (D,)
    sigma: np.ndarray  # (D, D)
    count: int = 0  # samples the statistics were computed from (0: unknown, e.g. ADM's precomputed ones)
    features: np.ndarray | None = None  # the (N, D) features, kept when N <= D for the low-rank route

    @property
    def dim(self) -> int:
        return int(self.mu.shape[0])


def compute_stats(features: np.ndarray) -> Stats:
    """Mean and unbiased covariance of (N, D) features, in float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {feats.shape}")
    if feats.shape[0] < 2:
        raise ValueError(f"FID statistics need at least 2 samples, got {feats.shape[0]}")
    keep = feats if feats.shape[0] <= feats.shape[1] else None
    return Stats(feats.mean(axis=0), np.cov(feats, rowvar=False), count=feats.shape[0], features=keep)


def _sqrt_psd(matrix: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(matrix)
    return (vecs * vals.clamp(min=0).sqrt()) @ vecs.T


def _trace_sqrt_low_rank(a: Stats, sigma2: np.ndarray) -> float:
    feats = torch.from_numpy(np.asarray(a.features, dtype=np.float64))
    centred = (feats - feats.mean(0)) / np.sqrt(feats.shape[0] - 1)  # (n, D): S1 = centred^T centred
    small = centred @ torch.from_numpy(np.asarray(sigma2, dtype=np.float64)) @ centred.T  # (n, n)
    vals = torch.linalg.eigvalsh((small + small.T) / 2)
    return float(vals.clamp(min=0).sqrt().sum())


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2."""
    s1 = torch.from_numpy(np.asarray(sigma1, dtype=np.float64))
    s2 = torch.from_numpy(np.asarray(sigma2, dtype=np.float64))
    root = _sqrt_psd((s1 + s1.T) / 2)
    middle = root @ s2 @ root
    vals = torch.linalg.eigvalsh((middle + middle.T) / 2)
    return float(vals.clamp(min=0).sqrt().sum())


def frechet_distance(a: Stats, b: Stats) -> float:
    """Fréchet distance between the Gaussians N(a.mu, a.sigma) and N(b.mu, b.sigma)."""
    if a.mu.shape != b.mu.shape or a.sigma.shape != b.sigma.shape:
        raise ValueError(f"statistics have different dimensions: {a.mu.shape[0]} vs {b.mu.shape[0]}")
    diff = np.asarray(a.mu, np.float64) - np.asarray(b.mu, np.float64)
    tr = float(np.trace(a.sigma)) + float(np.trace(b.sigma))
    if a.features is not None or b.features is not None:
        small, other = (a, b) if b.features is None or (a.features is not None and a.count <= b.count) else (b, a)
        tr_sqrt = _trace_sqrt_low_rank(small, other.sigma)
    else:
        tr_sqrt = trace_sqrt_product(a.sigma, b.sigma)
    return float(diff @ diff + tr - 2.0 * tr_sqrt)


def save_stats(path, **arrays) -> None:
    """Write an ``.npz`` (plain arrays only; ADM's key names ``mu``, ``sigma``, ``mu_s``, ``sigma_s``)."""
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)  # a killed process never leaves a half-written cache entry under the final name

"""CKNNA: centred kernel alignment restricted to mutual k-nearest neighbours (Huh et al. 2024, "The Platonic
Representation Hypothesis"), the alignment measure of REPA Fig. 2 and REG Fig. 3.

For features X (n, d1) and Y (n, d2) of the same n inputs (rows L2-normalised by default, as the paper does):

- kernels K = X X^T, L = Y Y^T (inner products);
- N_K(i, j) = 1 if j is among the ``topk`` nearest neighbours of i under K (largest K_ij, j != i), same for L;
- align(K, L) = HSIC_u(M o K, M o L) with M = N_K o N_L (o: elementwise), HSIC_u the unbiased estimator
  (Song et al. 2012, eq. 5);
- CKNNA = align(K, L) / sqrt(align(K, K) align(L, L)); align(K, K) uses the mask N_K alone.

With topk = n - 1 every off-diagonal pair is kept and CKNNA is the unbiased linear CKA. CKNNA is 1 for
identical features, about 0 for independent ones, and unchanged by rotating or scaling either side.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def hsic_unbiased(k: Tensor, l: Tensor) -> Tensor:  # noqa: E741 (the paper's name for the second kernel)
    """Song et al.'s unbiased HSIC of two (n, n) kernel matrices (their diagonals are ignored), n >= 4."""
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {n}")
    k = k.clone().fill_diagonal_(0)
    l = l.clone().fill_diagonal_(0)  # noqa: E741
    trace_kl = (k * l.T).sum()  # tr(K L)
    sums = k.sum() * l.sum() / ((n - 1) * (n - 2))  # (1^T K 1)(1^T L 1) / ((n-1)(n-2))
    cross = 2 * (k.sum(0) @ l.sum(1)) / (n - 2)  # 2 / (n-2) * 1^T K L 1
    return (trace_kl + sums - cross) / (n * (n - 3))


def knn_mask(kernel: Tensor, topk: int) -> Tensor:
    """(n, n) 0/1 mask of each row's ``topk`` largest off-diagonal entries."""
    scores = kernel.clone().fill_diagonal_(float("-inf"))  # a point is not its own neighbour
    idx = scores.topk(topk, dim=1).indices
    return torch.zeros_like(kernel).scatter_(1, idx, 1.0)


def _as_features(x: np.ndarray | Tensor, normalize: bool) -> Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).detach().to(torch.float64).cpu()
    if x.ndim != 2:
        raise ValueError(f"features must be (n, d), got shape {tuple(x.shape)}")
    return torch.nn.functional.normalize(x, dim=1) if normalize else x


def cknna(x: np.ndarray | Tensor, y: np.ndarray | Tensor, topk: int = 10, normalize: bool = True) -> float:
    """CKNNA between two (n, d) feature sets describing the same n inputs (see the module docstring)."""
    a, b = _as_features(x, normalize), _as_features(y, normalize)
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"both feature sets must describe the same inputs: {n} vs {b.shape[0]} rows")
    if not 2 <= topk <= n - 1:
        raise ValueError(f"topk must be in [2, n - 1] = [2, {n - 1}], got {topk}")
    k, l = a @ a.T, b @ b.T  # noqa: E741
    mask_k, mask_l = knn_mask(k, topk), knn_mask(l, topk)
    mutual = mask_k * mask_l
    align_kl = hsic_unbiased(mutual * k, mutual * l)
    align_kk = hsic_unbiased(mask_k * k, mask_k * k)
    align_ll = hsic_unbiased(mask_l * l, mask_l * l)
    denom = torch.sqrt(align_kk * align_ll)
    if not torch.isfinite(denom) or denom <= 0:
        return 0.0  # a degenerate side (e.g. constant features) aligns with nothing
    return float(align_kl / denom)

import itertools

import numpy as np
import pytest
import torch

from repflow.eval.cknna import cknna, hsic_unbiased, knn_mask


def _hsic_u_statistic(k, l):  # noqa: E741
    """HSIC as the U-statistic over distinct index quadruples (Song et al. 2012, before their simplification)."""
    n = k.shape[0]
    total, count = 0.0, 0
    for i, j, q, r in itertools.permutations(range(n), 4):
        h = 0.0
        for t, u, v, w in itertools.permutations((i, j, q, r)):
            h += k[t, u] * l[t, u] + k[t, u] * l[v, w] - 2 * k[t, u] * l[t, v]
        total += h / 24
        count += 1
    return total / count


def test_unbiased_hsic_equals_the_u_statistic():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((7, 3)), rng.standard_normal((7, 2))
    k, l = a @ a.T, b @ b.T  # noqa: E741
    got = hsic_unbiased(torch.from_numpy(k), torch.from_numpy(l)).item()
    assert got == pytest.approx(_hsic_u_statistic(k, l), rel=1e-9)


def test_identical_features_give_one():
    x = np.random.default_rng(1).standard_normal((120, 16))
    assert cknna(x, x.copy()) == pytest.approx(1.0, abs=1e-9)


def test_independent_random_features_give_about_zero():
    rng = np.random.default_rng(2)
    values = [cknna(rng.standard_normal((300, 32)), rng.standard_normal((300, 48))) for _ in range(3)]
    assert max(abs(v) for v in values) < 0.05


@pytest.mark.parametrize("normalize", [True, False])
def test_invariant_to_rotation_and_isotropic_scale_of_either_side(normalize):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((150, 12))
    y = x @ rng.standard_normal((12, 20)) + 0.7 * rng.standard_normal((150, 20))  # related, not identical
    q1, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    q2, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    base = cknna(x, y, topk=10, normalize=normalize)
    assert 0.1 < base < 0.99
    assert cknna(5.0 * x @ q1, y, normalize=normalize) == pytest.approx(base, abs=1e-9)
    assert cknna(x, 0.01 * y @ q2, normalize=normalize) == pytest.approx(base, abs=1e-9)
    assert cknna(3.0 * x @ q1, 2.0 * y @ q2, normalize=normalize) == pytest.approx(base, abs=1e-9)


def test_all_neighbours_reduce_to_unbiased_cka():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 7))
    y[:, :5] += x
    xt, yt = (torch.nn.functional.normalize(torch.from_numpy(a), dim=1) for a in (x, y))
    k, l = xt @ xt.T, yt @ yt.T  # noqa: E741
    cka = hsic_unbiased(k, l) / torch.sqrt(hsic_unbiased(k, k) * hsic_unbiased(l, l))
    assert cknna(x, y, topk=29) == pytest.approx(cka.item(), rel=1e-9)


def test_knn_mask_excludes_self_and_keeps_topk():
    k = torch.tensor([[9.0, 1.0, 5.0, 3.0], [1.0, 9.0, 2.0, 7.0], [5.0, 2.0, 9.0, 0.0], [3.0, 7.0, 0.0, 9.0]])
    mask = knn_mask(k, 2)
    assert mask.diagonal().sum() == 0 and (mask.sum(1) == 2).all()
    assert mask[0].tolist() == [0.0, 0.0, 1.0, 1.0]


def test_bad_inputs():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same inputs"):
        cknna(x, np.zeros((9, 3)))
    with pytest.raises(ValueError, match="topk"):
        cknna(x, x, topk=10)

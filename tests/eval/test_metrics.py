import math

import numpy as np
import pytest
import torch

from repflow._compat import import_torchvision
from repflow.eval.metrics import inception_score, manifold_radii, precision_recall


def test_is_of_uniform_predictions_is_one():
    assert inception_score(np.zeros((10, 7))) == pytest.approx(1.0)


def test_is_of_confident_distinct_predictions_is_class_count():
    logits = np.full((8, 8), -1e4)
    np.fill_diagonal(logits, 0.0)  # sample i is certainly class i: IS = number of classes
    assert inception_score(logits) == pytest.approx(8.0, rel=1e-6)


def test_is_follows_adm_consecutive_splits():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((30, 5)) * 3
    whole = [inception_score(logits[i : i + 10], split_size=10) for i in (0, 10, 20)]
    assert inception_score(logits, split_size=10) == pytest.approx(np.mean(whole))


def test_is_matches_torch_fidelity_formula():
    import_torchvision()  # torch-fidelity imports torchvision
    metric_isc = pytest.importorskip("torch_fidelity.metric_isc")
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((40, 1008)) * 4
    ref = metric_isc.isc_features_to_metric(torch.from_numpy(logits), splits=4, shuffle=False)
    assert inception_score(logits, split_size=10) == pytest.approx(ref["inception_score_mean"], rel=1e-9)


def _naive_pr(ref, gen, k):
    def radii(x):
        d = ((x[:, None] - x[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    def inside(points, manifold, r):
        return np.mean([any(((p - m) ** 2).sum() <= rm for m, rm in zip(manifold, r, strict=True)) for p in points])

    return inside(gen, ref, radii(ref)), inside(ref, gen, radii(gen))


def test_precision_recall_match_brute_force():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((40, 6))
    gen = rng.standard_normal((35, 6)) + 1.0  # shifted: both partly inside
    p, r = precision_recall(ref, gen, k=3, batch=16)  # small batch exercises the blocking
    p_naive, r_naive = _naive_pr(ref, gen, 3)
    assert (p, r) == pytest.approx((p_naive, r_naive))
    assert 0 < p < 1 and 0 < r < 1


def test_precision_recall_extremes():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20, 4))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_radii_are_kth_neighbour_excluding_self():
    pts = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    # squared distances from 0: 1, 9, 49 -> 2nd neighbour 9; from 7: 16, 36, 49 -> 36
    radii = manifold_radii(pts, k=2)
    assert radii[0].item() == 9.0 and radii[3].item() == 36.0
    with pytest.raises(ValueError, match="more than 3 points"):
        manifold_radii(pts[:3], k=3)


def test_is_rejects_bad_shapes():
    with pytest.raises(ValueError, match="logits must be"):
        inception_score(np.zeros(5))
    assert math.isfinite(inception_score(np.zeros((1, 3))))

import numpy as np
import pytest
from scipy import linalg

from repflow.eval.fid import Stats, compute_stats, frechet_distance, trace_sqrt_product


def _random_spd(rng, d, rank=None):
    a = rng.standard_normal((d, rank or d))
    return a @ a.T / d + (0 if rank else 0.1 * np.eye(d))


def test_one_dimensional_closed_form():
    # N(m1, s1^2) vs N(m2, s2^2): (m1 - m2)^2 + (s1 - s2)^2
    a = Stats(np.array([1.0]), np.array([[4.0]]))
    b = Stats(np.array([-2.0]), np.array([[9.0]]))
    assert frechet_distance(a, b) == pytest.approx(9.0 + 1.0, rel=1e-12)


def test_commuting_covariances_closed_form():
    # diagonal covariances commute: tr sqrt(S1 S2) = sum sqrt(d1 d2)
    d1, d2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 4.0])
    a, b = Stats(np.zeros(3), np.diag(d1)), Stats(np.ones(3), np.diag(d2))
    expected = 3.0 + d1.sum() + d2.sum() - 2 * np.sqrt(d1 * d2).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


def test_matches_scipy_sqrtm_on_general_covariances():
    rng = np.random.default_rng(0)
    s1, s2 = _random_spd(rng, 30), _random_spd(rng, 30)
    assert trace_sqrt_product(s1, s2) == pytest.approx(np.trace(linalg.sqrtm(s1 @ s2).real), rel=1e-9)


def test_rank_deficient_covariances_stay_finite_and_symmetric():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((10, 64)), rng.standard_normal((12, 64)) + 0.5  # N << D, as with few images
    sa, sb = compute_stats(a), compute_stats(b)
    d_ab, d_ba = frechet_distance(sa, sb), frechet_distance(sb, sa)
    assert np.isfinite(d_ab) and d_ab > 0
    assert d_ab == pytest.approx(d_ba, rel=1e-6)
    assert abs(frechet_distance(sa, sa)) < 1e-9 * np.trace(sa.sigma)


def test_low_rank_route_equals_the_general_one():
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal((9, 40)), rng.standard_normal((50, 40)) * 2 + 0.3
    sa, sb = compute_stats(a), compute_stats(b)
    assert sa.features is not None and sb.features is None  # fewer samples than dimensions keeps the features
    general = frechet_distance(Stats(sa.mu, sa.sigma), Stats(sb.mu, sb.sigma))
    assert frechet_distance(sa, sb) == pytest.approx(general, rel=1e-7)  # the general route clamps round-off
    assert frechet_distance(sb, sa) == pytest.approx(general, rel=1e-7)


def test_stats_are_mean_and_unbiased_covariance():
    x = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    s = compute_stats(x)
    np.testing.assert_allclose(s.mu, [2.0, 4.0])
    np.testing.assert_allclose(s.sigma, np.cov(x.T, ddof=1))
    assert s.count == 3


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least 2"):
        compute_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(Stats(np.zeros(2), np.eye(2)), Stats(np.zeros(3), np.eye(3)))

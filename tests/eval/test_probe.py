import numpy as np
import pytest
import torch

from repflow.eval.probe import fit_ridge, linear_probe


def _blobs(rng, n, d=10, classes=4, spread=0.3):
    centres = rng.standard_normal((classes, d)) * 3
    y = rng.integers(0, classes, n)
    return centres[y] + spread * rng.standard_normal((n, d)), y


def test_separable_classes_are_decoded():
    rng = np.random.default_rng(0)
    (tx, ty), (vx, vy) = _blobs(rng, 200), _blobs(np.random.default_rng(0), 100)
    res = linear_probe(tx, ty, vx, vy, num_classes=4)
    assert res.train_accuracy == 1.0 and res.test_accuracy > 0.97
    assert (res.num_train, res.num_test) == (200, 100)


def test_random_labels_give_chance_on_held_out_data():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((2000, 8)), rng.integers(0, 5, 2000)
    res = linear_probe(x[:1500], y[:1500], x[1500:], y[1500:], num_classes=5)
    assert abs(res.test_accuracy - 0.2) < 0.06


def test_ridge_solves_its_normal_equations():
    rng = np.random.default_rng(2)
    x, y = torch.from_numpy(rng.standard_normal((50, 6))), torch.from_numpy(rng.integers(0, 3, 50))
    lam = 0.1
    w, b, mean, scale = fit_ridge(x, y, 3, l2=lam)
    z = (x - mean) / scale
    t = torch.nn.functional.one_hot(y, 3).double()
    residual = z @ w + b - t
    grad = z.T @ residual + lam * 50 * w  # gradient of |ZW + b - T|^2 / 2 + lam n |W|^2 / 2
    assert grad.abs().max() < 1e-9
    assert residual.sum(0).abs().max() < 1e-9  # the unpenalised bias makes residuals sum to zero


def test_shape_errors():
    with pytest.raises(ValueError, match="equal d"):
        linear_probe(np.zeros((4, 3)), np.zeros(4), np.zeros((4, 2)), np.zeros(4), 2)

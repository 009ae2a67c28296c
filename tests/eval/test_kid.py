"""KID: the unbiased cubic-kernel MMD by hand, and against torch-fidelity's and clean-fid's implementations."""

import numpy as np
import pytest
import torch

from repflow._compat import import_torchvision
from repflow.eval.metrics import kernel_inception_distance, mmd2_unbiased


def test_kid_by_hand():
    # d = 2, k(a, b) = (a.b / 2 + 1)^3. X = {(1,0), (0,1)}: x1.x2 = 0 -> k = 1 off the diagonal, twice;
    # Y = {(1,1), (0,0)}: y1.y2 = 0 -> 1, twice; X-Y: x.y1 = 1 -> 1.5^3 = 3.375 (twice), x.y2 = 0 -> 1 (twice).
    # unbiased: (2 + 2) / (2 * 1) - 2 * (2 * 3.375 + 2) / 4 = 2 - 4.375
    x, y = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert mmd2_unbiased(x.double(), y.double()) == pytest.approx(-2.375, abs=1e-12)
    # subsets of the whole sets are permutations of them: every subset gives the same value, std 0
    mean, std, size = kernel_inception_distance(x, y, subsets=5, subset_size=1000)
    assert (mean, std, size) == (pytest.approx(-2.375, abs=1e-12), pytest.approx(0.0, abs=1e-12), 2)


def test_kid_of_one_point_sets_is_exact():
    # three 1-d points per set: the within-set sums leave out the diagonal, the cross sum keeps it all
    x, y = np.array([[0.0], [1.0], [2.0]]), np.array([[1.0], [1.0], [3.0]])
    k = lambda a, b: (a * b + 1) ** 3  # noqa: E731  (d = 1)
    within = sum(k(a, b) for i, a in enumerate(x[:, 0]) for j, b in enumerate(x[:, 0]) if i != j)
    within += sum(k(a, b) for i, a in enumerate(y[:, 0]) for j, b in enumerate(y[:, 0]) if i != j)
    cross = sum(k(a, b) for a in x[:, 0] for b in y[:, 0])
    expected = within / 6 - 2 * cross / 9
    assert kernel_inception_distance(x, y, subsets=3)[0] == pytest.approx(expected, rel=1e-12)


def test_kid_is_unbiased_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    a, b = rng.random((400, 16)), rng.random((400, 16))  # two draws of one distribution: E[KID] = 0
    same, std, _ = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    assert abs(same) < 3 * std + 1e-4  # a biased estimate (the diagonal kept) sits ~ 2 E[k(x,x)] / m above 0
    biased = same + 2 * np.mean(((a * a).sum(1) / 16 + 1) ** 3) / 200
    assert biased > 10 * abs(same)
    far, _, _ = kernel_inception_distance(a, b + 0.5, subsets=20, subset_size=200)
    assert far > 0.1


def test_matches_torch_fidelity_subsets_mean_and_std():
    import_torchvision()
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(1)
    gen = torch.from_numpy(rng.random((120, 32)).astype(np.float32))
    ref = torch.from_numpy((rng.random((150, 32)) * 1.1).astype(np.float32))
    theirs = metric_kid.kid_features_to_metric(gen, ref, kid_subsets=20, kid_subset_size=50, verbose=False,
                                               rng_seed=2020)  # fmt: skip
    mean, std, size = kernel_inception_distance(gen.numpy(), ref.numpy(), subsets=20, subset_size=50, seed=2020)
    assert size == 50
    # the same subsets (same seed, same draws); they compute in float32, we in float64
    assert mean == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4, abs=1e-7)
    assert std == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3, abs=1e-7)
    assert std > 0


def test_matches_clean_fid_on_whole_sets():
    import_torchvision()
    cleanfid = pytest.importorskip("cleanfid.fid")
    rng = np.random.default_rng(2)
    a, b = rng.random((60, 24)), rng.random((60, 24)) + 0.05
    theirs = cleanfid.kernel_distance(a, b, num_subsets=3, max_subset_size=60)  # whole sets: draws do not matter
    ours, _, _ = kernel_inception_distance(b, a, subsets=3, subset_size=60)
    assert ours == pytest.approx(theirs, rel=1e-9)


def test_bad_shapes_are_clear():
    with pytest.raises(ValueError, match="do not match"):
        kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((4, 3)))

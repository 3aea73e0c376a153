"""KID: parity with torch-fidelity's estimator and sampling, subset-size rules, sanity."""

from __future__ import annotations

import pytest
import torch

from geneval.errors import GenevalError
from geneval.metrics.kid import kernel_inception_distance, polynomial_mmd2


def test_matches_torch_fidelity(rng):
    from torch_fidelity.metric_kid import kid_features_to_metric

    x = rng.normal(size=(400, 48))
    y = rng.normal(size=(350, 48)) * 1.1 + 0.2
    # float64 inputs so both sides compute kernels in the same precision.
    ref = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=25, kid_subset_size=200, rng_seed=7, verbose=False)
    mean, std = kernel_inception_distance(x, y, subsets=25, subset_size=200, seed=7)
    assert mean == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-6)
    assert std == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-6)


def test_mmd2_against_double_sum(rng):
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 1
    k = lambda a, b: (a @ b / 3 + 1) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    got = polynomial_mmd2(torch.from_numpy(x), torch.from_numpy(y))
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-12)


def test_subset_size_rules(rng):
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(50, 8))
    # Explicit subset larger than N is a user error (exit 2 at the CLI).
    with pytest.raises(GenevalError, match="larger than the feature sets"):
        kernel_inception_distance(x, y, subsets=3, subset_size=40)
    with pytest.raises(GenevalError, match="at least 2"):
        kernel_inception_distance(x[:1], y, subsets=3)
    with pytest.raises(GenevalError, match="dims differ"):
        kernel_inception_distance(x, y[:, :4])
    # Default: min(1000, n1, n2) = 30, identical to asking for 30 explicitly.
    assert kernel_inception_distance(x, y, subsets=3) == kernel_inception_distance(x, y, subsets=3, subset_size=30)


def test_sanity_same_vs_shifted(rng):
    x, y = rng.normal(size=(300, 16)), rng.normal(size=(300, 16))
    same, same_std = kernel_inception_distance(x, y, subsets=20, subset_size=100, seed=1)
    shifted, _ = kernel_inception_distance(x, y + 0.5, subsets=20, subset_size=100, seed=1)
    assert abs(same) < 3 * same_std + 1e-3
    assert shifted > 10 * abs(same) and shifted > 0
    # Seeded: same seed same numbers, other seed other numbers.
    assert kernel_inception_distance(x, y, subsets=5, subset_size=50, seed=2) == kernel_inception_distance(x, y, subsets=5, subset_size=50, seed=2)
    assert kernel_inception_distance(x, y, subsets=5, subset_size=50, seed=3)[0] != same

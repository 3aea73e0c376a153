"""GaussianAccumulator / GaussianStats: exact merging, batch-size independence, numerics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.metrics.stats import GaussianAccumulator, GaussianStats


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def test_one_shot_matches_numpy(rng):
    x = rng.normal(size=(300, 16)) * rng.uniform(0.1, 3, size=16) + rng.normal(size=16)
    s = GaussianStats.from_features(x)
    assert _rel(s.mu, x.mean(0)) < 1e-12
    assert _rel(s.sigma, np.cov(x, rowvar=False)) < 1e-12
    assert s.n == 300 and s.dim == 16


@pytest.mark.parametrize("batch", [1, 7, 64, 300])
def test_batch_size_independence(rng, batch):
    x = rng.normal(size=(300, 32)) + 5.0
    ref = np.cov(x, rowvar=False)
    acc = GaussianAccumulator(32)
    for i in range(0, len(x), batch):
        acc.update(x[i : i + batch])
    assert acc.n == 300
    assert _rel(acc.mean(), x.mean(0)) < 1e-6
    assert _rel(acc.cov(), ref) < 1e-6


def test_merge_equals_one_shot_with_different_shifts(rng):
    # Shards with different means get different shifts, so merge must re-centre.
    parts = [rng.normal(size=(n, 8)) + off for n, off in ((50, 0.0), (70, 3.0), (1, -2.0), (90, 10.0))]
    whole = np.concatenate(parts)
    accs = [GaussianAccumulator(8).update(p) for p in parts]
    merged = GaussianAccumulator(8)
    for a in accs:
        merged.merge(a)
    assert merged.n == len(whole)
    assert _rel(merged.mean(), whole.mean(0)) < 1e-12
    assert _rel(merged.cov(), np.cov(whole, rowvar=False)) < 1e-12


def test_same_shift_merge_is_plain_addition(rng):
    x, y = rng.normal(size=(40, 4)), rng.normal(size=(60, 4))
    a = GaussianAccumulator(4, shift=np.zeros(4)).update(x)
    b = GaussianAccumulator(4, shift=np.zeros(4)).update(y)
    sa, sb = a.state_dict(), b.state_dict()
    a.merge(b)
    st = a.state_dict()
    np.testing.assert_array_equal(st["sum"], sa["sum"] + sb["sum"])
    np.testing.assert_array_equal(st["sum_outer"], sa["sum_outer"] + sb["sum_outer"])


def test_large_offset_keeps_digits(rng):
    # Raw Σxxᵀ − nμμᵀ would lose ~12 digits here; the shift keeps the covariance accurate.
    x = rng.normal(size=(2000, 6)) + 1e6
    acc = GaussianAccumulator(6)
    for i in range(0, 2000, 128):
        acc.update(x[i : i + 128])
    assert _rel(acc.cov(), np.cov(x, rowvar=False)) < 1e-8


def test_torch_input_and_state_roundtrip(rng):
    x = rng.normal(size=(100, 5)).astype(np.float32)
    acc = GaussianAccumulator(5).update(torch.from_numpy(x[:60])).update(x[60:])
    back = GaussianAccumulator.from_state_dict(acc.state_dict())
    np.testing.assert_array_equal(back.cov(), acc.cov())
    np.testing.assert_array_equal(back.mean(), acc.mean())
    assert back.n == 100
    assert _rel(acc.cov(), np.cov(x.astype(np.float64), rowvar=False)) < 1e-12


def test_errors(rng):
    acc = GaussianAccumulator(3)
    with pytest.raises(GenevalError, match="at least 2"):
        acc.update(rng.normal(size=(1, 3))).cov()
    with pytest.raises(GenevalError, match=r"\(B, 3\)"):
        acc.update(rng.normal(size=(4, 2)))
    with pytest.raises(GenevalError, match="non-finite"):
        acc.update(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(GenevalError, match="merge"):
        acc.merge(GaussianAccumulator(4))
    with pytest.raises(GenevalError, match="sigma"):
        GaussianStats(np.zeros(3), np.zeros((3, 2)))

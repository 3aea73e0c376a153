"""Precision/recall and density/coverage: blocks vs brute force, torch-fidelity parity, conventions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geneval.errors import GenevalError
from geneval.metrics.prdc import density_coverage, knn_radii, precision_recall


def _brute(real: np.ndarray, fake: np.ndarray, k: int):
    """Full-matrix float64 oracle of the ADM / Naeem definitions (squared distances, ≤)."""

    def sq(a, b):
        return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    d_rr, d_ff, d_rf = sq(real, real), sq(fake, fake), sq(real, fake)
    r_real = np.sort(d_rr, axis=1)[:, k]  # column 0 is the point itself
    r_fake = np.sort(d_ff, axis=1)[:, k]
    precision = (d_rf <= r_real[:, None]).any(axis=0).mean()
    recall = (d_rf <= r_fake[None, :]).any(axis=1).mean()
    density = (d_rf <= r_real[:, None]).sum() / (k * len(fake))
    coverage = (d_rf.min(axis=1) <= r_real).mean()
    return precision, recall, density, coverage


@pytest.fixture
def sets(rng):
    real = rng.normal(size=(150, 12))
    fake = rng.normal(size=(130, 12)) * 0.8 + 0.3
    return real, fake


@pytest.mark.parametrize("block", [5, 17, 64, 10000])
def test_blocks_equal_brute_force(sets, block):
    real, fake = sets
    p, r, _, _ = _brute(real, fake, 3)
    _, _, d, c = _brute(real, fake, 5)
    assert precision_recall(real, fake, k=3, block_size=block, dtype=torch.float64) == (p, r)
    assert density_coverage(real, fake, k=5, block_size=block, dtype=torch.float64) == (d, c)
    # float32 (the default) decides the same memberships on this data.
    assert precision_recall(real, fake, k=3, block_size=block) == (p, r)
    assert density_coverage(real, fake, k=5, block_size=block) == (d, c)


def test_radii_exclude_self(rng):
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    # Point 0 has neighbours at 1, 3, 6: k=1 radius 1², k=2 radius 3²; point 2 (at 3): 2, 3, 3 → 2², 3².
    np.testing.assert_array_equal(knn_radii(x, 1, block_size=2).numpy(), [1.0, 1.0, 4.0, 9.0])
    np.testing.assert_array_equal(knn_radii(x, 2, block_size=3).numpy(), [9.0, 4.0, 9.0, 25.0])


def test_matches_torch_fidelity(sets):
    from torch_fidelity.metric_prc import prc_features_to_metric

    real, fake = sets
    # torch-fidelity's prc takes (generated, real): the reversed order of ours and ADM's.
    ref = prc_features_to_metric(
        torch.from_numpy(fake).float(),
        torch.from_numpy(real).float(),
        prc_neighborhood=3,
        prc_batch_size=50,
        save_cpu_ram=True,
        verbose=False,
    )
    p, r = precision_recall(real, fake, k=3, block_size=50)
    assert p == pytest.approx(ref["precision"], abs=1e-6)
    assert r == pytest.approx(ref["recall"], abs=1e-6)


def test_mode_collapse_high_precision_low_recall(rng):
    centers = rng.normal(size=(10, 16)) * 6
    real = (centers[:, None, :] + rng.normal(size=(10, 40, 16))).reshape(-1, 16)
    fake = centers[0] + rng.normal(size=(200, 16)) * 0.5  # every sample from one mode
    p, r = precision_recall(real, fake, k=3)
    assert p > 0.9 and r < 0.2
    # Swapping the arguments swaps the meaning: the trap this API guards by fixing (real, fake).
    p_swapped, r_swapped = precision_recall(fake, real, k=3)
    assert p_swapped < 0.2 and r_swapped > 0.9
    _, coverage = density_coverage(real, fake, k=5)
    assert coverage < 0.2


def test_identical_sets_and_errors(rng):
    x = rng.normal(size=(60, 5))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert density_coverage(x, x)[1] == 1.0
    with pytest.raises(GenevalError, match="needs more than 3"):
        precision_recall(x[:3], x)
    with pytest.raises(GenevalError, match="dims differ"):
        precision_recall(x, x[:, :4])
    with pytest.raises(GenevalError, match="non-finite"):
        bad = x.copy()
        bad[0, 0] = np.inf
        density_coverage(x, bad)


def test_fp32_precision_scoped(sets):
    real, fake = sets
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        precision_recall(real, fake)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)

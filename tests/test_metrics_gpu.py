"""CUDA paths of the metric math agree with CPU (skipped without a GPU)."""

from __future__ import annotations

import numpy as np
import pytest

from geneval.metrics.fid import bootstrap_fid
from geneval.metrics.kid import kernel_inception_distance
from geneval.metrics.prdc import density_coverage, precision_recall
from geneval.metrics.stats import GaussianAccumulator, GaussianStats

pytestmark = pytest.mark.gpu


def test_cuda_matches_cpu(rng):
    import torch

    real = rng.normal(size=(3000, 64))
    fake = rng.normal(size=(2500, 64)) * 0.9 + 0.1
    for fn in (precision_recall, density_coverage):
        cpu = fn(real, fake, block_size=1000)
        gpu = fn(real, fake, block_size=1000, device="cuda")
        # Same memberships up to a handful of points whose distance ties a radius within fp32 rounding.
        assert np.allclose(cpu, gpu, atol=2e-3), (fn.__name__, cpu, gpu)
    assert np.allclose(
        kernel_inception_distance(real, fake, subsets=10, device="cuda"),
        kernel_inception_distance(real, fake, subsets=10),
        rtol=1e-9,
    )
    acc = GaussianAccumulator(64, device="cuda")
    for i in range(0, 2500, 333):
        acc.update(torch.from_numpy(fake[i : i + 333]).float().cuda())
    ref = np.cov(fake.astype(np.float32).astype(np.float64), rowvar=False)
    assert np.abs(acc.cov() - ref).max() / np.abs(ref).max() < 1e-9
    stats = GaussianStats.from_features(real)
    assert np.allclose(bootstrap_fid(fake, stats, 5, seed=1, device="cuda"), bootstrap_fid(fake, stats, 5, seed=1))

"""FID: parity with pytorch-fid and torch-fidelity, closed forms, routes, guards, bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from geneval.errors import GenevalError
from geneval.metrics.fid import (
    bootstrap_fid,
    fid_from_features,
    frechet_distance,
    frechet_distance_sqrtm,
)
from geneval.metrics.stats import GaussianStats


def _two_sets(rng, d=64, n1=400, n2=300):
    x = rng.normal(size=(n1, d))
    y = rng.normal(size=(n2, d)) @ (np.eye(d) + 0.2 * rng.normal(size=(d, d))) + 0.3
    return x, y


def test_matches_pytorch_fid(rng, monkeypatch):
    # pytorch-fid 0.3.0 calls sqrtm(..., disp=False), which SciPy 1.18 removed (TypeError) and
    # 1.17 deprecates. Run its formula with sqrtm wrapped to drop `disp` and return the
    # (sqrtm, error-estimate) pair it unpacks; everything else is pytorch-fid's own code.
    from pytorch_fid.fid_score import calculate_frechet_distance

    real_sqrtm = scipy.linalg.sqrtm

    def sqrtm_without_disp(a, disp=True, **kw):
        root = real_sqrtm(a, **kw)
        return root if disp else (root, 0.0)

    monkeypatch.setattr(scipy.linalg, "sqrtm", sqrtm_without_disp)
    x, y = _two_sets(rng)
    a, b = GaussianStats.from_features(x), GaussianStats.from_features(y)
    ref = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    ours = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    assert abs(ours - ref) / abs(ref) < 1e-6


def test_matches_torch_fidelity(rng):
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    x, y = _two_sets(rng)
    s1 = fid_features_to_statistics(torch.from_numpy(x))
    s2 = fid_features_to_statistics(torch.from_numpy(y))
    ref = fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
    assert abs(fid_from_features(x, y) - ref) / abs(ref) < 1e-6
    # torch-fidelity's statistics and ours are the same statistics.
    ours = GaussianStats.from_features(x)
    assert np.abs(ours.sigma - s1["sigma"]).max() < 1e-12


def test_eigh_and_sqrtm_routes_agree(rng):
    x, y = _two_sets(rng, d=64)
    a, b = GaussianStats.from_features(x), GaussianStats.from_features(y)
    e = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    s = frechet_distance_sqrtm(a.mu, a.sigma, b.mu, b.sigma)
    assert abs(e - s) / abs(s) < 1e-9


def test_closed_forms(rng):
    d = 20
    m = rng.normal(size=(d, d))
    sigma = m @ m.T / d + np.eye(d) * 0.1
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # Equal covariances: the trace terms cancel and FID is the squared mean distance.
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(float(((mu1 - mu2) ** 2).sum()), rel=1e-9)
    # Scaled covariance: tr Σ + c²tr Σ − 2c tr Σ = (1−c)² tr Σ.
    c = 1.7
    expect = (1 - c) ** 2 * np.trace(sigma)
    assert frechet_distance(mu1, sigma, mu1, c * c * sigma) == pytest.approx(expect, rel=1e-9)
    x = rng.normal(size=(200, d))
    assert abs(fid_from_features(x, x)) < 1e-9 * np.trace(np.cov(x, rowvar=False))


def test_singular_covariance_n_below_dims(rng):
    # N < d: Σ is singular; the eigh route stays finite and agrees with the sqrtm route.
    x, y = rng.normal(size=(20, 48)), rng.normal(size=(30, 48)) + 0.5
    a, b = GaussianStats.from_features(x), GaussianStats.from_features(y)
    e = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    s = frechet_distance_sqrtm(a.mu, a.sigma, b.mu, b.sigma)
    assert np.isfinite(e) and abs(e - s) / abs(s) < 1e-6


def test_guards(rng):
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(GenevalError, match="equal length"):
        frechet_distance(mu, sigma, np.zeros(5), np.eye(5))
    with pytest.raises(GenevalError, match="sigma2"):
        frechet_distance(mu, sigma, mu, np.eye(3))
    bad = sigma.copy()
    bad[0, 0] = np.inf
    with pytest.raises(GenevalError, match="non-finite"):
        frechet_distance(mu, bad, mu, sigma)
    with pytest.raises(GenevalError, match="non-finite"):
        frechet_distance(np.array([np.nan, 0, 0, 0]), sigma, mu, sigma)


def test_bootstrap_fid(rng):
    x, y = _two_sets(rng, d=16, n1=300, n2=300)
    ref = GaussianStats.from_features(y)
    m1, s1 = bootstrap_fid(x, ref, n_boot=30, seed=3)
    m2, s2 = bootstrap_fid(x, ref, n_boot=30, seed=3)
    assert (m1, s1) == (m2, s2)
    assert s1 > 0
    point = fid_from_features(x, y)
    # Resampling adds within-sample noise, so the bootstrap mean sits near (above) the point value.
    assert abs(m1 - point) < 5 * s1 + 0.2 * point
    # Brute force: two resamples drawn by explicit indexing from the same generator.
    g = np.random.default_rng(11)
    brute = [fid_from_features(x[g.integers(0, len(x), size=len(x))], y) for _ in range(2)]
    mean2, std2 = bootstrap_fid(x, ref, n_boot=2, seed=11)
    assert mean2 == pytest.approx(np.mean(brute), rel=1e-9)
    assert std2 == pytest.approx(np.std(brute, ddof=1), rel=1e-6)

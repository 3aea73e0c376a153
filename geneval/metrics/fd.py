"""Fréchet distance on any feature network's features (FD-DINOv2, FD-CLIP…): FID's math, another feature.

The distance itself is `geneval.metrics.fid.frechet_distance`; this module adds a reference-side
cache (`FrechetToReference`) for the callers that compare many sample statistics with one
reference (FD∞'s 15 subsets, bootstrap resamples, per-class rows), so √Σ_ref is computed once.
Streaming: needs only n, Σx, Σxxᵀ per side (`geneval.metrics.stats.GaussianAccumulator`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.metrics.fid import fid_from_stats, frechet_distance, sqrt_psd
from geneval.metrics.stats import GaussianStats


class FrechetToReference:
    """Fréchet distances of many (μ, Σ) to one fixed reference; √Σ_ref is computed once.

    d² = ‖μ−μ_ref‖² + tr Σ + tr Σ_ref − 2 Σ √λ(A Σ A), A = √Σ_ref: the eigh route of
    `geneval.metrics.fid.frechet_distance` (tr √(Σ_ref Σ) = tr √(A Σ A)), equal to it to rounding.

    Args:
        ref: reference statistics.
    """

    def __init__(self, ref: GaussianStats):
        self.ref = ref
        self._a = sqrt_psd(ref.sigma)
        self._tr_ref = float(np.trace(ref.sigma))

    def __call__(self, mu: Any, sigma: Any) -> float:
        """FD of (mu, sigma) to the reference.

        Args:
            mu: (d,) mean.
            sigma: (d, d) covariance.
        """
        mu = np.asarray(mu, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
        if mu.shape != self.ref.mu.shape or sigma.shape != self.ref.sigma.shape:
            raise GenevalError(f"FD: statistics of dim {mu.shape[-1]} against a reference of dim {self.ref.dim}")
        m = self._a @ sigma @ self._a
        lam = np.linalg.eigvalsh(0.5 * (m + m.T))
        diff = mu - self.ref.mu
        return float(diff @ diff + np.trace(sigma) + self._tr_ref - 2.0 * np.sqrt(np.clip(lam, 0.0, None)).sum())


def fd(sample: Any, ref: Any) -> float:
    """Fréchet distance between two feature sets or two GaussianStats (any network's features).

    Args:
        sample: (N, d) sample features or their GaussianStats.
        ref: (M, d) reference features or their GaussianStats.
    """
    a = sample if isinstance(sample, GaussianStats) else GaussianStats.from_features(sample)
    b = ref if isinstance(ref, GaussianStats) else GaussianStats.from_features(ref)
    return fid_from_stats(a, b)


__all__ = ["FrechetToReference", "fd", "frechet_distance"]

SPEC = {
    "name": "fd",
    "fn": fd,
    "needs": "any feature (one FD per network: fd_dinov2 on dinov2_cls, fd_clip on clip_embed; fid = fd on pool3)",
    "needs_ref": True,
    "higher_is_better": False,
    "min_n": 2,
    "stats_suffice": True,
    "streaming": "sums: n, Σx, Σxxᵀ per side (GaussianAccumulator); merges exactly across batches and ranks",
}

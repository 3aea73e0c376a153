"""Bootstrap confidence intervals (``--ci 0.95``) for FD/FID and precision, recall, density, coverage.

Sample rows are resampled with replacement (B draws of N row indices from a seeded
np.random.default_rng); the reference is held fixed, as a reference statistics file is. The
interval is the percentile interval of the B values at (1−ci)/2 and (1+ci)/2 (np.quantile,
linear), reported with the point value on the full set and the bootstrap std.

FD without copying rows: a resample is a count vector c (c_i = times row i was drawn), and its
statistics are weighted sums, μ* = cᵀX/N and Σ* = (Xᵀdiag(c)X − N μ*μ*ᵀ)/(N−1) (rows centred
once for precision), followed by one eigvalsh against the cached √Σ_ref
(`geneval.metrics.fd.FrechetToReference`); `geneval.metrics.fid.bootstrap_fid` uses the same
route for its mean/std. The k-NN metrics need the resampled rows themselves
(`geneval.metrics.prdc` on X[idx]); duplicated rows shrink the samples' k-NN radii, so recall and
coverage intervals lean low: a known limit of bootstrapping k-NN estimators.

Streaming: FD's bootstrap needs the sample rows (or, for the counts route, rows on one device)
and the reference sums; PRDC's needs rows on both sides.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.fd import FrechetToReference
from geneval.metrics.prdc import density_coverage, precision_recall
from geneval.metrics.stats import GaussianStats, as_feature_matrix

PRDC_METRICS = ("precision", "recall", "density", "coverage")
METRICS = ("fd", *PRDC_METRICS)


def percentile_interval(values: Any, ci: float = 0.95) -> tuple[float, float]:
    """(lo, hi) percentile interval of bootstrap values.

    Args:
        values: bootstrap replicates.
        ci: coverage, in (0, 1).
    """
    if not 0.0 < ci < 1.0:
        raise GenevalError(f"--ci must be in (0, 1), e.g. 0.95; got {ci}")
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    return float(lo), float(hi)


def _draws(n: int, n_boot: int, seed: int) -> list[np.ndarray]:
    if int(n_boot) < 2:
        raise GenevalError(f"bootstrap needs n_boot ≥ 2, got {n_boot}")
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=n) for _ in range(int(n_boot))]


def bootstrap_fd_values(sample: Any, ref: Any, draws: list[np.ndarray], device: str | torch.device = "cpu") -> np.ndarray:
    """FD of each resample (given as row-index draws) to fixed reference statistics, via count weights.

    Args:
        sample: (N, d) sample features.
        ref: reference GaussianStats or (M, d) features.
        draws: index arrays of length N (rows drawn with replacement).
        device: where the float64 weighted sums run.
    """
    x = as_feature_matrix(sample, "bootstrap sample features")
    n = x.shape[0]
    if n < 2:
        raise GenevalError(f"bootstrap FD needs at least 2 sample rows, got {n}")
    ref_stats = ref if isinstance(ref, GaussianStats) else GaussianStats.from_features(ref)
    dist = FrechetToReference(ref_stats)
    center = x.mean(axis=0)
    xc = torch.from_numpy(x - center).to(device)
    out = np.empty(len(draws))
    for b, idx in enumerate(draws):
        c = torch.from_numpy(np.bincount(idx, minlength=n).astype(np.float64)).to(device)
        m = (c @ xc) / n
        sigma = ((xc * c[:, None]).T @ xc - n * torch.outer(m, m)) / (n - 1)
        out[b] = dist(m.cpu().numpy() + center, sigma.cpu().numpy())
    return out


def bootstrap_ci(
    sample: Any,
    ref: Any,
    metrics: tuple[str, ...] = METRICS,
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    k_pr: int = 3,
    k_dc: int = 5,
    device: str | torch.device = "cpu",
) -> dict[str, dict]:
    """Point value, percentile CI and bootstrap std of each metric; all metrics share the same draws.

    Args:
        sample: (N, d) sample features.
        ref: (M, d) reference features (GaussianStats is enough when metrics is just ("fd",)).
        metrics: any of fd, precision, recall, density, coverage.
        n_boot: number of resamples (≥ 2; 200+ for 95 % intervals).
        ci: interval coverage, e.g. 0.95.
        seed: seed of the resampling generator.
        k_pr: k of precision/recall (3, ADM).
        k_dc: k of density/coverage (5, Naeem et al.).
        device: where the sums and k-NN distances run.
    Returns:
        {metric: {"value", "lo", "hi", "std", "n_boot", "ci", "seed"}}.
    """
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise GenevalError(f"no bootstrap for {', '.join(unknown)}: choose from {', '.join(METRICS)}")
    percentile_interval([0.0, 1.0], ci)  # validates ci before any work
    x = as_feature_matrix(sample, "bootstrap sample features")
    draws = _draws(x.shape[0], n_boot, seed)
    values: dict[str, list[float] | np.ndarray] = {}
    point: dict[str, float] = {}
    if "fd" in metrics:
        ref_stats = ref if isinstance(ref, GaussianStats) else GaussianStats.from_features(ref)
        point["fd"] = FrechetToReference(ref_stats)(*_mean_cov(x))
        values["fd"] = bootstrap_fd_values(x, ref_stats, draws, device)
    wanted = [m for m in PRDC_METRICS if m in metrics]
    if wanted:
        if isinstance(ref, GaussianStats):
            raise GenevalError("bootstrap of precision/recall/density/coverage needs reference feature rows, not statistics")
        r = as_feature_matrix(ref, "bootstrap reference features")
        point.update(_prdc(r, x, wanted, k_pr, k_dc, device))
        reps = [_prdc(r, x[idx], wanted, k_pr, k_dc, device) for idx in draws]
        values.update({m: [rep[m] for rep in reps] for m in wanted})
    out = {}
    for m in metrics:
        lo, hi = percentile_interval(values[m], ci)
        out[m] = {
            "value": point[m],
            "lo": lo,
            "hi": hi,
            "std": float(np.std(values[m], ddof=1)),
            "n_boot": int(n_boot),
            "ci": float(ci),
            "seed": int(seed),
        }
    return out


def _mean_cov(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = GaussianStats.from_features(x)
    return s.mu, s.sigma


def _prdc(real: np.ndarray, fake: np.ndarray, wanted: list[str], k_pr: int, k_dc: int, device) -> dict[str, float]:
    out: dict[str, float] = {}
    if "precision" in wanted or "recall" in wanted:
        out["precision"], out["recall"] = precision_recall(real, fake, k=k_pr, device=device)
    if "density" in wanted or "coverage" in wanted:
        out["density"], out["coverage"] = density_coverage(real, fake, k=k_dc, device=device)
    return {m: out[m] for m in wanted}


SPEC = {
    "name": "ci",
    "fn": bootstrap_ci,
    "needs": "the features of the metrics it wraps (fd: any feature; precision/recall/density/coverage: pool3 rows)",
    "needs_ref": True,
    "higher_is_better": None,
    "min_n": 2,
    "stats_suffice": False,
    "streaming": "rows of the samples; reference sums for FD, reference rows for PRDC",
}

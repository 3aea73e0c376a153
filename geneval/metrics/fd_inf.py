"""FID∞ / FD∞ (Chong & Forsyth, CVPR 2020): FD extrapolated to infinitely many samples.

FD_N is biased upwards roughly as c/N. As in their reference ``calculate_FID_infinity``: FD_N at
15 values N = linspace(5000, 50000) — here scaled to the rows available: linspace(N_max/10,
N_max), N_max = min(N, 50000) — each on a random subset of N rows drawn without replacement
(a fresh seeded permutation per N), against the fixed reference statistics; least squares of
FD_N on 1/N; the intercept is FD∞. The fit's residual (RMS of FD_N − fit) is reported with it:
a residual comparable to the spread of FD_N says the 1/N model does not hold at these N.

Streaming: needs the sample rows (subsets) and only the reference sums. `nested=True` uses
prefixes of one permutation instead, so all 15 covariances come from one pass over the rows
(cheaper; the points are then correlated, which leaves the intercept unbiased but makes the
residual look smaller than with independent subsets).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.fd import FrechetToReference
from geneval.metrics.stats import GaussianStats, as_feature_matrix

N_POINTS = 15
PAPER_N = (5000, 50000)
MIN_N = 50


def subset_sizes(n_rows: int, n_points: int = N_POINTS) -> np.ndarray:
    """The N values: linspace(5000, 50000, 15) scaled down to n_rows (max N = min(n_rows, 50000)).

    Args:
        n_rows: feature rows available.
        n_points: number of N values.
    """
    hi = min(int(n_rows), PAPER_N[1])
    lo = hi * PAPER_N[0] // PAPER_N[1]
    ns = np.unique(np.linspace(lo, hi, n_points).astype(np.int64))
    if len(ns) < 3 or lo < 2:
        raise GenevalError(f"FD∞ needs at least {MIN_N} sample rows for distinct subset sizes, got {n_rows}")
    return ns


def _stats(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    mu = x.mean(dim=0)
    xc = x - mu
    return mu.cpu().numpy(), ((xc.T @ xc) / (n - 1)).cpu().numpy()


def fd_inf(
    sample: Any,
    ref: Any,
    n_points: int = N_POINTS,
    seed: int = 0,
    nested: bool = False,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """FD∞: intercept of the least-squares line FD_N = FD∞ + slope/N, with the fit's residual.

    Args:
        sample: (N, d) sample features, N ≥ 50.
        ref: reference GaussianStats or (M, d) reference features.
        n_points: number of subset sizes (15 in the paper).
        seed: seed of the subset draws (np.random.default_rng).
        nested: prefixes of one permutation instead of independent subsets (see module docstring).
        device: where the float64 covariances are computed.
    Returns:
        dict with fd_inf (intercept), slope, residual_rms, r2, n (the N values) and fd_n (FD_N values).
    """
    x = as_feature_matrix(sample, "FD∞ sample features")
    if x.shape[0] < MIN_N:
        raise GenevalError(f"FD∞ needs at least {MIN_N} sample rows, got {x.shape[0]}")
    ref_stats = ref if isinstance(ref, GaussianStats) else GaussianStats.from_features(ref)
    dist = FrechetToReference(ref_stats)
    ns = subset_sizes(x.shape[0], n_points)
    rng = np.random.default_rng(seed)
    xt = torch.from_numpy(x).to(device)
    perm = rng.permutation(x.shape[0]) if nested else None
    values = []
    for n in ns:
        idx = perm[:n] if nested else rng.permutation(x.shape[0])[:n]
        mu, sigma = _stats(xt[torch.from_numpy(np.sort(idx)).to(xt.device)])
        values.append(dist(mu, sigma))
    fd_n = np.asarray(values)
    design = np.stack([np.ones(len(ns)), 1.0 / ns], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, fd_n, rcond=None)
    resid = fd_n - design @ np.array([intercept, slope])
    ss_tot = float(((fd_n - fd_n.mean()) ** 2).sum())
    return {
        "fd_inf": float(intercept),
        "slope": float(slope),
        "residual_rms": float(np.sqrt(np.mean(resid**2))),
        "r2": float(1.0 - (resid**2).sum() / ss_tot) if ss_tot > 0 else 1.0,
        "n": ns.tolist(),
        "fd_n": fd_n.tolist(),
        "seed": int(seed),
        "nested": bool(nested),
    }


SPEC = {
    "name": "fd_inf",
    "fn": fd_inf,
    "needs": "any feature (fid_inf on pool3, fd_inf on dinov2_cls…)",
    "needs_ref": True,
    "higher_is_better": False,
    "min_n": MIN_N,
    "stats_suffice": False,
    "streaming": "rows of the samples (subsets), sums of the reference",
}

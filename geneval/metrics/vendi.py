"""Vendi score (Friedman & Dieng 2023) as dgm-eval computes it: linear kernel on L2-normalised rows.

VS = exp(−Σ λ_i log λ_i), λ the eigenvalues of K/n with K = X̂X̂ᵀ (X̂: rows divided by their
norm). K/n and X̂ᵀX̂/n share their non-zero eigenvalues (Gram trick), so the d×d matrix is used
when d < n: O(n d²) instead of O(n³), and streaming needs only n and Σ x̂x̂ᵀ (a d×d float64 sum,
mergeable like the FID sums). λ sums to 1 (unit rows), so VS runs from 1 (all rows parallel)
to min(n, d). Per class: the same on each class's rows (dgm-eval ``compute_per_class_vendi_scores``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.metrics.stats import as_feature_matrix


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GenevalError(f"Vendi: {int((norms == 0).sum())} feature rows are all zero and cannot be L2-normalised")
    return x / norms


def vendi_from_eigenvalues(lam: np.ndarray) -> float:
    """exp of the Shannon entropy of the eigenvalues (zeros and rounding negatives dropped).

    Args:
        lam: eigenvalues of K/n (they sum to 1).
    """
    p = lam[lam > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def vendi_from_gram(gram_sum: Any, n: int) -> float:
    """Vendi from the streamed sum Σ x̂x̂ᵀ over n unit rows.

    Args:
        gram_sum: (d, d) sum of outer products of L2-normalised rows.
        n: number of rows summed.
    """
    g = np.asarray(gram_sum, dtype=np.float64) / int(n)
    return vendi_from_eigenvalues(np.linalg.eigvalsh(0.5 * (g + g.T)))


def vendi(feats: Any, normalize: bool = True) -> float:
    """Vendi score (q = 1, linear kernel) of one feature set.

    Args:
        feats: (N, d) features, N ≥ 1.
        normalize: L2-normalise rows first (dgm-eval's default; the kernel then has a unit diagonal).
    """
    x = as_feature_matrix(feats, "Vendi features")
    if x.shape[0] < 1:
        raise GenevalError("Vendi needs at least one feature row")
    if normalize:
        x = _unit_rows(x)
    n, d = x.shape
    m = (x.T @ x) if d < n else (x @ x.T)
    m = m / n
    return vendi_from_eigenvalues(np.linalg.eigvalsh(0.5 * (m + m.T)))


def vendi_per_class(feats: Any, labels: Any, normalize: bool = True) -> dict[str, Any]:
    """Vendi of each class's rows, plus the overall score and the per-class mean.

    Args:
        feats: (N, d) features.
        labels: (N,) integer class labels.
        normalize: as in `vendi`.
    """
    x = as_feature_matrix(feats, "Vendi features")
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise GenevalError(f"Vendi: {x.shape[0]} feature rows but {y.shape[0]} labels")
    per = {int(c): vendi(x[y == c], normalize) for c in np.unique(y)}
    return {
        "vendi": vendi(x, normalize),
        "per_class": per,
        "mean_per_class": float(np.mean(list(per.values()))),
    }


SPEC = {
    "name": "vendi",
    "fn": vendi,
    "needs": "any feature (dgm-eval reports it on dinov2_cls)",
    "needs_ref": False,
    "higher_is_better": True,
    "min_n": 1,
    "stats_suffice": False,
    "streaming": "sums: n and Σ x̂x̂ᵀ of L2-normalised rows (vendi_from_gram); per class: one such sum per class, or rows",
}

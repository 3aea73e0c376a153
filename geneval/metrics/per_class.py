"""Per-class FID/FD: class-conditional samples against a labelled reference, class by class.

For each class c present on both sides: FD(samples with label c, reference images of class c).
Reported: one row per class (n_sample, n_ref, fd), the mean over classes and the worst class.
Labels come from the sampler (the class each sample was drawn for) and from the reference
(Fashion-MNIST labels, ADM reference batches' ``arr_1``). With few rows per class (ImageNet: 50
samples per class against 2048-d pool3) each class's covariance is rank-deficient and its FD
strongly N-biased: compare per-class values only at equal N per class.

Streaming: per-class sums (n, Σx, Σxxᵀ for each class: C·d² floats, e.g. 10 × 2048² × 8 B =
335 MB for Fashion-MNIST; too big for 1000 ImageNet classes at 2048-d) or the rows with labels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.metrics.fid import fid_from_stats
from geneval.metrics.stats import GaussianStats, as_feature_matrix

MIN_PER_CLASS = 2


def class_stats(feats: Any, labels: Any, what: str = "features") -> dict[int, GaussianStats]:
    """GaussianStats of each class's rows (classes with fewer than 2 rows are left out).

    Args:
        feats: (N, d) features.
        labels: (N,) integer labels.
        what: how errors name the input.
    """
    x = as_feature_matrix(feats, what)
    y = np.asarray(labels).reshape(-1)
    if y.shape[0] != x.shape[0]:
        raise GenevalError(f"{what}: {x.shape[0]} rows but {y.shape[0]} labels")
    return {int(c): GaussianStats.from_features(x[y == c]) for c in np.unique(y) if (y == c).sum() >= MIN_PER_CLASS}


def fd_per_class_from_stats(sample: Mapping[int, GaussianStats], ref: Mapping[int, GaussianStats]) -> dict[str, Any]:
    """Per-class FD from per-class statistics (e.g. merged per-class accumulators).

    Args:
        sample: class → statistics of that class's samples.
        ref: class → statistics of that class's reference images.
    """
    classes = sorted(set(sample) & set(ref))
    if not classes:
        raise GenevalError(
            f"per-class FID: no class has ≥ {MIN_PER_CLASS} rows on both sides "
            f"(sample classes {sorted(sample)[:5]}…, reference classes {sorted(ref)[:5]}…)"
        )
    rows = [
        {
            "class": c,
            "n_sample": sample[c].n,
            "n_ref": ref[c].n,
            "fd": fid_from_stats(sample[c], ref[c]),
        }
        for c in classes
    ]
    worst = max(rows, key=lambda r: r["fd"])
    return {
        "rows": rows,
        "mean": float(np.mean([r["fd"] for r in rows])),
        "worst_class": worst["class"],
        "worst": worst["fd"],
        "missing_in_ref": sorted(set(sample) - set(ref)),
        "missing_in_sample": sorted(set(ref) - set(sample)),
    }


def fid_per_class(sample: Any, sample_labels: Any, ref: Any, ref_labels: Any) -> dict[str, Any]:
    """Per-class FD of labelled samples against a labelled reference: rows, mean and worst class.

    Args:
        sample: (N, d) sample features (pool3 for FID, any network's features for FD).
        sample_labels: (N,) class each sample was generated for.
        ref: (M, d) reference features.
        ref_labels: (M,) reference labels.
    """
    return fd_per_class_from_stats(
        class_stats(sample, sample_labels, "sample features"),
        class_stats(ref, ref_labels, "reference features"),
    )


SPEC = {
    "name": "fid_per_class",
    "fn": fid_per_class,
    "needs": "any feature + labels on both sides (pool3 for FID; the sampler's labels, the reference's labels)",
    "needs_ref": True,
    "higher_is_better": False,
    "min_n": MIN_PER_CLASS,
    "stats_suffice": True,
    "streaming": "per-class sums (C·d² floats) or labelled rows; value reported: mean over classes, plus rows and worst",
}

"""Memorization against a training-set reference: AuthPct and nearest-train-neighbour distances.

AuthPct (dgm-eval ``compute_authpct``, after Alaa et al. 2022): for each sample, find its nearest
training feature t (Euclidean); the sample is authentic when its distance to t is larger than
t's distance to its own nearest other training feature (strict >, as dgm-eval). AuthPct is the
percentage of authentic samples (100 = nothing closer to the training set than training
points are to each other). The nearest-train-neighbour distances themselves are summarised
(min, 1st/5th percentile, median, mean) and the indices of the closest samples kept, to look at.

Distances are ‖u‖² − 2uᵀv + ‖v‖² in row × column blocks (`geneval.metrics.prdc`), so no
N×M matrix is held; the train-train radius is prdc's k-NN radius with k = 1.
Streaming: needs the rows of both sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.prdc import distance_blocks, full_fp32_matmul, as_pair, knn_radii


def nearest_train(
    train: Any,
    sample: Any,
    block_size: int = 10000,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared distance from each sample to its nearest training row, and that row's index.

    Args:
        train: (M, d) training-set features.
        sample: (N, d) sample features.
        block_size: rows/columns per distance block.
        device: where to compute (default: CPU for numpy input).
        dtype: float32 (dgm-eval's) or float64.
    """
    t, s = as_pair(train, sample, device, dtype, 1, block_size)
    best = torch.full((s.shape[0],), float("inf"), dtype=dtype, device=t.device)
    arg = torch.zeros(s.shape[0], dtype=torch.int64, device=t.device)
    with torch.no_grad(), full_fp32_matmul():
        for rows, cols, d in distance_blocks(t, s, block_size):
            v, i = d.min(dim=0)
            better = v < best[cols]
            best[cols] = torch.where(better, v, best[cols])
            arg[cols] = torch.where(better, i + rows.start, arg[cols])
    return best, arg


def memorization(
    train: Any,
    sample: Any,
    block_size: int = 10000,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    n_closest: int = 10,
) -> dict[str, Any]:
    """AuthPct and nearest-train-neighbour distance statistics of samples against a training set.

    Args:
        train: (M, d) training-set features, M ≥ 2.
        sample: (N, d) sample features.
        block_size: rows/columns per distance block.
        device: where to compute.
        dtype: float32 (as dgm-eval) or float64.
        n_closest: how many of the closest samples (index, train index, distance) to list.
    """
    t, s = as_pair(train, sample, device, dtype, 1, block_size)
    if t.shape[0] < 2:
        raise GenevalError(f"AuthPct needs at least 2 training rows, got {t.shape[0]}")
    d2, nn = nearest_train(t, s, block_size, t.device, dtype)
    with torch.no_grad(), full_fp32_matmul():
        train_r2 = knn_radii(t, 1, block_size)  # each training row's nearest other training row
    authentic = d2 > train_r2[nn]  # squared distances keep the order of dgm-eval's cdist comparison
    dist = d2.clamp_min(0).sqrt().double().cpu().numpy()
    order = np.argsort(dist, kind="stable")[:n_closest]
    nn_np = nn.cpu().numpy()
    return {
        "authpct": float(100.0 * authentic.double().mean()),
        "nn_dist_min": float(dist.min()),
        "nn_dist_p01": float(np.quantile(dist, 0.01)),
        "nn_dist_p05": float(np.quantile(dist, 0.05)),
        "nn_dist_median": float(np.median(dist)),
        "nn_dist_mean": float(dist.mean()),
        "train_nn_dist_median": float(train_r2.clamp_min(0).sqrt().double().median()),
        "closest": [{"sample": int(i), "train": int(nn_np[i]), "dist": float(dist[i])} for i in order],
    }


def authpct(train: Any, sample: Any, **kwargs: Any) -> float:
    """Percentage of authentic samples (dgm-eval AuthPct); kwargs as in `memorization`.

    Args:
        train: (M, d) training-set features.
        sample: (N, d) sample features.
    """
    return memorization(train, sample, **kwargs)["authpct"]


SPEC = {
    "name": "authpct",
    "fn": authpct,
    "needs": "any feature (dgm-eval: dinov2_cls) of the samples and of a TRAINING-set reference",
    "needs_ref": True,
    "higher_is_better": True,
    "min_n": 1,
    "stats_suffice": False,
    "streaming": "rows of both sets (block-wise nearest neighbours)",
}
NN_SPEC = {
    "name": "nn_train_dist",
    "fn": memorization,
    "needs": SPEC["needs"],
    "needs_ref": True,
    "higher_is_better": True,
    "min_n": 1,
    "stats_suffice": False,
    "streaming": SPEC["streaming"],
}

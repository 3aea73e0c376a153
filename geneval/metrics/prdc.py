"""k-NN manifold metrics: precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).

Semantics follow ADM's ManifoldEstimator: each point's radius is the distance to its k-th
nearest neighbour within its own set (itself not counted); a point lies inside a manifold if its
distance to at least one of the manifold's points is ≤ that point's radius. Precision = share of
samples inside the reference manifold; recall = share of reference points inside the sample
manifold. Argument order is always (real, fake) — the reversed order is the trap of
torch-fidelity#58, whose prc takes (generated, real) — and a mode-collapsed sample set must give
high precision, low recall (tested).

Distances are squared Euclidean, ‖u‖² − 2uᵀv + ‖v‖² clamped at 0, computed in float32 by default
(ADM: fp16 with an fp32 fallback; we do not copy the fp16 step, whose ~1e-3 relative error moves
points near a radius across it). Everything runs in row × column blocks, so no N×N matrix
is ever held (50k × 50k would be 10 GB): radii keep a running top-(k+1) per row.
Density/coverage use ≤ as well (Naeem's code uses <; the two differ only on ties, where < gives 0
on discrete data).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError


def _as_tensor(x: Any, what: str, device: str | torch.device | None, dtype: torch.dtype) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    if t.ndim != 2:
        raise GenevalError(f"{what} must be a 2-d (N, d) array, got shape {tuple(t.shape)}")
    t = t.to(device=device if device is not None else t.device, dtype=dtype)
    if not torch.isfinite(t).all():
        raise GenevalError(f"{what} contain non-finite values")
    return t


def as_pair(real: Any, fake: Any, device, dtype, k: int, block_size: int):
    if dtype not in (torch.float32, torch.float64):
        raise GenevalError(f"k-NN distances run in float32 or float64, got {dtype}")
    if block_size < 1:
        raise GenevalError(f"block size must be ≥ 1, got {block_size}")
    r = _as_tensor(real, "reference features", device, dtype)
    f = _as_tensor(fake, "sample features", r.device, dtype)
    if r.shape[1] != f.shape[1]:
        raise GenevalError(f"feature dims differ: reference {r.shape[1]}, samples {f.shape[1]}")
    if k < 1:
        raise GenevalError(f"k must be ≥ 1, got {k}")
    return r, f


@contextmanager
def full_fp32_matmul():
    """Scoped: keep float32 matmuls in full precision; TF32 (~1e-3) would move points across radii."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def distance_blocks(a: torch.Tensor, b: torch.Tensor, block_size: int) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """Yield (rows, cols, squared distances) over all row × column blocks of a against b."""
    na = (a * a).sum(dim=1)
    nb = (b * b).sum(dim=1)
    for i in range(0, a.shape[0], block_size):
        rows = slice(i, min(i + block_size, a.shape[0]))
        for j in range(0, b.shape[0], block_size):
            cols = slice(j, min(j + block_size, b.shape[0]))
            d = na[rows, None] - 2.0 * (a[rows] @ b[cols].T) + nb[None, cols]
            yield rows, cols, d.clamp_min_(0.0)


def knn_radii(x: torch.Tensor, k: int, block_size: int = 10000) -> torch.Tensor:
    """Squared distance of each row to its k-th nearest neighbour in x, itself not counted.

    Args:
        x: (N, d) features, N > k.
        k: neighbourhood size.
        block_size: rows and columns per distance block.
    """
    n = x.shape[0]
    if n <= k:
        raise GenevalError(f"a k-NN radius with k={k} needs more than {k} points, got {n}")
    best = torch.empty(n, 0, dtype=x.dtype, device=x.device)
    cur_rows: slice | None = None
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    # The point itself (distance ~0) is among the k+1 smallest, so index k is the k-th neighbour.
    for rows, _cols, d in distance_blocks(x, x, block_size):
        if rows != cur_rows:
            best = torch.empty(rows.stop - rows.start, 0, dtype=x.dtype, device=x.device)
            cur_rows = rows
        cand = torch.cat([best, d], dim=1)
        best = torch.topk(cand, min(k + 1, cand.shape[1]), dim=1, largest=False, sorted=True).values
        if best.shape[1] == k + 1:
            out[rows] = best[:, k]
    return out


def precision_recall(
    real: Any,
    fake: Any,
    k: int = 3,
    block_size: int = 10000,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """Improved precision and recall of a sample set against a reference set.

    Args:
        real: (N, d) reference features (numpy or torch) — first, as in ADM.
        fake: (M, d) sample features.
        k: neighbourhood size (3 in ADM).
        block_size: rows/columns per distance block (10000 in ADM).
        device: where to compute; default the features' device (CPU for numpy).
        dtype: float32 (default) or float64 distances.
    """
    r, f = as_pair(real, fake, device, dtype, k, block_size)
    with torch.no_grad(), full_fp32_matmul():
        r_real = knn_radii(r, k, block_size)
        r_fake = knn_radii(f, k, block_size)
        fake_in_real = torch.zeros(f.shape[0], dtype=torch.bool, device=r.device)
        real_in_fake = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
        for rows, cols, d in distance_blocks(r, f, block_size):
            fake_in_real[cols] |= (d <= r_real[rows, None]).any(dim=0)
            real_in_fake[rows] |= (d <= r_fake[None, cols]).any(dim=1)
    return float(fake_in_real.double().mean()), float(real_in_fake.double().mean())


def density_coverage(
    real: Any,
    fake: Any,
    k: int = 5,
    block_size: int = 10000,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[float, float]:
    """Density and coverage of a sample set against a reference set (Naeem et al. 2020).

    density = Σ_samples #{reference balls holding the sample} / (k·M);
    coverage = share of reference points whose ball holds at least one sample.

    Args:
        real: (N, d) reference features (numpy or torch).
        fake: (M, d) sample features.
        k: neighbourhood size of the reference radii (5 in the paper).
        block_size: rows/columns per distance block.
        device: where to compute; default the features' device (CPU for numpy).
        dtype: float32 (default) or float64 distances.
    """
    r, f = as_pair(real, fake, device, dtype, k, block_size)
    with torch.no_grad(), full_fp32_matmul():
        r_real = knn_radii(r, k, block_size)
        counts = torch.zeros(f.shape[0], dtype=torch.int64, device=r.device)
        covered = torch.zeros(r.shape[0], dtype=torch.bool, device=r.device)
        for rows, cols, d in distance_blocks(r, f, block_size):
            inside = d <= r_real[rows, None]
            counts[cols] += inside.sum(dim=0)
            covered[rows] |= inside.any(dim=1)
    density = float(counts.sum().item()) / (k * f.shape[0])
    return density, float(covered.double().mean())

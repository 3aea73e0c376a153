"""Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel, over seeded subsets.

k(x, y) = (xᵀy/d + 1)³. Per subset of m rows from each side (without replacement):
MMD² = (Σ_{i≠j} Kxx + Σ_{i≠j} Kyy)/(m(m−1)) − 2 ΣKxy/m², the MMD-GAN / torch-fidelity estimator.
Subsets are drawn exactly as torch-fidelity 0.4 draws them — one np.random.RandomState(seed),
per subset `choice(n1, m, replace=False)` then `choice(n2, m, replace=False)` — so with its
default seed 2020 (also ours) the numbers reproduce torch-fidelity's; std is ddof 0 like
theirs. Kernels are computed in float64 (torch-fidelity uses the features' dtype, float32
from its extractor: differences are at the 1e-6 relative level).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.stats import as_feature_matrix

DEFAULT_SUBSET_SIZE = 1000


def polynomial_mmd2(x: torch.Tensor, y: torch.Tensor, degree: int = 3, coef0: float = 1.0) -> float:
    """Unbiased MMD² of two equal-size sets under k(a, b) = (aᵀb/d + coef0)^degree.

    Args:
        x: (m, d) float64 tensor.
        y: (m, d) float64 tensor.
        degree: kernel degree.
        coef0: kernel offset.
    """
    m, d = x.shape
    kxx = (x @ x.T / d + coef0) ** degree
    kyy = (y @ y.T / d + coef0) ** degree
    kxy = (x @ y.T / d + coef0) ** degree
    off_diag = kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()
    return float(off_diag / (m * (m - 1)) - 2.0 * kxy.sum() / (m * m))


def resolve_subset_size(n1: int, n2: int, subset_size: int | None) -> int:
    """The subset size to use: the explicit one (checked against N) or min(1000, n1, n2).

    Args:
        n1: rows in the first set.
        n2: rows in the second set.
        subset_size: explicit request, or None for the default.
    """
    if subset_size is None:
        m = min(DEFAULT_SUBSET_SIZE, n1, n2)
    else:
        m = int(subset_size)
        if m > min(n1, n2):
            raise GenevalError(
                f"KID subset size {m} is larger than the feature sets (samples: {n1}, reference: {n2}); "
                f"pass a subset size ≤ {min(n1, n2)} or omit it to use min(1000, N)"
            )
    if m < 2:
        raise GenevalError(f"KID needs subsets of at least 2 rows, got {m} (samples: {n1}, reference: {n2})")
    return m


def kernel_inception_distance(
    f1: Any,
    f2: Any,
    subsets: int = 100,
    subset_size: int | None = None,
    seed: int = 2020,
    device: str | torch.device = "cpu",
) -> tuple[float, float]:
    """KID (mean, std with ddof 0) over seeded random subsets.

    Args:
        f1: (n1, d) sample features (numpy or torch).
        f2: (n2, d) reference features.
        subsets: number of subsets.
        subset_size: rows per subset; None means min(1000, n1, n2); an explicit value larger
            than either set is an error (sampling without replacement would be impossible).
        seed: np.random.RandomState seed of the subset draws (2020 = torch-fidelity's default).
        device: where the float64 kernel matmuls run.
    """
    x = as_feature_matrix(f1, "KID sample features")
    y = as_feature_matrix(f2, "KID reference features")
    if x.shape[1] != y.shape[1]:
        raise GenevalError(f"KID feature dims differ: samples {x.shape[1]}, reference {y.shape[1]}")
    if int(subsets) < 1:
        raise GenevalError(f"KID needs at least 1 subset, got {subsets}")
    n1, n2 = x.shape[0], y.shape[0]
    m = resolve_subset_size(n1, n2, subset_size)
    tx = torch.from_numpy(x).to(device)
    ty = torch.from_numpy(y).to(device)
    rng = np.random.RandomState(seed)
    mmds = np.empty(int(subsets), dtype=np.float64)
    for i in range(int(subsets)):
        ix = torch.from_numpy(rng.choice(n1, m, replace=False)).to(tx.device)
        iy = torch.from_numpy(rng.choice(n2, m, replace=False)).to(ty.device)
        mmds[i] = polynomial_mmd2(tx[ix], ty[iy])
    return float(mmds.mean()), float(mmds.std())

"""CMMD (Jayasumana et al., CVPR 2024): MMD² between CLIP embeddings with a Gaussian RBF kernel.

As google-research/cmmd ``distance.mmd``: the biased (minimum-variance) estimator of Gretton et
al. (2012, eq. 5), diagonal included,

    MMD² = mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) − 2 mean_ij k(x_i, y_j),
    k(x, y) = exp(−‖x − y‖² / (2σ²)),  σ = 10,  reported × 1000,

on L2-normalised CLIP ViT-L/14@336 image embeddings (`geneval.features.clip`). With unit
vectors ‖x−y‖² ≤ 4, so k ∈ [e^−0.02, 1] and CMMD is small and smooth. Squared distances are
‖x‖² + ‖y‖² − 2xᵀy as in the reference, here in float64 and in row blocks (no N×N matrix held).

Streaming: needs the rows of both sets (the kernel is O(N·M)); no sufficient statistics.
"""

from __future__ import annotations

from typing import Any

import torch

from geneval.errors import GenevalError
from geneval.metrics.stats import as_feature_matrix

SIGMA = 10.0
SCALE = 1000.0


def _kernel_mean(a: torch.Tensor, b: torch.Tensor, gamma: float, block: int) -> float:
    """mean_ij exp(−γ‖a_i − b_j‖²) in float64, in blocks of rows of a."""
    nb = (b * b).sum(dim=1)
    total = torch.zeros((), dtype=torch.float64, device=a.device)
    for i in range(0, a.shape[0], block):
        rows = a[i : i + block]
        d2 = (rows * rows).sum(dim=1)[:, None] - 2.0 * rows @ b.T + nb[None, :]
        total += torch.exp(-gamma * d2).sum()
    return float(total) / (a.shape[0] * b.shape[0])


def mmd2(
    x: Any,
    y: Any,
    sigma: float = SIGMA,
    block_size: int = 4096,
    device: str | torch.device = "cpu",
) -> float:
    """Biased MMD² with k(x, y) = exp(−‖x−y‖²/(2σ²)), unscaled.

    Args:
        x: (N, d) features.
        y: (M, d) features.
        sigma: kernel bandwidth.
        block_size: rows per kernel block.
        device: where the float64 kernel sums run.
    """
    a = torch.from_numpy(as_feature_matrix(x, "CMMD first set")).to(device)
    b = torch.from_numpy(as_feature_matrix(y, "CMMD second set")).to(device)
    if a.shape[1] != b.shape[1]:
        raise GenevalError(f"CMMD feature dims differ: {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] < 1 or b.shape[0] < 1:
        raise GenevalError("CMMD needs at least one row in each set")
    if not sigma > 0:
        raise GenevalError(f"CMMD bandwidth sigma must be positive, got {sigma}")
    gamma = 1.0 / (2.0 * float(sigma) ** 2)
    return _kernel_mean(a, a, gamma, block_size) + _kernel_mean(b, b, gamma, block_size) - 2.0 * _kernel_mean(a, b, gamma, block_size)


def cmmd(
    sample: Any,
    ref: Any,
    sigma: float = SIGMA,
    scale: float = SCALE,
    block_size: int = 4096,
    device: str | torch.device = "cpu",
) -> float:
    """CMMD = scale · MMD²(sample, ref) with the cmmd defaults σ = 10, scale = 1000.

    Args:
        sample: (N, d) L2-normalised CLIP embeddings of the samples (``clip_embed``).
        ref: (M, d) the same for the reference images.
        sigma: RBF bandwidth (10 in cmmd).
        scale: reporting scale (1000 in cmmd).
        block_size: rows per kernel block.
        device: where the float64 kernel sums run.
    """
    return float(scale) * mmd2(sample, ref, sigma, block_size, device)


SPEC = {
    "name": "cmmd",
    "fn": cmmd,
    "needs": ("clip_embed",),
    "needs_ref": True,
    "higher_is_better": False,
    "min_n": 1,
    "stats_suffice": False,
    "streaming": "rows: both feature sets (O(N·M) kernel, computed in float64 row blocks)",
}

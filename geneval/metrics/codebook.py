"""Per-depth codebook metrics for residual (RQ-VAE) and plain (D = 1) VQ tokenizers.

Pure functions on code indices and images, plus mergeable accumulators (int64 histograms, float64
error sums) so a stream of batches or ranks gives the same numbers as one pass:
  - usage, perplexity and dead codes of each depth's codes (geneval.metrics.recon.codebook_usage);
  - reconstruction error after each depth: MSE and PSNR of the image decoded from the partial sum
    of the first d codes, against the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from geneval.errors import GenevalError
from geneval.metrics.recon import CodebookUsage, codebook_usage


def _np(x: Any) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)


def depth_histograms(indices: Any, n_codes: int, depth_axis: int = 1) -> np.ndarray:
    """(D, K) int64 counts of each code at each depth; indices (N, D, ...) with depths on `depth_axis`."""
    idx = np.moveaxis(_np(indices), depth_axis, 0)
    if idx.size and (idx.min() < 0 or idx.max() >= n_codes):
        raise GenevalError(f"code indices must lie in [0, {n_codes}), got {idx.min()}..{idx.max()}")
    return np.stack([np.bincount(idx[d].reshape(-1).astype(np.int64), minlength=n_codes) for d in range(idx.shape[0])])


def per_depth_usage(indices: Any, n_codes: int, depth_axis: int = 1) -> list[CodebookUsage]:
    """Usage, perplexity and dead codes of each depth (a list of D CodebookUsage)."""
    return [codebook_usage(h) for h in depth_histograms(indices, n_codes, depth_axis)]


def pooled_usage(indices: Any, n_codes: int) -> CodebookUsage:
    """Usage of a shared codebook over all depths together."""
    return codebook_usage(np.bincount(_np(indices).reshape(-1).astype(np.int64), minlength=n_codes))


def squared_error_sums(originals: Any, recons_by_depth: Sequence[Any]) -> tuple[np.ndarray, int]:
    """(per-depth Σ squared error in float64 (D,), number of values) for images in the same range."""
    x = _np(originals).astype(np.float64)
    sums = []
    for r in recons_by_depth:
        r = _np(r).astype(np.float64)
        if r.shape != x.shape:
            raise GenevalError(f"reconstruction shape {r.shape} differs from the originals {x.shape}")
        sums.append(float(((r - x) ** 2).sum()))
    return np.asarray(sums), int(x.size)


def error_by_depth(sse: np.ndarray, count: int, data_range: float = 2.0) -> list[dict[str, float]]:
    """MSE and PSNR (dB, peak `data_range`: 2 for [−1, 1] images) after each depth, from error sums."""
    if count <= 0:
        raise GenevalError("no pixels were counted")
    out = []
    for s in np.asarray(sse, np.float64):
        mse = s / count
        out.append({"mse": float(mse), "psnr": float(10 * np.log10(data_range**2 / mse)) if mse > 0 else float("inf")})
    return out


@dataclass
class DepthTally:
    """Streaming per-depth codebook histograms and reconstruction error sums (merge with `+`).

    Args:
        n_codes: K.
        depth: D.
    """

    n_codes: int
    depth: int
    counts: np.ndarray | None = None
    sse: np.ndarray | None = None
    values: int = 0

    def __post_init__(self) -> None:
        if self.counts is None:
            self.counts = np.zeros((self.depth, self.n_codes), np.int64)
        if self.sse is None:
            self.sse = np.zeros(self.depth, np.float64)

    def update(self, indices: Any, originals: Any = None, recons_by_depth: Sequence[Any] | None = None, depth_axis: int = 1) -> "DepthTally":
        """Add a batch: codes (N, D, ...) and optionally images with their D reconstructions."""
        h = depth_histograms(indices, self.n_codes, depth_axis)
        if h.shape[0] != self.depth:
            raise GenevalError(f"{h.shape[0]} depths of codes for a tally of depth {self.depth}")
        self.counts += h
        if recons_by_depth is not None:
            s, n = squared_error_sums(originals, recons_by_depth)
            self.sse += s
            self.values += n
        return self

    def __add__(self, other: "DepthTally") -> "DepthTally":
        if (self.n_codes, self.depth) != (other.n_codes, other.depth):
            raise GenevalError("cannot merge codebook tallies of different shapes")
        return DepthTally(self.n_codes, self.depth, self.counts + other.counts, self.sse + other.sse, self.values + other.values)

    def report(self, data_range: float = 2.0) -> list[dict[str, float]]:
        """One row per depth: depth, perplexity, usage, dead codes, tokens and (if images were given) mse, psnr."""
        errs = error_by_depth(self.sse, self.values, data_range) if self.values else [{}] * self.depth
        rows = []
        for d, (h, e) in enumerate(zip(self.counts, errs), start=1):
            u = codebook_usage(h)
            rows.append({"depth": d, "perplexity": u.perplexity, "usage": u.usage, "dead_codes": u.dead, "tokens": u.tokens, **e})
        return rows

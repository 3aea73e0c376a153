"""Inception Score from unbiased TF-Inception logits, in float64, under two named conventions.

IS = exp(E_x KL(p(y|x) ‖ p(y))), p(y) the mean prediction of the split. The conventions differ
only in how the N predictions are split (REFERENCE §2):
- "adm" (openai/guided-diffusion evaluator): consecutive chunks of `chunk_size` (5000) in input
  order, no shuffle; a last partial chunk is scored like the others (N < chunk_size gives one
  chunk). ADM reports the mean over chunks only; we also return the ddof-0 std across chunks.
- "torch-fidelity": rows shuffled by np.random.RandomState(seed).permutation(N) (seed 2020),
  then `splits` (10) slices [i·N//splits, (i+1)·N//splits); mean and ddof-0 std.
ADM takes the softmax in float32 inside TF; torch-fidelity and geneval take it in float64.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import log_softmax, xlogy

from geneval.errors import GenevalError
from geneval.metrics.stats import as_feature_matrix
from geneval.vocab import IS_CONVENTIONS as CONVENTIONS


def split_bounds(n: int, convention: str, splits: int = 10, chunk_size: int = 5000) -> list[tuple[int, int]]:
    """The [start, end) row ranges each convention scores separately.

    Args:
        n: number of predictions.
        convention: "adm" or "torch-fidelity".
        splits: number of splits (torch-fidelity).
        chunk_size: rows per chunk (adm).
    """
    if convention == "adm":
        if chunk_size < 1:
            raise GenevalError(f"IS chunk size must be ≥ 1, got {chunk_size}")
        return [(i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    if convention == "torch-fidelity":
        if not 1 <= splits <= n:
            raise GenevalError(f"IS splits must be between 1 and N={n}, got {splits}")
        return [(i * n // splits, (i + 1) * n // splits) for i in range(splits)]
    raise GenevalError(f"unknown IS convention {convention!r}; choose from: {', '.join(CONVENTIONS)}")


def split_scores(log_p: np.ndarray, bounds: list[tuple[int, int]]) -> np.ndarray:
    """exp(mean KL(p(y|x) ‖ p(y))) for each row range of log-probabilities.

    Args:
        log_p: (N, C) float64 log-softmax.
        bounds: row ranges from `split_bounds`.
    """
    p = np.exp(log_p)
    # Σ_x p·log p per row; p underflowing to 0 contributes 0 (log_p stays finite).
    neg_entropy = (p * log_p).sum(axis=1)
    scores = []
    for start, end in bounds:
        q = p[start:end].mean(axis=0)
        # E_x Σ_y p log q = Σ_y q log q, since q is the mean of p over the split; xlogy(0, 0) = 0.
        mean_kl = neg_entropy[start:end].mean() - xlogy(q, q).sum()
        scores.append(np.exp(mean_kl))
    return np.asarray(scores, dtype=np.float64)


def inception_score(
    logits: Any,
    convention: str = "adm",
    splits: int = 10,
    chunk_size: int = 5000,
    seed: int = 2020,
) -> tuple[float, float]:
    """Inception Score (mean, std over splits) from (N, 1008) unbiased logits.

    Args:
        logits: (N, C) pre-softmax outputs (numpy or torch); softmax over all C columns.
        convention: "adm" (consecutive chunks) or "torch-fidelity" (seeded shuffle + splits).
        splits: number of splits for "torch-fidelity".
        chunk_size: chunk length for "adm".
        seed: RandomState seed of the "torch-fidelity" shuffle.
    """
    x = as_feature_matrix(logits, "IS logits")
    n = x.shape[0]
    if n < 2:
        raise GenevalError(f"Inception Score needs at least 2 samples, got {n}")
    bounds = split_bounds(n, convention, splits=splits, chunk_size=chunk_size)
    if convention == "torch-fidelity":
        x = x[np.random.RandomState(seed).permutation(n)]
    scores = split_scores(log_softmax(x, axis=1), bounds)
    return float(scores.mean()), float(scores.std())


class ChunkedISAccumulator:
    """ADM-convention IS without holding logits: per 5000-chunk n, Σ_x Σ_y p log p and Σ_x p, in float64.

    IS of a chunk = exp(mean_x Σ_y p log p − Σ_y p̄ log p̄) with p̄ = Σ_x p / n, which is the same
    number `inception_score(..., "adm")` computes from the rows (tested). Rows are assigned to
    chunks by their global index, so batches may arrive in any order and merge by addition.

    Args:
        num_classes: logits width (1008).
        n_total: total number of samples (fixes the number of chunks).
        chunk_size: ADM's 5000.
    """

    def __init__(self, num_classes: int, n_total: int, chunk_size: int = 5000) -> None:
        if chunk_size < 1:
            raise GenevalError(f"IS chunk size must be ≥ 1, got {chunk_size}")
        self.chunk_size = chunk_size
        self.num_chunks = max(1, -(-n_total // chunk_size))
        # columns: n, Σ p log p, Σ p (num_classes)
        self.sums = np.zeros((self.num_chunks, num_classes + 2), dtype=np.float64)

    def update(self, logits: Any, indices: np.ndarray) -> None:
        """Add rows of logits with their global sample indices."""
        x = as_feature_matrix(logits, "IS logits")
        log_p = log_softmax(x, axis=1)
        p = np.exp(log_p)
        chunk = np.asarray(indices, dtype=np.int64) // self.chunk_size
        np.add.at(self.sums[:, 0], chunk, 1.0)
        np.add.at(self.sums[:, 1], chunk, (p * log_p).sum(axis=1))
        np.add.at(self.sums[:, 2:], chunk, p)

    def score(self) -> tuple[float, float]:
        """(mean, ddof-0 std) over chunks, as `inception_score(..., "adm")`."""
        n = self.sums[:, 0]
        if n.sum() < 2:
            raise GenevalError(f"Inception Score needs at least 2 samples, got {int(n.sum())}")
        used = n > 0
        q = self.sums[used, 2:] / n[used, None]
        mean_kl = self.sums[used, 1] / n[used] - xlogy(q, q).sum(axis=1)
        scores = np.exp(mean_kl)
        return float(scores.mean()), float(scores.std())

"""Batch-invariant network evaluation by fixed, index-aligned chunks.

CPU convolution and matmul kernels pick different blockings for different batch sizes, so the
same image can come out ~1e-6 different when sampled in a batch of 1, 7 or 64. Per-sample
seeds alone therefore do not make samples bit-identical. This wrapper always evaluates the
network on chunks of exactly `align` rows and puts global sample i at row i mod `align` of
chunk i // `align`; rows never mix inside these kernels, so each sample's arithmetic is the same
whatever batch it came in. Batches that are multiples of `align` and start at multiples of it
cost nothing extra; other batches pad with copies of a real row.
"""

from __future__ import annotations

from typing import Callable

import torch

# Rows beyond the first N of a call (e.g. the unconditional half of a CFG batch) live in their
# own chunk namespaces, so they never share chunks with the conditional rows.
_NAMESPACE = 1 << 40


def aligned_call(fn: Callable[..., torch.Tensor], index: torch.Tensor, align: int, *args: torch.Tensor | None) -> torch.Tensor:
    """Evaluate fn(*args) row-wise through index-aligned chunks of `align` rows.

    Args:
        fn: a function of batched tensors whose rows are computed independently.
        index: global sample index of each of the N samples (int64, length N). Calls with k·N rows
            (CFG doubling) give row r the slot index[r mod N] + (r // N)·2^40.
        align: chunk size; 0 or 1 with a matching batch is a plain call.
        *args: batched tensors (first dim k·N) or None, passed to fn in order.
    """
    rows = next(a.shape[0] for a in args if a is not None)
    if align <= 0:
        return fn(*args)
    n = index.shape[0]
    if rows % n:
        raise ValueError(f"{rows} rows for {n} sample indices")
    reps = rows // n
    slots = (index.to("cpu", torch.int64).repeat(reps) + torch.arange(reps).repeat_interleave(n) * _NAMESPACE).tolist()
    chunks: dict[int, list[tuple[int, int]]] = {}
    for row, slot in enumerate(slots):
        chunks.setdefault(slot // align, []).append((row, slot % align))
    if len(chunks) == 1 and rows == align and all(r == p for r, p in next(iter(chunks.values()))):
        return fn(*args)  # already exactly one aligned chunk
    out: torch.Tensor | None = None
    for members in chunks.values():
        rows_idx = torch.tensor([r for r, _ in members])
        pos = torch.tensor([p for _, p in members])
        # Fill unused positions with the chunk's first real row: valid inputs, never read back.
        src = torch.full((align,), members[0][0], dtype=torch.int64)
        src[pos] = rows_idx
        chunk_args = [None if a is None else a[src.to(a.device)] for a in args]
        res = fn(*chunk_args)
        if out is None:
            out = res.new_empty((rows, *res.shape[1:]))
        out[rows_idx.to(res.device)] = res[pos.to(res.device)]
    assert out is not None
    return out

"""torch.distributed for geneval: ranks from torchrun's environment, shard ownership, exact merges.

One process (no torchrun) is world size 1 and never touches torch.distributed. Under torchrun
every rank runs the same command: preflight on every rank (all must agree), then each rank
takes the sample-index shards k with k % world == rank, and the results merge as sums
(float64 n, Σx, Σxxᵀ: all-reduce) and rows (gathered in index order). Only rank 0 writes.

Collectives carry a timeout (GENEVAL_DIST_TIMEOUT seconds, default 600) so a dead rank ends the
job instead of hanging it; torchrun also stops the other workers when one dies.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class Dist:
    """This process's place in the job.

    Args:
        rank: global rank (0 writes reports).
        world: number of processes.
        local_rank: rank on this node (picks the GPU).
        backend: "nccl", "gloo" or None for a single process.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def owns(self, shard: int) -> bool:
        """Whether shard index `shard` is this rank's work (round-robin over ranks)."""
        return shard % self.world == self.rank

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world, "backend": self.backend or "none"}


SINGLE = Dist()
_CURRENT: Dist = SINGLE


def current() -> Dist:
    """The job this process belongs to (SINGLE until `init` ran under torchrun)."""
    return _CURRENT


def timeout_s() -> float:
    try:
        return float(os.environ.get("GENEVAL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        raise GenevalError(f"GENEVAL_DIST_TIMEOUT must be a number of seconds, got {os.environ['GENEVAL_DIST_TIMEOUT']!r}") from None


def init(device: str | None = None) -> Dist:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*).

    Args:
        device: the requested device; "cpu" forces gloo even where CUDA exists.
    Returns:
        The Dist; SINGLE when WORLD_SIZE is absent or 1.
    """
    global _CURRENT
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        _CURRENT = SINGLE
        return SINGLE
    import torch.distributed as tdist

    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and (device is None or not str(device).startswith("cpu"))
    backend = "nccl" if use_cuda else "gloo"
    if not tdist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local % torch.cuda.device_count())
        tdist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    _CURRENT = Dist(rank, world, local, backend)
    return _CURRENT


def shutdown() -> None:
    """Leave the process group (no-op for a single process)."""
    global _CURRENT
    if _CURRENT.active:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()
    _CURRENT = SINGLE


def device_for(dist: Dist, requested: str | None) -> str:
    """The device this rank computes on: cuda:<local_rank> under NCCL, else the request (or cpu/cuda)."""
    if dist.backend == "nccl":  # several ranks may share a GPU (local_rank modulo the devices seen)
        return f"cuda:{dist.local_rank % max(torch.cuda.device_count(), 1)}"
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def comm_device(dist: Dist) -> torch.device:
    return torch.device(device_for(dist, None)) if dist.backend == "nccl" else torch.device("cpu")


def agree(dist: Dist, error: BaseException | None) -> None:
    """Every rank reports its preflight outcome; if any failed, every rank raises the first error.

    Args:
        dist: the job.
        error: this rank's GenevalError (None when its preflight passed).
    """
    if not dist.active:
        if error is not None:
            raise error
        return
    import torch.distributed as tdist

    mine = None if error is None else " ".join(str(error).split())
    everyone: list[Any] = [None] * dist.world
    tdist.all_gather_object(everyone, mine)
    for rank, msg in enumerate(everyone):
        if msg is not None:
            err = GenevalError(f"rank {rank}: {msg}" if rank != 0 else msg)
            err.agreed = True  # type: ignore[attr-defined]  (printed once, by rank 0)
            raise err


def broadcast_object(dist: Dist, obj: Any) -> Any:
    """Rank 0's `obj` on every rank (a run id, a seed list)."""
    if not dist.active:
        return obj
    import torch.distributed as tdist

    box = [obj if dist.is_main else None]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    if dist.active:
        import torch.distributed as tdist

        tdist.barrier()


def all_reduce_sum(dist: Dist, t: torch.Tensor) -> torch.Tensor:
    """Sum of `t` over ranks (float64 stays float64); returns a tensor on t's device."""
    if not dist.active:
        return t
    import torch.distributed as tdist

    buf = t.to(comm_device(dist)).contiguous()
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    return buf.to(t.device)


def gather_rows(dist: Dist, index: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """All ranks' rows on rank 0, ordered by their global sample index (None on other ranks).

    Args:
        dist: the job.
        index: (n,) global indices of this rank's rows.
        rows: (n, d) rows in the dtype they are gathered in (recorded by the caller).
    """
    if not dist.active:
        return rows[np.argsort(index, kind="stable")]
    import torch.distributed as tdist

    parts: list[Any] = [None] * dist.world
    tdist.all_gather_object(parts, (index, rows)) if dist.backend == "gloo" else _gather_nccl(dist, parts, index, rows)
    if not dist.is_main:
        return None
    parts = [p for p in parts if len(p[0])] or parts[:1]  # a rank that owned no shard sends nothing
    idx = np.concatenate([p[0] for p in parts])
    out = np.concatenate([p[1] for p in parts])
    return out[np.argsort(idx, kind="stable")]


def _gather_nccl(dist: Dist, parts: list[Any], index: np.ndarray, rows: np.ndarray) -> None:
    """all_gather of variable-length row blocks through padded tensors (NCCL has no object gather on CPU)."""
    import torch.distributed as tdist

    dev = comm_device(dist)
    n = torch.tensor([len(index)], device=dev)
    counts = [torch.zeros_like(n) for _ in range(dist.world)]
    tdist.all_gather(counts, n)
    most = int(max(c.item() for c in counts))
    d = rows.shape[1] if rows.ndim == 2 else 0
    pad_rows = torch.zeros((most, d), dtype=torch.from_numpy(rows[:0]).dtype, device=dev)
    pad_rows[: len(rows)] = torch.from_numpy(rows).to(dev)
    pad_idx = torch.full((most,), -1, dtype=torch.int64, device=dev)
    pad_idx[: len(index)] = torch.from_numpy(index.astype(np.int64)).to(dev)
    all_rows = [torch.empty_like(pad_rows) for _ in range(dist.world)]
    all_idx = [torch.empty_like(pad_idx) for _ in range(dist.world)]
    tdist.all_gather(all_rows, pad_rows)
    tdist.all_gather(all_idx, pad_idx)
    for r in range(dist.world):
        k = int(counts[r].item())
        parts[r] = (all_idx[r][:k].cpu().numpy(), all_rows[r][:k].cpu().numpy())


def shard_ranges(n: int, shard_size: int) -> Iterator[tuple[int, int, int]]:
    """(shard index, lo, hi) covering sample indices 0..n−1 in fixed-size shards."""
    for k, lo in enumerate(range(0, n, shard_size)):
        yield k, lo, min(lo + shard_size, n)

"""The execution core: uint8 batches → features → shards → mergeable accumulators, on every rank.

`stream_features` is the one loop every command runs (run: a sampler's batches; eval and
ref build: a source's batches). Work is cut into sample-index shards (geneval.runner.shards);
each rank computes the shards it owns that are not on disk yet, writing each atomically, then
folds its shards, in index order, into:

- float64 Gaussian sums per statistics layer (n, Σ(x−c), Σ(x−c)(x−c)ᵀ with one shift c shared by
  all ranks: the mean of shard 0), all-reduced — FID/sFID never hold feature rows;
- the rows of layers whose metrics need them (KID, PR, DC, IS), gathered to rank 0 in index
  order, float32 as extracted.

Host memory is one shard of rows plus the d×d sums, whatever N is, for FID/sFID-only jobs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.stats import GaussianAccumulator, GaussianStats
from geneval.progress import Progress
from geneval.runner.distributed import Dist, all_reduce_sum, gather_rows
from geneval.runner.shards import ShardStore

PREVIEW_PER_SHARD = 64  # images kept per shard for grids when images are not stored


@dataclass
class Chunk:
    """One batch entering the core: uint8 NHWC images, labels or None, global indices."""

    images: np.ndarray
    labels: np.ndarray | None
    indices: np.ndarray


# produce(lo, hi) yields the Chunks of items lo..hi−1 (a sampler range, a slice of a source).
Producer = Callable[[int, int], Iterable[Chunk]]


@dataclass(frozen=True)
class Needs:
    """What the metrics need from one side.

    Args:
        stats: layers needed only as Gaussian statistics (summed, never kept as rows).
        rows: layers needed as per-image rows (gathered to rank 0).
        keep_images: store the uint8 images in the shards (--save-samples, ref build).
        is_chunk: fold the logits into ADM-convention IS chunk sums of this size instead of rows.
    """

    stats: frozenset[str] = frozenset()
    rows: frozenset[str] = frozenset()
    keep_images: bool = False
    is_chunk: int | None = None

    @property
    def layers(self) -> frozenset[str]:
        return self.stats | self.rows | (frozenset({"logits"}) if self.is_chunk else frozenset())


@dataclass
class Streamed:
    """A side after the merge. On rank 0: statistics and rows; elsewhere only counts.

    Args:
        n: images behind the features (all ranks).
        stats: layer → GaussianStats (float64 sums merged over ranks).
        rows: layer → (N, d) float32 rows in index order (rank 0 only).
        labels: (N,) labels in index order when the producer gave labels (rank 0 only).
        timings: seconds spent producing and extracting, summed over ranks.
        inception_score: the merged ChunkedISAccumulator when needs.is_chunk was set (rank 0).
        resumed: shards found on disk instead of computed (all ranks together).
        meta: per-shard meta records of this rank (e.g. read reports), in shard order.
    """

    n: int
    stats: dict[str, GaussianStats] = field(default_factory=dict)
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    resumed: int = 0
    meta: list[dict[str, Any]] = field(default_factory=list)
    inception_score: Any = None


def _compute_shard(
    store: ShardStore,
    k: int,
    produce: Producer,
    extract: Callable[[np.ndarray], dict[str, Any]],
    needs: Needs,
    bar: Progress,
    on_chunk: Callable[[Chunk], None] | None,
) -> None:
    lo, hi = store.bounds(k)
    parts: dict[str, list[np.ndarray]] = {}
    images, labels, indices = [], [], []
    t_prod = t_feat = 0.0
    count = 0
    it = iter(produce(lo, hi))
    while True:
        t0 = time.perf_counter()
        chunk = next(it, None)
        t_prod += time.perf_counter() - t0
        if chunk is None:
            break
        t0 = time.perf_counter()
        feats = extract(chunk.images)
        t_feat += time.perf_counter() - t0
        missing = needs.layers - set(feats)
        if missing:
            raise GenevalError(f"the feature network gives no {', '.join(sorted(missing))} output")
        for layer, v in feats.items():  # every output is stored: a cached shard serves later metrics too
            parts.setdefault(layer, []).append(v.numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
        if needs.keep_images:
            images.append(np.asarray(chunk.images, dtype=np.uint8))
        elif count < PREVIEW_PER_SHARD and (not images or images[0].shape[1:] == chunk.images.shape[1:]):
            # a preview for grids; mixed-size sources keep the first size only
            images.append(np.asarray(chunk.images[: PREVIEW_PER_SHARD - count], dtype=np.uint8))
        if chunk.labels is not None:
            labels.append(np.asarray(chunk.labels, dtype=np.int64))
        indices.append(np.asarray(chunk.indices, dtype=np.int64))
        count += len(chunk.indices)
        bar.update(len(chunk.indices))
        if on_chunk is not None:
            on_chunk(chunk)
    arrays: dict[str, np.ndarray] = {f"feat_{k_}": np.concatenate(v) for k_, v in parts.items()}
    arrays["indices"] = np.concatenate(indices) if indices else np.zeros(0, np.int64)
    if labels:
        arrays["labels"] = np.concatenate(labels)
    if images:
        arrays["images" if needs.keep_images else "preview"] = np.concatenate(images)
    store.save(k, arrays, {"lo": lo, "hi": hi, "count": count, "produce_s": t_prod, "features_s": t_feat})


def _shift(dist: Dist, store: ShardStore, layer: str) -> torch.Tensor | None:
    """The centring vector every rank uses for `layer`: shard 0's mean, broadcast (None if shard 0 is empty)."""
    if dist.is_main:
        arrays, _ = store.load(0, {f"feat_{layer}"})
        rows = arrays.get(f"feat_{layer}")
        vec = None if rows is None or len(rows) == 0 else torch.from_numpy(rows.astype(np.float64).mean(axis=0))
        dim = torch.tensor([-1 if vec is None else vec.shape[0]], dtype=torch.float64)
    else:
        vec, dim = None, torch.zeros(1, dtype=torch.float64)
    if not dist.active:
        return vec
    import torch.distributed as tdist

    from geneval.runner.distributed import comm_device

    dev = comm_device(dist)
    dim = dim.to(dev)
    tdist.broadcast(dim, 0)
    d = int(dim.item())
    if d < 0:
        return None
    buf = (vec if vec is not None else torch.zeros(d, dtype=torch.float64)).to(dev)
    tdist.broadcast(buf, 0)
    return buf.cpu()


def stream_features(
    store: ShardStore,
    produce: Producer,
    extract: Callable[[np.ndarray], dict[str, Any]],
    needs: Needs,
    dist: Dist,
    *,
    progress: str | bool = False,
    desc: str = "features",
    on_chunk: Callable[[Chunk], None] | None = None,
) -> Streamed:
    """Compute missing shards of this rank, then merge every rank's shards exactly.

    Args:
        store: the job's shard store (opened).
        produce: yields the Chunks of an index range.
        extract: uint8 NHWC batch → {layer: (B, d) features}.
        needs: which layers are summed, which gathered, whether images are stored.
        dist: the job's ranks.
        progress: auto | always | never (geneval.progress; True/False = auto/never): one line, on rank 0.
        desc: its label.
        on_chunk: called with each freshly computed chunk on this rank (grids, live writers).
    """
    mine = [k for k in range(store.num_shards) if dist.owns(k)]
    todo = [k for k in mine if not store.done(k)]
    total = sum(store.bounds(k)[1] - store.bounds(k)[0] for k in todo)
    bar = Progress(total, desc, "img", progress if dist.is_main else "never")
    deferred = []
    try:
        for k in todo:
            with store.claim(k, wait=False) as got:
                if not got:  # another process is computing this very shard: take it up at the end
                    deferred.append(k)
                    continue
                if not store.done(k):
                    _compute_shard(store, k, produce, extract, needs, bar, on_chunk)
        for k in deferred:
            with store.claim(k, wait=True):
                if not store.done(k):  # its owner died before finishing it
                    _compute_shard(store, k, produce, extract, needs, bar, on_chunk)
    finally:
        bar.close()
    return merge_shards(store, needs, dist, resumed=len(mine) - len(todo))


def merge_shards(store: ShardStore, needs: Needs, dist: Dist, resumed: int = 0) -> Streamed:
    """Fold this rank's finished shards (index order) into sums and rows; merge across ranks."""
    accs: dict[str, GaussianAccumulator] = {}
    for layer in sorted(needs.stats):
        shift = _shift(dist, store, layer)
        if shift is not None:
            accs[layer] = GaussianAccumulator(shift.shape[0], shift=shift)
    rows: dict[str, list[np.ndarray]] = {layer: [] for layer in needs.rows}
    is_acc = None
    if needs.is_chunk:
        from geneval.metrics.inception_score import ChunkedISAccumulator

        is_acc = ChunkedISAccumulator(_logits_width(store), store.n, needs.is_chunk)
    index, labels, metas = [], [], []
    timing = np.zeros(3, dtype=np.float64)  # produce_s, features_s, resumed shards
    timing[2] = resumed
    want = {f"feat_{layer}" for layer in needs.layers} | {"indices", "labels"}
    n_local = 0
    for k in range(store.num_shards):
        if not dist.owns(k):
            continue
        arrays, meta = store.load(k, want)
        metas.append(meta)
        timing[0] += meta.get("produce_s", 0.0)
        timing[1] += meta.get("features_s", 0.0)
        idx = arrays["indices"]
        n_local += len(idx)
        index.append(idx)
        if "labels" in arrays:
            labels.append(arrays["labels"])
        for layer, acc in accs.items():
            acc.update(arrays[f"feat_{layer}"])
        for layer in needs.rows:
            rows[layer].append(arrays[f"feat_{layer}"])
        if is_acc is not None:
            is_acc.update(arrays["feat_logits"], idx)
    for acc in accs.values():
        acc.all_reduce(lambda t: all_reduce_sum(dist, t))
    if is_acc is not None:
        is_acc.sums = all_reduce_sum(dist, torch.from_numpy(is_acc.sums)).numpy()
    n = int(all_reduce_sum(dist, torch.tensor([n_local], dtype=torch.float64)).item())
    timing_t = all_reduce_sum(dist, torch.from_numpy(timing))
    out = Streamed(n=n, timings={"produce_s": float(timing_t[0]), "features_s": float(timing_t[1])}, resumed=int(timing_t[2]), meta=metas)
    if dist.is_main:
        out.stats = {layer: acc.stats() for layer, acc in accs.items()}
        out.inception_score = is_acc
    idx_all = np.concatenate(index) if index else np.zeros(0, np.int64)
    for layer in sorted(needs.rows):
        local = np.concatenate(rows[layer]) if rows[layer] else np.zeros((0, 0), np.float32)
        gathered = gather_rows(dist, idx_all, local)
        if dist.is_main:
            out.rows[layer] = gathered
    has_labels = bool(labels)
    if dist.active:
        flag = all_reduce_sum(dist, torch.tensor([1.0 if has_labels else 0.0], dtype=torch.float64))
        has_labels = bool(flag.item() > 0)
    if has_labels:
        lab = np.concatenate(labels) if labels else np.zeros(0, np.int64)
        gathered = gather_rows(dist, idx_all, lab.reshape(-1, 1))
        if dist.is_main:
            out.labels = gathered.reshape(-1)
    return out


def _logits_width(store: ShardStore) -> int:
    """Logits width from shard 0 (every shard of a store comes from one network)."""
    arrays, _ = store.load(0, {"feat_logits"})
    if "feat_logits" not in arrays:
        raise GenevalError("the feature network gives no logits output (IS needs weights with the classifier layer)")
    return int(arrays["feat_logits"].shape[1])


def iter_shard_images(store: ShardStore, key: str = "images") -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(images, labels) of every finished shard in index order (rank 0 writing npz files, grids)."""
    for k in range(store.num_shards):
        arrays, _ = store.load(k, {key, "labels"})
        if key in arrays:
            images = arrays[key]
            labels = arrays.get("labels")
            yield images, None if labels is None else labels[: len(images)]


class SourceProducer:
    """Producer over a sequential source (folder, zip, npz, ...): ranges must be asked in increasing order.

    One pass over the source serves all of a rank's shards: the iterator is kept between calls
    and images before the asked range are skipped (decoded, not extracted). Asking for an
    earlier range restarts the pass.

    Args:
        source: an opened geneval Source with images.
        batch_size: images per chunk.
    """

    def __init__(self, source: Any, batch_size: int) -> None:
        self.source, self.batch_size = source, batch_size
        self._it: Iterator[Any] | None = None
        self._pos = 0  # global index of the first image in _buf
        self._buf: tuple[np.ndarray, np.ndarray | None] | None = None

    def _restart(self) -> None:
        self._it = iter(self.source.batches(self.batch_size))
        self._pos, self._buf = 0, None

    def _next(self) -> bool:
        assert self._it is not None
        if self._buf is not None:
            self._pos += len(self._buf[0])
        nxt = next(self._it, None)
        if nxt is None:
            self._buf = None
            return False
        images, labels = nxt
        self._buf = (np.asarray(images), None if labels is None else np.asarray(labels))
        return True

    def __call__(self, lo: int, hi: int) -> Iterator[Chunk]:
        if self._it is None or lo < self._pos:
            self._restart()
            if not self._next():
                return
        while self._buf is not None:
            images, labels = self._buf
            end = self._pos + len(images)
            if end > lo:
                a, b = max(lo - self._pos, 0), min(hi - self._pos, len(images))
                if a < b:
                    yield Chunk(images[a:b], None if labels is None else labels[a:b], np.arange(self._pos + a, self._pos + b))
                if end >= hi:
                    return
            if not self._next():
                return

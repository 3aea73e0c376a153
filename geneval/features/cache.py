"""A feature cache: per-image features of a source, keyed by everything that shaped them.

The key is the sha256 of (content hash of the images, extractor name, weights sha256,
preprocessing mode, precision, geneval version) — never a user-chosen name — so a changed file,
network, resize or release can never be served stale numbers. Entries live in
`cache_dir()/features/<key>.npz`: the feature arrays (float32, one per layer) plus a JSON
metadata string (the key's parts, the read report). Writes are atomic (temp file in the same
folder + os.replace): a crash leaves the old entry or none. An unreadable entry is a miss and is
overwritten. `enabled=False` (CLI `--no-cache`) neither reads nor writes.

Size: 50k images x (2048 + 2023) float32 is about 0.8 GB; delete the folder to reclaim it.

Long extractions (a 60k-image reference on a CPU takes hours) checkpoint as they go:
`partial/<key>/part_<start>.npz` holds the features of images [start, start + rows) of that
exact source/network/mode/precision. A rerun of the same command loads those parts, skips the
images they cover and extracts the rest; the finished entry replaces the parts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)

META_KEY = "__meta__"
KEY_VERSION = 1  # bump when the entry layout changes
CHECKPOINT_SECONDS = 120.0  # how often a long extraction writes a partial part


@dataclass(frozen=True)
class CacheKey:
    """What shaped a set of features; `digest` is the entry's file name."""

    content_sha256: str
    extractor: str
    weights_sha256: str
    mode: str
    precision: str
    geneval_version: str

    @property
    def digest(self) -> str:
        parts = {"v": KEY_VERSION, **self.__dict__}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def make_key(content_sha256: str, extractor: str, weights_sha256: str, mode: str, precision: str,
             geneval_version: str | None = None) -> CacheKey:
    """Build a cache key; the geneval version defaults to the running one.

    Args:
        content_sha256: the source's content hash (file bytes / array bytes).
        extractor: the feature network's name (e.g. extractor.info["features"]).
        weights_sha256: sha256 of the weight file behind the network.
        mode: preprocessing mode (tf, pytorch, clean).
        precision: numeric precision (exact, tf32, fast).
        geneval_version: defaults to geneval.__version__.
    """
    if geneval_version is None:
        from geneval import __version__ as geneval_version
    return CacheKey(content_sha256, extractor, weights_sha256, mode, precision, geneval_version)


class FeatureCache:
    """Read and write feature entries under `root` (default `cache_dir()/features`).

    Args:
        root: folder for entries; default geneval's cache dir + "/features".
        enabled: False disables both reads and writes.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        if root is None:
            from geneval.weights import cache_dir

            root = cache_dir() / "features"
        self.root = Path(root)
        self.enabled = enabled

    def path(self, key: CacheKey) -> Path:
        return self.root / f"{key.digest}.npz"

    def load(self, key: CacheKey, needed: Iterable[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The entry's arrays and metadata if it exists and holds every `needed` array; else None.

        Args:
            key: the entry's key.
            needed: array names the caller requires (e.g. "pool3", "spatial").
        """
        if not self.enabled:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z[META_KEY])) if META_KEY in z.files else {}
                if meta.get("key") != key.__dict__:  # a digest collision or a hand-copied file
                    return None
                if not set(needed) <= set(z.files):
                    return None
                arrays = {k: z[k] for k in z.files if k != META_KEY}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable cache entry %s: %s", path, e)
            return None
        return arrays, meta

    def save(self, key: CacheKey, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> Path | None:
        """Write an entry atomically; returns its path (None when disabled).

        Args:
            key: the entry's key.
            arrays: name → array (features are stored as given; pass float32).
            meta: JSON-serialisable extras (e.g. the read report); the key is added.
        """
        if not self.enabled:
            return None
        if META_KEY in arrays:
            raise ValueError(f"{META_KEY} is reserved")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        payload = {**(meta or {}), "key": key.__dict__}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays, **{META_KEY: np.asarray(json.dumps(payload, default=str))})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


class PartialEntry:
    """Checkpointed pieces of one unfinished extraction, under `<cache root>/partial/<key digest>/`.

    Parts are contiguous in image order from 0; a part that does not continue the previous one
    (or is unreadable, or has a different key) ends what is usable, and later ones are ignored.

    Args:
        cache: the FeatureCache whose root holds the parts (disabled cache: no parts at all).
        key: the key the finished entry will have.
    """

    def __init__(self, cache: FeatureCache, key: CacheKey) -> None:
        self.enabled = cache.enabled
        self.key = key
        self.folder = cache.root / "partial" / key.digest

    def load(self, needed: Iterable[str]) -> tuple[dict[str, list[np.ndarray]], int]:
        """(name → list of arrays in image order, number of images covered) of the usable parts."""
        chunks: dict[str, list[np.ndarray]] = {}
        n = 0
        if not self.enabled or not self.folder.is_dir():
            return chunks, 0
        for path in sorted(self.folder.glob("part_*.npz")):
            try:
                start = int(path.stem.split("_")[1])
                with np.load(path, allow_pickle=False) as z:
                    meta = json.loads(str(z[META_KEY]))
                    if start != n or meta.get("key") != self.key.__dict__ or not set(needed) <= set(z.files):
                        break
                    arrays = {k: z[k] for k in z.files if k != META_KEY}
            except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile) as e:
                log.warning("ignoring unreadable partial cache file %s: %s", path, e)
                break
            rows = {v.shape[0] for v in arrays.values()}
            if len(rows) != 1:
                break
            for k, v in arrays.items():
                chunks.setdefault(k, []).append(v)
            n += rows.pop()
        return chunks, n

    def save(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write the features of images [start, start + rows) atomically (a no-op when disabled)."""
        if not self.enabled:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part_{start:010d}.npz"
        fd, tmp = tempfile.mkstemp(prefix=".part.", suffix=".npz.tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays, **{META_KEY: np.asarray(json.dumps({"key": self.key.__dict__}))})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def clear(self) -> None:
        """Remove the parts (after the finished entry was written)."""
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                path.unlink(missing_ok=True)
            try:
                self.folder.rmdir()
            except OSError:
                pass


def _skip_covered(batches: Iterable[Any], done: int, where: Path) -> Iterator[Any]:
    """The batches with their first `done` images dropped (a checkpoint covers them); they are
    still read, so the source's read report counts them."""
    skip = done
    for batch in batches:
        if skip:
            take = min(skip, len(batch))
            skip -= take
            batch = batch[take:]
            if len(batch) == 0:
                continue
        yield batch
    if skip:
        from geneval.errors import GenevalError

        raise GenevalError(f"the source yielded fewer images than the {done} a checkpoint in {where} covers")


def extract_resumable(extractor: Any, batches: Iterable[np.ndarray], partial: PartialEntry, *,
                      needed: Iterable[str], progress: bool = True, total: int | None = None,
                      checkpoint_seconds: float | None = None) -> dict[str, np.ndarray]:
    """`extractor.extract_all`, checkpointing into `partial` and resuming from what it holds.

    Args:
        extractor: a FeatureExtractor (anything with its `extract_all`).
        batches: uint8 image batches in the source's fixed order.
        partial: where checkpoints go and come from.
        needed: the arrays a usable part must hold.
        progress: tqdm bar (images) on stderr.
        total: images expected, for the bar.
        checkpoint_seconds: write a part when this long has passed since the last one
            (default CHECKPOINT_SECONDS).
    """
    if checkpoint_seconds is None:
        checkpoint_seconds = CHECKPOINT_SECONDS
    chunks, done = partial.load(needed)
    if done:
        log.info("resuming an interrupted extraction: %d images already done (%s)", done, partial.folder)
    state: dict[str, Any] = {"pending": {}, "start": done, "last": time.monotonic()}

    def checkpoint(feats: dict[str, np.ndarray]) -> None:
        for k, v in feats.items():
            state["pending"].setdefault(k, []).append(v)
        if time.monotonic() - state["last"] < checkpoint_seconds:
            return
        part = {k: np.concatenate(v) for k, v in state["pending"].items()}
        try:
            partial.save(state["start"], part)
        except OSError as e:
            log.warning("could not write a partial cache file: %s", e)
        rows = next(iter(part.values())).shape[0]
        state.update(pending={}, start=state["start"] + rows, last=time.monotonic())

    new = extractor.extract_all(_skip_covered(batches, done, partial.folder), progress=progress, total=total,
                                initial=done, on_batch=checkpoint)
    for k, v in new.items():
        chunks.setdefault(k, []).append(v)
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}

"""Resumable work in sample-index shards, keyed by everything that shapes them.

A job (a run's samples, one source's features) is cut into shards of `shard_size` consecutive
indices. Each finished shard is one `.npz` written atomically: it is either complete or absent,
so a process killed at any moment leaves no torn shard. A rerun of the same job, with any world
size, loads finished shards and computes the rest; a job whose key differs (another model,
sampler knob, seed, feature network, precision, ...) lives in another folder and never sees
stale shards. Several processes may share a store: each shard is claimed with an advisory lock,
so two jobs computing the same thing do not both compute a shard, and readers only ever see
complete files.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.runner.output import atomic_savez, atomic_write_text

STORE_VERSION = 1
META = "__meta__"


def key_digest(key: dict[str, Any]) -> str:
    """sha256 of a JSON-able key (sorted keys), with the store layout version mixed in."""
    blob = json.dumps({"store_version": STORE_VERSION, **key}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ShardStore:
    """A folder of finished shards for one job key.

    Args:
        root: parent folder (e.g. <cache>/runs); the store lives in root/<digest>.
        key: everything that shapes the shards' content (JSON-able).
        n: number of items in the job.
        shard_size: items per shard.
    """

    def __init__(self, root: str | os.PathLike, key: dict[str, Any], n: int, shard_size: int) -> None:
        if shard_size < 1:
            raise GenevalError(f"shard size must be >= 1, got {shard_size}")
        self.key = {**key, "n": n, "shard_size": shard_size}
        self.digest = key_digest(self.key)
        self.dir = Path(root) / self.digest
        self.n, self.shard_size = n, shard_size
        self.num_shards = (n + shard_size - 1) // shard_size

    def open(self) -> ShardStore:
        """Create the folder and its manifest (idempotent; every rank may call it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "manifest.json"
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text())
            except (OSError, ValueError):
                old = None
            if old is not None and old.get("key") != json.loads(json.dumps(self.key, default=str)):
                raise GenevalError(f"{self.dir} holds shards of another job (key mismatch); remove it")
        else:
            atomic_write_text(manifest, json.dumps({"key": self.key}, indent=2, default=str) + "\n")
        self._sweep_temps()
        return self

    def _sweep_temps(self) -> None:
        """Remove temporary files a killed writer left, for shards nobody is writing now (their lock is free)."""
        for tmp in self.dir.glob(".shard_*.npz.*.tmp"):
            try:
                k = int(tmp.name.split("_", 1)[1].split(".", 1)[0])
            except ValueError:
                continue
            with self.claim(k, wait=False) as free:
                if free:
                    with contextlib.suppress(OSError):
                        tmp.unlink()

    def bounds(self, k: int) -> tuple[int, int]:
        lo = k * self.shard_size
        return lo, min(lo + self.shard_size, self.n)

    def path(self, k: int) -> Path:
        return self.dir / f"shard_{k:06d}.npz"

    def done(self, k: int) -> bool:
        return self.path(k).is_file()

    def save(self, k: int, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> None:
        """Write shard k atomically (arrays plus a JSON meta record)."""
        payload = {**arrays, META: np.asarray(json.dumps(meta or {}, default=str))}
        atomic_savez(self.path(k), payload)

    def load(self, k: int, names: set[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Shard k's arrays (only `names` when given) and meta; a damaged shard is an error naming it."""
        path = self.path(k)
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z[META])) if META in z.files else {}
                arrays = {f: z[f] for f in z.files if f != META and (names is None or f in names)}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise GenevalError(f"shard {path} is unreadable ({type(e).__name__}); delete it to recompute") from None
        return arrays, meta

    @contextlib.contextmanager
    def claim(self, k: int, wait: bool) -> Iterator[bool]:
        """Hold shard k's lock while computing it; yields False when another process holds it (wait=False)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / f".shard_{k:06d}.lock", os.O_CREAT | os.O_RDWR, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def mark_complete(self, record: dict[str, Any]) -> None:
        atomic_write_text(self.dir / "complete.json", json.dumps(record, indent=2, default=str) + "\n")

    def complete_record(self) -> dict[str, Any] | None:
        p = self.dir / "complete.json"
        if not p.is_file():
            return None
        try:
            return json.loads(p.read_text())
        except (OSError, ValueError):
            return None

    def remove(self) -> None:
        """Delete the store (after a successful job that keeps no cache)."""
        import shutil

        shutil.rmtree(self.dir, ignore_errors=True)

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
import shutil
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.runner.output import atomic_savez, atomic_write_text, sweep_temps

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
        self._users_fd: int | None = None

    def _users_lock(self) -> int:
        """The store's users lock, beside it (root/.locks/<digest>.lock): every process that opened
        the store holds it shared; `remove` needs it exclusively. It outlives the store on purpose: a
        lock file deleted while another process waits on it would lock nothing."""
        locks = self.dir.parent / ".locks"
        locks.mkdir(parents=True, exist_ok=True)
        return os.open(locks / f"{self.digest}.lock", os.O_CREAT | os.O_RDWR, 0o644)

    def open(self) -> ShardStore:
        """Create the folder and its manifest (idempotent; every rank may call it).

        The process holds the store (a shared flock) until `release` or `remove`, so another job
        with the same key that finishes first never deletes shards this one is reading; a removal
        in progress is waited for, then the store is made afresh.
        """
        if self._users_fd is None:
            fd = self._users_lock()
            fcntl.flock(fd, fcntl.LOCK_SH)
            self._users_fd = fd
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
        sweep_trash(self.dir.parent)
        return self

    def _sweep_temps(self) -> None:
        """Remove temporary files killed writers left (their flock is free; live writers hold theirs)."""
        sweep_temps(self.dir, ".shard_*.npz.*.tmp")

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

    def __del__(self) -> None:
        try:  # a store dropped without release/remove (an error path) lets go of its hold
            self.release()
        except Exception:  # noqa: BLE001  (interpreter shutdown: os may already be gone)
            pass

    def release(self) -> None:
        """Stop holding the store (every rank, before the rank that removes it tries)."""
        if self._users_fd is not None:
            os.close(self._users_fd)  # closing drops the flock
            self._users_fd = None

    def remove(self) -> bool:
        """Delete the store (after a successful job that keeps no cache); False when another
        process still holds it open (that process removes it when it is done).

        The folder is first renamed aside (one atomic step), so a process killed while deleting
        leaves a `.trash-*` folder that the next store opened in the same root sweeps, never a
        half-deleted store.
        """
        self.release()
        fd = self._users_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            trash = self.dir.parent / f".trash-{self.dir.name}-{os.getpid()}"
            try:
                os.replace(self.dir, trash)
            except OSError:  # gone already, or a stale trash of that name: delete in place
                trash = self.dir
            shutil.rmtree(trash, ignore_errors=True)
            return True
        finally:
            os.close(fd)


def sweep_trash(root: str | os.PathLike) -> None:
    """Finish deleting the stores that processes killed while removing them left in `root`."""
    root = Path(root)
    if root.is_dir():
        for d in root.glob(".trash-*"):
            shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def job_scratch(base: str | os.PathLike, name: str) -> Iterator[Path]:
    """A folder base/name private to one job (shared by its ranks), removed when the job's last process leaves.

    Every process of the job holds a shared flock on base/name/.owner while inside; a folder whose
    lock nobody holds belongs to a job that was killed, and is swept by the next job entering.

    Args:
        base: the parent of all jobs' private folders (<cache>/scratch).
        name: this job's folder name (the same on every rank).
    """
    base = Path(base)
    mine = base / name
    _sweep_scratch(base, mine)
    while True:
        mine.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(mine / ".owner", os.O_CREAT | os.O_RDWR, 0o644)
        except FileNotFoundError:  # a sweeper removed the folder just now
            continue
        fcntl.flock(fd, fcntl.LOCK_SH)  # a sweeper holds it only while deleting
        if os.fstat(fd).st_nlink > 0:
            break
        os.close(fd)
    try:
        yield mine
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        try:  # the last process of the job out removes the folder
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass
        else:
            shutil.rmtree(mine, ignore_errors=True)
        os.close(fd)


_SCRATCH_GRACE_S = 3600.0  # a folder without its .owner file yet: being created, unless it is this old


def _sweep_scratch(base: Path, mine: Path) -> None:
    if not base.is_dir():
        return
    for d in base.iterdir():
        if d == mine or not d.is_dir() or d.is_symlink():
            continue
        try:
            fd = os.open(d / ".owner", os.O_RDONLY)
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                if time.time() - d.stat().st_mtime > _SCRATCH_GRACE_S:
                    shutil.rmtree(d, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its job is alive
            shutil.rmtree(d, ignore_errors=True)
        finally:
            os.close(fd)

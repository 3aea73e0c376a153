"""The one place that writes files: atomic text/bytes/npz writes, a streaming npz writer, sha256, probes.

Every writer here leaves either the old file or the complete new one: data goes to a hidden
temporary file in the target folder, is flushed and fsync'd, then renamed over the target.

Temporary files are locked (flock) by their writer for as long as it lives. A writer killed
outright (SIGKILL, OOM, power) cannot remove its temporary file, so the next write of the same
target sweeps the temporary files whose lock is free: a rerun of the same command leaves none.

Running out of space (ENOSPC, a quota, a file-size limit) while writing is mapped here, and only
here, to one `DiskFullError` naming the file: the partial temporary file is removed, the target
keeps its old content, and the CLI prints one `error:` line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import io
import os
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geneval.errors import GenevalError

_CHUNK = 1 << 20
_HASHES: dict[tuple[str, int, int], str] = {}

# errno values that mean "no room to write": a full disk, a full quota, a file-size limit (ulimit -f).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class DiskFullError(GenevalError):
    """The disk, a quota or a file-size limit ran out while writing; nothing partial was kept."""


def disk_full_cause(e: BaseException | None) -> OSError | None:
    """The disk-full OSError behind `e` (itself, or in its cause/context chain), else None."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
        e = e.__cause__ or e.__context__
    return None


def disk_full_error(e: BaseException, what: str | os.PathLike | None = None) -> DiskFullError | None:
    """The one message for running out of space while writing `what` (default: the file the OS named); None if `e` is not that."""
    cause = disk_full_cause(e)
    if cause is None:
        return None
    target = what if what is not None else (cause.filename or "a file")
    reason = {errno.EFBIG: "file too large for the file-size limit", errno.EDQUOT: "disk quota exceeded"}.get(cause.errno, "no space left on device")
    return DiskFullError(
        f"disk full while writing {target} ({reason}); nothing partial was kept: "
        "free space (or raise the limit) and rerun the same command, finished shards are reused"
    )


@contextlib.contextmanager
def disk_guard(what: str | os.PathLike) -> Iterator[None]:
    """Re-raise running out of space inside the block as one DiskFullError naming `what`."""
    try:
        yield
    except GenevalError:
        raise
    except OSError as e:
        err = disk_full_error(e, what)
        if err is None:
            raise
        raise err from None


def _lock_free(path: Path) -> bool:
    """Remove `path` if no process holds its flock (its writer is dead); True when removed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # a live writer holds it
        with contextlib.suppress(OSError):
            os.unlink(path)
            return True
        return False
    finally:
        os.close(fd)


def sweep_temps(folder: str | os.PathLike, pattern: str) -> int:
    """Remove the temporary files matching `pattern` in `folder` whose writers are dead; returns how many.

    Args:
        folder: where the temporary files are.
        pattern: a glob of temporary names (".results.json.*.tmp").
    """
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(_lock_free(p) for p in folder.glob(pattern) if p.is_file() and not p.is_symlink())


def locked_temp(folder: str | os.PathLike, prefix: str, suffix: str) -> tuple[int, str]:
    """A new temporary file in `folder`, locked (flock) by this process until its fd closes.

    Dead writers' temporary files with the same prefix and suffix are swept first. Returns
    (fd, path); the caller owns the fd (closing it releases the lock).
    """
    folder = Path(folder)
    sweep_temps(folder, f"{glob_escape(prefix)}*{glob_escape(suffix)}")
    while True:
        fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=folder)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a sweeper holds it only while unlinking
        if os.fstat(fd).st_nlink > 0:
            return fd, tmp
        os.close(fd)  # a sweeper took it between mkstemp and flock: take another name


def glob_escape(text: str) -> str:
    """`text` with glob metacharacters bracketed, so it matches only itself."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _new_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, remembered per (path, size, mtime) within the process."""
    st = os.stat(path)
    key = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def temp_pattern(path: str | os.PathLike) -> str:
    """The glob of the temporary files `atomic_open` and `NpzStreamWriter` use for `path`."""
    return f".{glob_escape(Path(path).name)}.*.tmp"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only on success.

    Running out of space raises DiskFullError (the temporary file is removed, `path` untouched).
    """
    path = Path(path)
    with disk_guard(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = locked_temp(path.parent, f".{path.name}.", ".tmp")
    try:
        # mkstemp makes 0600 files; outputs are meant to be shared like any file the user writes.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else _new_file_mode())
        f = os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        with disk_guard(path):
            try:
                yield f
                f.flush()
                os.fsync(f.fileno())
                os.replace(tmp, path)  # still holding the lock: no sweeper can take the file first
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
    finally:
        with contextlib.suppress(OSError):  # a failed flush on close: the file is gone already
            f.close()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file so that a crash leaves either the old file or the complete new one."""
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically (see atomic_write_text)."""
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_savez(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to `path` atomically; object arrays are refused (no pickle on read)."""
    for k, v in arrays.items():
        if np.asarray(v).dtype == object:
            raise ValueError(f"array {k!r} has dtype object; refusing to pickle")
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Prove that files can be created in `folder` (made if missing) with a probe file, removed at once.

    Args:
        folder: the folder outputs will go to.
        what: how the error names it ("--out folder", "report folder").
    """
    folder = Path(folder)
    created: list[Path] = []
    try:
        probe_parent = folder
        while not probe_parent.exists():
            created.append(probe_parent)
            probe_parent = probe_parent.parent
        if not probe_parent.is_dir():
            raise GenevalError(f"{what} {folder} cannot be created: {probe_parent} is a file, not a folder")
        for attempt in range(3):
            folder.mkdir(parents=True, exist_ok=True)
            try:
                fd, probe = locked_temp(folder, ".geneval-probe.", ".tmp")  # a killed prober's file is swept by the next
            except FileNotFoundError:
                # Another prober (a second rank checking the same folder) removed the folder it had
                # made just for its probe, between our mkdir and our probe: make it again.
                if attempt == 2:
                    raise
                continue
            try:
                os.unlink(probe)
            finally:
                os.close(fd)
            break
    except OSError as e:
        raise GenevalError(f"{what} {folder} is not writable ({e.strerror or e})") from None
    finally:
        # Leave nothing behind: folders made only for the probe go again (the real write makes them).
        for d in created:
            with contextlib.suppress(OSError):
                d.rmdir()


def check_output_file(path: str | os.PathLike, what: str, suffixes: tuple[str, ...] = ()) -> Path:
    """Preflight for an output file: allowed suffix, not a folder, parent writable.

    Args:
        path: the file that will be written.
        what: the option naming it in errors ("--out", "--save-samples").
        suffixes: allowed lowercase suffixes (empty: any).
    """
    p = Path(path)
    if suffixes and p.suffix.lower() not in suffixes:
        raise GenevalError(f"{what} must end in {' or '.join(suffixes)}, got {p}")
    if p.is_dir():
        raise GenevalError(f"{what} {p} is a folder; give a file name")
    check_writable(p.parent if str(p.parent) else Path("."), f"{what} folder")
    return p


class NpzStreamWriter:
    """Streams uint8 batches into an ADM sample batch (.npz: arr_0 N×H×W×C, arr_1 labels) atomically.

    Memory is one batch: arr_0's header is written with the final shape up front and rows are
    appended as they come; the file is renamed into place only once exactly N rows arrived.

    Args:
        path: the .npz to write.
        n: the number of images that will be added.
        extra: further small arrays to store after arr_0/arr_1 (mu, sigma, geneval_meta, ...).
    """

    def __init__(self, path: str | os.PathLike, n: int) -> None:
        self.path, self.n, self.count = Path(path), n, 0
        with disk_guard(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fd, self.tmp = locked_temp(self.path.parent, f".{self.path.name}.", ".tmp")
        try:
            os.chmod(self.tmp, self.path.stat().st_mode & 0o777 if self.path.exists() else _new_file_mode())
            self._file = os.fdopen(self._fd, "w+b")  # holds the lock until the file is in place
            self._zip = zipfile.ZipFile(self._file, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        except BaseException:
            os.close(self._fd)
            Path(self.tmp).unlink(missing_ok=True)
            raise
        self._member: Any = None
        self._shape: tuple[int, ...] | None = None
        self.labels: list[np.ndarray] = []

    def add(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append a batch (uint8 NHWC, every batch the same H, W, C)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if self._member is None:
            self._shape = tuple(images.shape[1:])
            with disk_guard(self.path):
                self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (self.n, *self._shape)}
                np.lib.format.write_array_header_2_0(self._member, header)
        elif tuple(images.shape[1:]) != self._shape:
            raise GenevalError(f"image shape changed from {self._shape} to {tuple(images.shape[1:])} while writing {self.path}")
        if self.count + len(images) > self.n:
            raise GenevalError(f"more than {self.n} images were written to {self.path}")
        with disk_guard(self.path):
            self._member.write(images.data)
        self.count += len(images)
        if labels is not None:
            self.labels.append(np.asarray(labels, dtype=np.int64))

    def close(self, extra: dict[str, np.ndarray] | None = None) -> None:
        """Finish the file (arr_1 when labels came, then `extra`) and rename it into place."""
        if self.count != self.n or self._member is None:
            raise GenevalError(f"{self.count} images were produced for {self.path}, expected {self.n}")
        with disk_guard(self.path):
            self._member.close()
            arrays = dict(extra or {})
            if self.labels:
                arrays = {"arr_1": np.concatenate(self.labels), **arrays}
            for name, arr in arrays.items():
                buf = io.BytesIO()
                np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
                self._zip.writestr(f"{name}.npy", buf.getvalue())
            self._zip.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            os.replace(self.tmp, self.path)  # still locked: no sweeper can take it first
        self._file.close()

    def discard(self) -> None:
        """Drop the temporary file (after an error)."""
        with contextlib.suppress(OSError, ValueError):
            if self._member is not None:
                self._member.close()
        with contextlib.suppress(OSError, ValueError):
            self._zip.close()
        if not self._file.closed:  # not renamed into place yet: the temporary file goes
            Path(self.tmp).unlink(missing_ok=True)
        with contextlib.suppress(OSError, ValueError):
            self._file.close()

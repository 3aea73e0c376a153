"""The one place that writes files: atomic text/bytes/npz writes, a streaming npz writer, sha256, probes.

Every writer here leaves either the old file or the complete new one: data goes to a hidden
temporary file in the target folder, is flushed and fsync'd, then renamed over the target.
"""

from __future__ import annotations

import contextlib
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


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; rename it over `path` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes 0600 files; outputs are meant to be shared like any file the user writes.
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".geneval-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member: Any = None
        self._shape: tuple[int, ...] | None = None
        self.labels: list[np.ndarray] = []

    def add(self, images: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Append a batch (uint8 NHWC, every batch the same H, W, C)."""
        images = np.ascontiguousarray(images, dtype=np.uint8)
        if self._member is None:
            self._shape = tuple(images.shape[1:])
            self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (self.n, *self._shape)}
            np.lib.format.write_array_header_2_0(self._member, header)
        elif tuple(images.shape[1:]) != self._shape:
            raise GenevalError(f"image shape changed from {self._shape} to {tuple(images.shape[1:])} while writing {self.path}")
        if self.count + len(images) > self.n:
            raise GenevalError(f"more than {self.n} images were written to {self.path}")
        self._member.write(images.data)
        self.count += len(images)
        if labels is not None:
            self.labels.append(np.asarray(labels, dtype=np.int64))

    def close(self, extra: dict[str, np.ndarray] | None = None) -> None:
        """Finish the file (arr_1 when labels came, then `extra`) and rename it into place."""
        if self.count != self.n or self._member is None:
            raise GenevalError(f"{self.count} images were produced for {self.path}, expected {self.n}")
        self._member.close()
        arrays = dict(extra or {})
        if self.labels:
            arrays = {"arr_1": np.concatenate(self.labels), **arrays}
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arr), allow_pickle=False)
            self._zip.writestr(f"{name}.npy", buf.getvalue())
        self._zip.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Drop the temporary file (after an error)."""
        with contextlib.suppress(OSError, ValueError):
            if self._member is not None:
                self._member.close()
            self._zip.close()
        Path(self.tmp).unlink(missing_ok=True)

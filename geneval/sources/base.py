"""What every source of images or statistics offers: batches, a size, a content hash, a read report.

A `Source` yields uint8 NHWC batches with C in {1, 3, 4} (grayscale and alpha are handled by the
feature extractor's preprocessing). Sources that carry precomputed statistics or features (ADM
reference batches, pytorch-fid stats files, geneval reference files) expose them as plain arrays
in `stats` / `features`; deciding whether they may be used is the caller's job.
"""

from __future__ import annotations

import abc
import hashlib
import lzma
import re
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geneval.errors import GenevalError

Batch = tuple[np.ndarray, "np.ndarray | None"]

# Bytes per read when hashing files: large enough to be fast, small enough to stream.
HASH_CHUNK = 1 << 20
# What reading a damaged zip (or one of its members) can raise besides BadZipFile: truncation,
# unsupported or encrypted members, bad compressed streams, absurd header fields.
ZIP_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    OSError,
    EOFError,
    ValueError,
    OverflowError,
    NotImplementedError,
    RuntimeError,
    zlib.error,
    lzma.LZMAError,
    struct.error,
    IndexError,  # zipfile indexes into header fields it has not length-checked
)
# What parsing a damaged .npy header can raise (numpy tokenizes the header dict).
NPY_ERRORS: tuple[type[BaseException], ...] = (*ZIP_ERRORS, tokenize.TokenError, SyntaxError)
# A library's repr of a file object ("<_io.BytesIO object at 0x7f...>") says nothing to a user.
_OBJECT_REPR = re.compile(r":?\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def one_line(e: BaseException | str) -> str:
    """A library's exception (or text) as one line for a user: whitespace collapsed, no object reprs."""
    text = " ".join(_OBJECT_REPR.sub("", str(e)).split())
    return text or (type(e).__name__ if isinstance(e, BaseException) else "")


@dataclass
class ReadReport:
    """How many inputs a source read, rejected (with reasons), ignored (not images by name) and
    how many symlinks a folder walk skipped (into a folder already walked, or to a file already counted)."""

    read: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)
    ignored: int = 0
    links_skipped: int = 0

    @property
    def n_rejected(self) -> int:
        return len(self.rejected)

    def reject(self, item: str, reason: str) -> None:
        # Undecodable file names (surrogate escapes) would break printing the summary.
        item = item.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        self.rejected.append((item, one_line(reason) or "rejected"))

    def summary(self, what: str = "images", max_reasons: int = 3) -> str:
        """One line: 'read 998 images (2 rejected: a.png: truncated; b.png: ...)'."""
        text = f"read {self.read} {what}"
        notes = []
        if self.rejected:
            reasons = "; ".join(f"{item}: {why}" for item, why in self.rejected[:max_reasons])
            more = f"; +{self.n_rejected - max_reasons} more" if self.n_rejected > max_reasons else ""
            notes.append(f"{self.n_rejected} rejected: {reasons}{more}")
        else:
            notes.append("0 rejected")
        if self.ignored:
            notes.append(f"{self.ignored} non-image files ignored")
        if self.links_skipped:
            notes.append(f"{self.links_skipped} symlinks skipped (folder or file already counted)")
        return f"{text} ({', '.join(notes)})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "rejected": self.n_rejected,
            "ignored": self.ignored,
            "links_skipped": self.links_skipped,
            "rejected_items": [list(r) for r in self.rejected],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReadReport:
        return cls(int(d.get("read", 0)), [tuple(r) for r in d.get("rejected_items", [])], int(d.get("ignored", 0)), int(d.get("links_skipped", 0)))


class Source(abc.ABC):
    """A stream of uint8 NHWC image batches (and/or precomputed statistics) with provenance.

    Attributes:
        spec: what the user passed (path, dataset name or a description of the array).
        kind: short type name: folder, zip, npz, npy, array, dataset, adm-ref, stats.
        has_images: False for statistics-only files (only FID/sFID possible).
        stats: precomputed Gaussian statistics by layer ("pool3", "spatial") as (mu, sigma) float64.
        features: precomputed per-image features by layer (e.g. "pool3"), float32.
        meta: geneval metadata stored with the file (mode, weights sha256, n, ...), {} if foreign.
        quantisation: how pixels became uint8 ("uint8 input" unless floats were converted).
        report: counts of inputs read / rejected / ignored, filled while streaming.
    """

    kind: str = "source"
    has_images: bool = True

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.features: dict[str, np.ndarray] = {}
        self.meta: dict[str, Any] = {}
        self.quantisation = "uint8 input"
        self.report = ReadReport()
        self._hash: str | None = None

    @property
    @abc.abstractmethod
    def n(self) -> int | None:
        """Number of images (candidates before decoding, for folders and zips); None if unknown."""

    def batches(self, batch_size: int = 64) -> Iterator[Batch]:
        """Yield (uint8 NHWC images, int64 labels or None); every image of a batch has one shape.

        Args:
            batch_size: most images per batch (mixed-size inputs may give smaller batches).
        """
        if batch_size < 1:
            raise GenevalError(f"batch size must be >= 1, got {batch_size}")
        if not self.has_images:
            raise GenevalError(f"{self.spec} holds statistics only, no images")
        self.report = ReadReport()
        self.check_values()  # runs on the first next(): a bad value stops us before any batch is used
        yield from self._batches(batch_size)

    def check_values(self) -> None:
        """Scan every pixel value up front (chunked) and raise naming the first bad image; once.

        Float arrays may hold NaN/inf or values outside their stated range; uint8 and decoded
        files cannot, so for them this is a no-op. `batches()` calls it before the first batch,
        and each batch is checked again as it is produced where no cheap scan exists.
        """
        if not getattr(self, "_values_checked", False):
            self._check_values()
            self._values_checked = True

    def _check_values(self) -> None:
        """Subclasses with float pixels scan them here (default: nothing to check)."""
        return None

    @abc.abstractmethod
    def _batches(self, batch_size: int) -> Iterator[Batch]: ...

    def content_hash(self) -> str:
        """sha256 (hex) of the content: file bytes, or array shape+dtype+bytes; computed once."""
        if self._hash is None:
            self._hash = self._content_hash()
        return self._hash

    @abc.abstractmethod
    def _content_hash(self) -> str: ...

    def describe(self) -> str:
        """One line: kind, spec and size."""
        n = "?" if self.n is None else str(self.n)
        what = "images" if self.has_images else "statistics"
        return f"{self.kind} {self.spec} ({n} {what})"

    def check_nonempty(self) -> None:
        """Raise if the source has nothing to evaluate (cheap: no decoding)."""
        if self.has_images and self.n == 0:
            raise GenevalError(f"{self.spec}: no images found")


def hash_file(path, h: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed a file's bytes into a sha256 (new one unless `h` is given), chunk by chunk."""
    h = h or hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                h.update(chunk)
    except OSError as e:
        raise GenevalError(f"cannot read {path}: {e.strerror or e}") from None
    return h


def hash_array(arr: np.ndarray) -> str:
    """sha256 of an array's dtype, shape and C-order bytes, streamed in slices along axis 0."""
    h = hashlib.sha256(f"{arr.dtype.str}{tuple(arr.shape)}".encode())
    if arr.ndim == 0 or arr.shape[0] == 0:
        h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()
    per_row = max(1, arr[0].nbytes)
    step = max(1, HASH_CHUNK * 16 // per_row)
    for i in range(0, arr.shape[0], step):
        h.update(np.ascontiguousarray(arr[i : i + step]).data)
    return h.hexdigest()

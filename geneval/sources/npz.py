"""`.npz` files: ADM sample batches, ADM reference batches, pytorch-fid / geneval statistics.

What a file is follows from its keys:
  - `arr_0` (+ optional `arr_1` labels): an ADM sample batch;
  - `arr_0` + `mu`, `sigma` (+ `mu_s`, `sigma_s`): an ADM reference batch: images and stats;
  - `mu`, `sigma` without `arr_0`: a statistics file (pytorch-fid; `mu_s`/`sigma_s` too if geneval
    wrote it): only FID (and sFID with spatial stats) can use it;
  - `geneval_pool3` (float32 N x 2048): pool3 features geneval stored with a reference it built;
  - `geneval_meta`: a JSON string (mode, weights sha256, n, ...) geneval writes.

`arr_0` is streamed from the zip member batch by batch (the file may be tens of GB); a damaged
archive or member is fatal (GenevalError): unlike a folder, one bad byte leaves no image we
could trust to skip. Every member's header is checked against the member's size before anything
is read, so a lying header cannot make us allocate or wait for data that is not there. Float
`arr_0` pixels are scanned up front when the member is stored (np.savez: memory-mapped in
place, chunked); a compressed member (np.savez_compressed) is checked batch by batch instead,
which would cost a second decompression up front. Either way the error names the image index.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.sources.arrays import check_dtype, infer_layout, quantisation_note, scan_values, to_uint8_nhwc
from geneval.sources.base import NPY_ERRORS, ZIP_ERRORS, Batch, Source, hash_file, one_line

STATS_KEYS = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
FEATURE_KEYS = {"pool3": "geneval_pool3"}
META_KEY = "geneval_meta"


class _Header:
    """A member's .npy header: shape, dtype, order, where the data starts and how long it is."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, fortran: bool, offset: int) -> None:
        self.shape, self.dtype, self.fortran, self.offset = (shape, dtype, fortran, offset)
        self.nbytes = math.prod(shape) * dtype.itemsize


class NpzSource(Source):
    """An ADM sample batch, ADM reference batch or statistics `.npz` (see module docstring)."""

    def __init__(self, path: Path, *, layout: str = "auto", float_range: str | None = None) -> None:
        super().__init__(str(path))
        self.path = path
        self.float_range = float_range
        self.shape: tuple[int, ...] | None = None
        try:
            self._zip = zipfile.ZipFile(path)
            members = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}
        except ZIP_ERRORS as e:
            raise GenevalError(f"{path}: corrupt or truncated .npz ({one_line(e)})") from None
        self._members = members
        keys = set(members)
        self._read_small_arrays(keys)
        self.labels = self._load_labels() if "arr_1" in keys else None
        if "arr_0" in keys:
            head = self._header("arr_0")
            self.shape, self.dtype, self._header_len, self._fortran = (head.shape, head.dtype, head.offset, head.fortran)
            self.layout = infer_layout(self.shape, f"{path}: arr_0", layout)
            check_dtype(self.dtype, f"{path}: arr_0", float_range)
            self.quantisation = quantisation_note(self.dtype, float_range)
            self.has_images = True
            self.kind = "adm-ref" if self.stats else "npz"
            if self.labels is not None and len(self.labels) != self.shape[0]:
                raise GenevalError(f"{path}: {len(self.labels)} labels (arr_1) for {self.shape[0]} images (arr_0)")
        elif self.stats:
            self.has_images = False
            self.kind = "stats"
        else:
            raise GenevalError(f"{path}: neither images (arr_0) nor statistics (mu, sigma); keys: {sorted(keys) or 'none'}")

    # -- member headers ----------------------------------------------------------------------
    def _header(self, key: str) -> _Header:
        """Parse a member's .npy header and check that the member holds the data it declares."""
        info = self._zip.getinfo(self._members[key])
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version in ((2, 0), (3, 0)):  # 3.0 differs only in allowing utf-8 field names
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
                offset = f.tell()
        except NPY_ERRORS as e:
            raise GenevalError(f"{self.path}: corrupt or truncated {key} ({one_line(e)})") from None
        dtype = np.dtype(dtype)
        if any(d < 0 for d in shape):
            raise GenevalError(f"{self.path}: member {key!r} declares a negative shape {tuple(shape)}")
        head = _Header(tuple(int(d) for d in shape), dtype, bool(fortran), offset)
        if dtype.hasobject:
            raise GenevalError(f"{self.path}: member {key!r} holds Python objects ({dtype}); refusing to unpickle")
        if head.nbytes > info.file_size - offset:
            raise GenevalError(
                f"{self.path}: {key} is truncated: its header declares {head.shape} {dtype} "
                f"({head.nbytes} bytes) but the member holds {max(0, info.file_size - offset)}"
            )
        return head

    # -- small arrays: statistics, features, labels, metadata -------------------------------
    def _load(self, key: str) -> np.ndarray:
        self._header(key)  # sizes checked before read_array allocates anything
        try:
            with self._zip.open(self._members[key]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except NPY_ERRORS as e:
            raise GenevalError(f"{self.path}: corrupt or truncated {key} ({one_line(e)})") from None

    def _load_numeric(self, key: str, kinds: str, what: str) -> np.ndarray:
        arr = self._load(key)
        if arr.dtype.kind not in kinds:
            raise GenevalError(f"{self.path}: {key} has dtype {arr.dtype}, expected {what}")
        return arr

    def _load_labels(self) -> np.ndarray:
        return self._load_numeric("arr_1", "iu", "integer class labels").astype(np.int64).reshape(-1)

    def _read_small_arrays(self, keys: set[str]) -> None:
        for layer, (mk, sk) in STATS_KEYS.items():
            if mk in keys or sk in keys:
                if not (mk in keys and sk in keys):
                    raise GenevalError(f"{self.path}: has {mk if mk in keys else sk!r} without its partner")
                mu = self._load_numeric(mk, "fiu", "float statistics").astype(np.float64)
                sigma = self._load_numeric(sk, "fiu", "float statistics").astype(np.float64)
                if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]) or mu.shape[0] == 0:
                    raise GenevalError(f"{self.path}: {mk}/{sk} shapes {mu.shape}/{sigma.shape} are not (d,) and (d, d) with d >= 1")
                if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                    raise GenevalError(f"{self.path}: non-finite values in {mk}/{sk}")
                self.stats[layer] = (mu, sigma)
        for layer, key in FEATURE_KEYS.items():
            if key in keys:
                feats = self._load_numeric(key, "f", "float features")
                if feats.ndim != 2:
                    raise GenevalError(f"{self.path}: {key} has shape {feats.shape}, expected (N, d)")
                self.features[layer] = feats
        if META_KEY in keys:
            raw = self._load(META_KEY)
            try:
                if raw.dtype.kind not in "US" or raw.ndim != 0:
                    raise TypeError(f"expected a JSON string, got {raw.dtype} {raw.shape}")
                meta = json.loads(raw.item())
                if not isinstance(meta, dict):
                    raise TypeError(f"expected a JSON object, got {type(meta).__name__}")
                n = meta.get("n")
                if n is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
                    raise TypeError(f"'n' must be a count, got {n!r}")
            except (ValueError, TypeError, RecursionError) as e:
                raise GenevalError(f"{self.path}: unreadable {META_KEY} ({one_line(e)})") from None
            self.meta.update(meta)

    @property
    def n(self) -> int | None:
        if self.shape is not None:
            return int(self.shape[0])
        n = self.meta.get("n")
        return int(n) if n is not None else None

    # -- float values: checked before the first batch ------------------------------------------
    def _check_values(self) -> None:
        if not self.has_images or self.dtype.kind != "f":
            return
        info = self._zip.getinfo(self._members["arr_0"])
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
            return  # compressed: checked batch by batch in _batches (a pre-scan would decompress twice)
        try:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
            name_len, extra_len = struct.unpack("<26xHH", local)
            data_start = info.header_offset + 30 + name_len + extra_len + self._header_len
            arr = np.memmap(self.path, dtype=self.dtype, mode="r", offset=data_start, shape=self.shape, order="F" if self._fortran else "C")
        except (OSError, ValueError, struct.error) as e:
            raise GenevalError(f"{self.path}: corrupt or truncated arr_0 ({one_line(e)})") from None
        try:
            scan_values(arr, f"{self.path}: arr_0", self.float_range)
        finally:
            del arr

    # -- streaming arr_0 ---------------------------------------------------------------------
    def _batches(self, batch_size: int) -> Iterator[Batch]:
        if self._fortran:  # rare: np.savez of a Fortran-ordered array; no row streaming possible
            arr = self._load("arr_0")
            chunks = (arr[i : i + batch_size] for i in range(0, len(arr), batch_size))
        else:
            chunks = self._stream_rows(batch_size)
        i = 0
        for raw in chunks:
            imgs = to_uint8_nhwc(raw, self.layout, f"{self.path}: arr_0", self.float_range, start=i)
            self.report.read += len(imgs)
            labels = None if self.labels is None else self.labels[i : i + len(imgs)]
            i += len(imgs)
            yield imgs, labels

    def _stream_rows(self, batch_size: int) -> Iterator[np.ndarray]:
        n = self.shape[0]
        row_shape = self.shape[1:]
        row_bytes = math.prod(row_shape) * self.dtype.itemsize
        try:
            with self._zip.open(self._members["arr_0"]) as f:
                f.read(self._header_len)
                for start in range(0, n, batch_size):
                    k = min(batch_size, n - start)
                    buf = _read_exact(f, k * row_bytes)
                    if len(buf) != k * row_bytes:
                        raise GenevalError(
                            f"{self.path}: arr_0 is truncated: header says {n} images, data ends at image {start + len(buf) // max(row_bytes, 1)}"
                        )
                    yield np.frombuffer(buf, dtype=self.dtype).reshape((k, *row_shape))
                while f.read(1 << 20):  # reach the end so zipfile checks the member's CRC
                    pass
        except ZIP_ERRORS as e:
            raise GenevalError(f"{self.path}: corrupt or truncated arr_0 ({one_line(e)})") from None

    def _content_hash(self) -> str:
        return hash_file(self.path).hexdigest()

    def describe(self) -> str:
        parts = []
        if self.has_images:
            parts.append(f"{self.n} images {tuple(self.shape[1:])} {self.dtype}")
        for layer, (mu, _) in self.stats.items():
            parts.append(f"{layer} stats d={mu.shape[0]}")
        for layer, feats in self.features.items():
            parts.append(f"{layer} features {feats.shape}")
        return f"{self.kind} {self.spec} ({', '.join(parts)})"


def _read_exact(f: Any, size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = f.read(size - got)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)

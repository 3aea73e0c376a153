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
could trust to skip.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from geneval.errors import GenevalError
from geneval.sources.arrays import check_dtype, infer_layout, quantisation_note, to_uint8_nhwc
from geneval.sources.base import Batch, Source, hash_file

STATS_KEYS = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
FEATURE_KEYS = {"pool3": "geneval_pool3"}
META_KEY = "geneval_meta"


class NpzSource(Source):
    """An ADM sample batch, ADM reference batch or statistics `.npz` (see module docstring)."""

    def __init__(self, path: Path, *, layout: str = "auto", float_range: str | None = None) -> None:
        super().__init__(str(path))
        self.path = path
        self.float_range = float_range
        try:
            self._zip = zipfile.ZipFile(path)
            members = {n[:-4]: n for n in self._zip.namelist() if n.endswith(".npy")}
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise GenevalError(f"{path}: corrupt or truncated .npz ({_one_line(e)})") from None
        self._members = members
        keys = set(members)
        self._read_small_arrays(keys)
        self.labels = self._load("arr_1").astype(np.int64).reshape(-1) if "arr_1" in keys else None
        if "arr_0" in keys:
            self.shape, self.dtype, self._header_len, self._fortran = self._arr0_header()
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
            self.shape = None
        else:
            raise GenevalError(
                f"{path}: neither images (arr_0) nor statistics (mu, sigma); keys: {sorted(keys) or 'none'}"
            )

    # -- small arrays: statistics, features, labels, metadata -------------------------------
    def _load(self, key: str) -> np.ndarray:
        try:
            with self._zip.open(self._members[key]) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise GenevalError(f"{self.path}: corrupt or truncated .npz member {key!r} ({_one_line(e)})") from None

    def _read_small_arrays(self, keys: set[str]) -> None:
        for layer, (mk, sk) in STATS_KEYS.items():
            if mk in keys or sk in keys:
                if not (mk in keys and sk in keys):
                    raise GenevalError(f"{self.path}: has {mk if mk in keys else sk!r} without its partner")
                mu, sigma = self._load(mk).astype(np.float64), self._load(sk).astype(np.float64)
                d = mu.reshape(-1).shape[0]
                if mu.ndim != 1 or sigma.shape != (d, d):
                    raise GenevalError(
                        f"{self.path}: {mk}/{sk} shapes {mu.shape}/{sigma.shape} are not (d,) and (d, d)"
                    )
                if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
                    raise GenevalError(f"{self.path}: non-finite values in {mk}/{sk}")
                self.stats[layer] = (mu, sigma)
        for layer, key in FEATURE_KEYS.items():
            if key in keys:
                feats = self._load(key)
                if feats.ndim != 2:
                    raise GenevalError(f"{self.path}: {key} has shape {feats.shape}, expected (N, d)")
                self.features[layer] = feats
        if META_KEY in keys:
            try:
                self.meta.update(json.loads(str(self._load(META_KEY))))
            except (ValueError, TypeError) as e:
                raise GenevalError(f"{self.path}: unreadable {META_KEY} ({_one_line(e)})") from None

    # -- streaming arr_0 ---------------------------------------------------------------------
    def _arr0_header(self) -> tuple[tuple[int, ...], np.dtype, int, bool]:
        try:
            with self._zip.open(self._members["arr_0"]) as f:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
                return tuple(shape), np.dtype(dtype), f.tell(), fortran
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise GenevalError(f"{self.path}: corrupt or truncated arr_0 ({_one_line(e)})") from None

    @property
    def n(self) -> int | None:
        if self.shape is not None:
            return int(self.shape[0])
        n = self.meta.get("n")
        return int(n) if n is not None else None

    def _batches(self, batch_size: int) -> Iterator[Batch]:
        if self._fortran:  # rare: np.savez of a Fortran-ordered array; no row streaming possible
            arr = self._load("arr_0")
            chunks = (arr[i : i + batch_size] for i in range(0, len(arr), batch_size))
        else:
            chunks = self._stream_rows(batch_size)
        i = 0
        for raw in chunks:
            imgs = to_uint8_nhwc(raw, self.layout, f"{self.path}: arr_0", self.float_range)
            self.report.read += len(imgs)
            labels = None if self.labels is None else self.labels[i : i + len(imgs)]
            i += len(imgs)
            yield imgs, labels

    def _stream_rows(self, batch_size: int) -> Iterator[np.ndarray]:
        n = self.shape[0]
        row_shape = self.shape[1:]
        row_bytes = int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
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
                f.read()  # reach the end so zipfile checks the member's CRC
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
            raise GenevalError(f"{self.path}: corrupt or truncated arr_0 ({_one_line(e)})") from None

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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__

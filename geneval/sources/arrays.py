"""Array sources: in-memory numpy arrays / torch tensors, `.npy` files (memory-mapped).

Accepted layouts: NHWC, NCHW (C in 1, 3, 4) and NHW (grayscale). The layout is inferred from the
shape (a last axis of 1, 3 or 4 means NHWC, else an axis 1 of 1, 3 or 4 means NCHW) unless
given. Pixels must be uint8. Float arrays are rejected unless the caller states their range
(`float_range="0,1"` or `"-1,1"`), because guessing the range silently changes every metric:
  - "-1,1" is quantised as ADM does: ((x + 1) * 127.5).clip(0, 255) truncated to uint8;
  - "0,1" as torchvision's save_image does: (x * 255 + 0.5).clip(0, 255) truncated (= rounding).
The conversion is recorded in `Source.quantisation`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.sources.base import NPY_ERRORS, Batch, Source, hash_array, hash_file, one_line

LAYOUTS = ("auto", "nhwc", "nchw", "nhw")
FLOAT_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0)}
# Tolerance on the stated float range: values a hair outside come from float round-off.
_RANGE_TOL = 1e-3


def infer_layout(shape: tuple[int, ...], where: str, layout: str = "auto") -> str:
    """Decide nhwc / nchw / nhw for an image array of `shape`; raise on anything else.

    Args:
        shape: the full array shape (N first).
        where: what to name in error messages (path or 'array').
        layout: "auto" or a forced layout.
    """
    if layout not in LAYOUTS:
        raise GenevalError(f"unknown layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    ndim = len(shape)
    if layout == "auto":
        if ndim == 3:
            layout = "nhw"
        elif ndim == 4 and shape[-1] in (1, 3, 4):
            layout = "nhwc"
        elif ndim == 4 and shape[1] in (1, 3, 4):
            layout = "nchw"
        else:
            raise GenevalError(
                f"{where}: wrong image array shape {tuple(shape)}: expected N x H x W x C or N x C x H x W with C in 1, 3, 4, or N x H x W"
            )
    expected_ndim = 3 if layout == "nhw" else 4
    if ndim != expected_ndim:
        raise GenevalError(f"{where}: shape {tuple(shape)} does not fit layout {layout}")
    c = {"nhwc": shape[-1], "nchw": shape[1] if ndim == 4 else 1, "nhw": 1}[layout]
    if c not in (1, 3, 4):
        raise GenevalError(f"{where}: {c} channels in shape {tuple(shape)}: expected 1, 3 or 4")
    hw = shape[1:3] if layout in ("nhwc", "nhw") else shape[2:4]
    if min(hw) < 1:
        raise GenevalError(f"{where}: empty image size {tuple(hw)} in shape {tuple(shape)}")
    return layout


def check_dtype(dtype: np.dtype, where: str, float_range: str | None) -> None:
    """Accept uint8, or a float dtype when its range is stated; raise otherwise."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return
    if dtype.kind == "f":
        if float_range is None:
            raise GenevalError(
                f"{where}: float pixels ({dtype}) need a stated range: pass float_range='0,1' or '-1,1' (CLI --float-range), or save uint8 images"
            )
        if float_range not in FLOAT_RANGES:
            raise GenevalError(f"unknown float range {float_range!r}: use '0,1' or '-1,1'")
        return
    raise GenevalError(f"{where}: pixel dtype {dtype} is not supported: expected uint8 (or float with a stated range)")


# Bytes of pixels per chunk when scanning values up front: bounded memory even for huge mmaps.
SCAN_CHUNK_BYTES = 64 << 20


def scan_values(arr: np.ndarray, where: str, float_range: str | None, start: int = 0, chunk_bytes: int = SCAN_CHUNK_BYTES) -> None:
    """Raise if any image of a float array (first axis = images) is non-finite or out of range.

    Reads the array in chunks of about `chunk_bytes` (a memory-mapped array stays on disk), and
    names the first bad image by its global index (`start` + position in `arr`).

    Args:
        arr: float pixels, images along axis 0 (any layout).
        where: what to name in the error (path or 'array').
        float_range: the stated range, "0,1" or "-1,1".
        start: global index of arr[0].
        chunk_bytes: about how many bytes to look at per step.
    """
    if arr.dtype.kind != "f" or arr.ndim == 0 or arr.shape[0] == 0 or arr.size == 0:
        return
    lo, hi = FLOAT_RANGES[float_range]
    step = max(1, chunk_bytes // max(1, arr[:1].nbytes))
    for i in range(0, arr.shape[0], step):
        chunk = arr[i : i + step]
        # min/max propagate NaN and expose inf: two reductions, no temporary of the chunk's size.
        cmin, cmax = float(chunk.min()), float(chunk.max())
        if np.isfinite(cmin) and np.isfinite(cmax) and cmin >= lo - _RANGE_TOL and cmax <= hi + _RANGE_TOL:
            continue
        for j in range(len(chunk)):
            img = np.asarray(chunk[j], dtype=np.float64)
            finite = np.isfinite(img)
            if not finite.all():
                bad = img[~finite]
                kinds = ", ".join(k for k, m in (("NaN", np.isnan(bad)), ("inf", bad > 0), ("-inf", bad < 0)) if m.any())
                raise GenevalError(
                    f"{where}: image {start + i + j} (0-based) holds non-finite pixel values ({kinds}); fix or drop it before evaluating"
                )
            if img.min() < lo - _RANGE_TOL or img.max() > hi + _RANGE_TOL:
                raise GenevalError(
                    f"{where}: image {start + i + j} (0-based) has pixel values in [{img.min():.4g}, {img.max():.4g}], "
                    f"outside the stated range [{lo:g}, {hi:g}]"
                )


def to_uint8_nhwc(batch: np.ndarray, layout: str, where: str, float_range: str | None, start: int = 0) -> np.ndarray:
    """Convert one batch of a validated layout/dtype to contiguous uint8 NHWC.

    Args:
        batch: images of one batch in `layout`.
        layout: nhwc, nchw or nhw.
        where: what to name in errors.
        float_range: stated range of float pixels (None for uint8).
        start: global index of batch[0], so a bad value names its image.
    """
    if batch.dtype != np.uint8:
        scan_values(batch, where, float_range, start)
    if layout == "nchw":
        batch = batch.transpose(0, 2, 3, 1)
    elif layout == "nhw":
        batch = batch[..., None]
    if batch.dtype != np.uint8:
        x = np.asarray(batch, dtype=np.float64)
        if float_range == "-1,1":
            x = (x + 1.0) * 127.5
        else:
            x = x * 255.0 + 0.5
        batch = np.clip(x, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(batch)


def quantisation_note(dtype: np.dtype, float_range: str | None) -> str:
    if np.dtype(dtype) == np.uint8:
        return "uint8 input"
    return {"-1,1": "float [-1,1] -> ((x+1)*127.5) truncated (ADM)", "0,1": "float [0,1] -> (x*255+0.5) truncated (rounded)"}[float_range]


class ArraySource(Source):
    """An in-memory image array (numpy or torch), optionally with labels."""

    kind = "array"

    def __init__(
        self,
        images: Any,
        labels: Any = None,
        *,
        spec: str | None = None,
        layout: str = "auto",
        float_range: str | None = None,
        kind: str | None = None,
    ) -> None:
        arr = _as_numpy(images)
        where = spec or f"array{tuple(arr.shape)}"
        super().__init__(where)
        if kind:
            self.kind = kind
        self.layout = infer_layout(arr.shape, where, layout)
        check_dtype(arr.dtype, where, float_range)
        self.array = arr
        self.labels = None if labels is None else np.asarray(_as_numpy(labels)).astype(np.int64).reshape(-1)
        if self.labels is not None and len(self.labels) != len(arr):
            raise GenevalError(f"{where}: {len(self.labels)} labels for {len(arr)} images")
        self.float_range = float_range
        self.quantisation = quantisation_note(arr.dtype, float_range)

    @property
    def n(self) -> int:
        return int(self.array.shape[0])

    def _check_values(self) -> None:
        # In memory or memory-mapped: a chunked scan costs one read and no extra RAM.
        if self.array.dtype != np.uint8:
            scan_values(self.array, self.spec, self.float_range)

    def _batches(self, batch_size: int) -> Iterator[Batch]:
        for i in range(0, self.n, batch_size):
            imgs = to_uint8_nhwc(self.array[i : i + batch_size], self.layout, self.spec, self.float_range, start=i)
            self.report.read += len(imgs)
            yield imgs, None if self.labels is None else self.labels[i : i + batch_size]

    def _content_hash(self) -> str:
        return hash_array(self.array)


class NpySource(ArraySource):
    """A `.npy` image array, memory-mapped so only one batch at a time is in memory."""

    kind = "npy"

    def __init__(self, path: Path, *, layout: str = "auto", float_range: str | None = None) -> None:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except NPY_ERRORS as e:
            raise GenevalError(f"{path}: unreadable or truncated .npy file ({one_line(e)})") from None
        if not isinstance(arr, np.ndarray):
            raise GenevalError(f"{path}: not a plain array")
        super().__init__(arr, spec=str(path), layout=layout, float_range=float_range)
        self.path = path

    def _content_hash(self) -> str:
        return hash_file(self.path).hexdigest()


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return x.detach().cpu().numpy()
    except ImportError:  # torch is a dependency, but arrays must not need it
        pass
    return np.asarray(x)

"""Writing reference files that ADM's evaluator and pytorch-fid can read back.

ADM reference batch (`write_reference`): an uncompressed `.npz` (as np.savez writes) with
  - `arr_0`: uint8 N x H x W x 3 images (optional; grayscale repeated to RGB, alpha dropped,
    since ADM's evaluator feeds them to a 3-channel graph),
  - `mu`, `sigma` (pool3) and `mu_s`, `sigma_s` (spatial): float64, covariance with N - 1,
  - `geneval_pool3`: float32 N x 2048 pool3 features (optional), so KID / precision / recall /
    density / coverage against the reference need no re-extraction (ADM's evaluator ignores it),
  - `geneval_meta`: a JSON string: mode, features, weights sha256, precision, N, source, version.
Statistics-only files (`stats_only=True`) hold `mu`, `sigma` (what pytorch-fid reads) plus
`mu_s`, `sigma_s` and `geneval_meta`; they serve FID and sFID only.

Images are streamed to a temporary raw file next to the output while features are extracted,
then copied into the archive, so memory stays at one batch. Both files go through geneval's one
writer (geneval.runner.output): locked temporary files moved into place with os.replace, so a
failure leaves no partial output, a killed build's leftovers are swept by the next, and a full
disk is one clear error.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from geneval.errors import GenevalError
from geneval.runner.output import atomic_open, disk_guard, locked_temp
from geneval.sources.npz import META_KEY

_COPY_CHUNK = 1 << 22


def to_rgb(images: np.ndarray) -> np.ndarray:
    """uint8 NHWC with C in {1, 3, 4} → NHWC with C = 3 (repeat gray, drop alpha)."""
    c = images.shape[-1]
    if c == 3:
        return images
    if c == 1:
        return np.repeat(images, 3, axis=-1)
    if c == 4:
        return np.ascontiguousarray(images[..., :3])
    raise GenevalError(f"cannot store images with {c} channels")


class ImageSpool:
    """Collects uint8 image batches of one size in a temporary raw file (for `arr_0`).

    The file is locked by this process while it lives (a killed build's spool is swept by the
    next one in the same folder).

    Args:
        folder: where the temporary file goes (the output's folder, so the final copy is local).
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        with disk_guard(f"the image spool in {self.folder}"):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, self.path = locked_temp(self.folder, ".geneval-images.", ".raw")
        self._f = os.fdopen(fd, "wb")
        self.n = 0
        self.shape: tuple[int, ...] | None = None

    def tee(self, batches: Iterable[tuple[np.ndarray, Any]]) -> Iterator[tuple[np.ndarray, Any]]:
        """Pass batches through unchanged while spooling their RGB images to disk."""
        for images, labels in batches:
            self.add(images)
            yield images, labels

    def add(self, images: np.ndarray) -> None:
        rgb = to_rgb(images)
        if self.shape is None:
            self.shape = tuple(rgb.shape[1:])
        elif tuple(rgb.shape[1:]) != self.shape:
            raise GenevalError(
                f"a reference batch with images needs one image size, found {self.shape[:2]} and "
                f"{tuple(rgb.shape[1:3])}: resize the images first or build without images (--no-images)"
            )
        with disk_guard(f"the image spool in {self.folder}"):
            self._f.write(np.ascontiguousarray(rgb).data)
        self.n += len(rgb)

    def finish(self) -> None:
        """Flush the images to the file (kept open, so still locked, until `discard`)."""
        with disk_guard(f"the image spool in {self.folder}"):
            self._f.flush()

    def discard(self) -> None:
        """Remove the file (still holding its lock), then close it."""
        Path(self.path).unlink(missing_ok=True)
        try:
            self._f.close()
        except OSError:  # unflushed images of a failed build: the file is gone already
            pass


def write_reference(
    out: str | os.PathLike,
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
    meta: dict[str, Any],
    *,
    images: ImageSpool | None = None,
    pool3: np.ndarray | None = None,
) -> Path:
    """Write an ADM-format reference batch (or a stats-only file) atomically.

    Args:
        out: destination `.npz`.
        stats: {"pool3": (mu, sigma), "spatial": (mu_s, sigma_s)}; pool3 is required.
        meta: JSON-serialisable provenance, stored as `geneval_meta`.
        images: a closed-or-open spool of the images for `arr_0` (None: no images).
        pool3: per-image pool3 features to store as `geneval_pool3` (None: not stored).
    """
    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise GenevalError(f"reference output must be a .npz file, got {out}")
    if "pool3" not in stats:
        raise GenevalError("a reference file needs pool3 statistics")
    arrays: dict[str, np.ndarray] = {}
    names = {"pool3": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}
    for layer, (mu, sigma) in stats.items():
        mk, sk = names[layer]
        arrays[mk] = np.asarray(mu, dtype=np.float64)
        arrays[sk] = np.asarray(sigma, dtype=np.float64)
    if pool3 is not None:
        arrays["geneval_pool3"] = np.asarray(pool3, dtype=np.float32)
    arrays[META_KEY] = np.asarray(json.dumps(meta, sort_keys=True, default=str))
    try:
        with atomic_open(out, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            if images is not None:
                _write_spooled(zf, images)
            for key, arr in arrays.items():
                with zf.open(f"{key}.npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, arr, allow_pickle=False)
    finally:
        if images is not None:
            images.discard()
    return out


def _write_spooled(zf: zipfile.ZipFile, spool: ImageSpool) -> None:
    spool.finish()
    if spool.shape is None or spool.n == 0:
        raise GenevalError("no images to store in the reference batch")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (spool.n, *spool.shape)}
    with zf.open("arr_0.npy", "w", force_zip64=True) as f:
        np.lib.format.write_array_header_1_0(f, header)
        with open(spool.path, "rb") as raw:
            shutil.copyfileobj(raw, f, _COPY_CHUNK)

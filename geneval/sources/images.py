"""Image files: folders (recursive) and `.zip` archives of png / jpg / jpeg / webp / bmp.

Files are visited in sorted path order and decoded with Pillow on a small thread pool (decoding
releases the GIL). Rejection policy: a file that cannot be decoded (corrupt, truncated, 16-bit
or float pixels, decompression bomb) is rejected with its reason and the stream continues; the
rejections are counted in `report` and shown to the user. It becomes fatal (GenevalError) only
when no image at all could be read. Files whose names are not image extensions are ignored and
counted (`report.ignored`), as are macOS resource forks (`__MACOSX/`, `._*`) inside zips.

Mixed sizes are fine: images are buffered per (H, W, C) and each batch holds one shape (the
extractor resizes everything to 299 anyway). So the feature order follows the file order only
when all images share one shape; no metric here depends on the order except IS's ADM chunks.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from geneval.errors import GenevalError
from geneval.sources.base import Batch, Source, hash_file

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Pillow modes that convert losslessly (or by dropping nothing geneval uses) to L / RGB / RGBA.
_TO_L = {"1", "L", "LA", "La"}
_TO_RGBA = {"RGBA", "RGBa", "PA"}
_REJECT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}


def decode_image(data: bytes) -> np.ndarray:
    """Decode image bytes to uint8 HWC with C in {1, 3, 4}; raise ValueError with a reason."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # full decode here: truncated files fail now, not later
                mode = im.mode
                if mode in _REJECT_MODES:
                    raise ValueError(f"{mode} pixels (16-bit or float) are not supported: save 8-bit images")
                if mode == "L":
                    arr = np.asarray(im)
                elif mode in _TO_L:
                    arr = np.asarray(im.convert("L"))
                elif mode in _TO_RGBA or (mode == "P" and "transparency" in im.info):
                    arr = np.asarray(im.convert("RGBA"))
                elif mode == "RGB":
                    arr = np.asarray(im)
                else:  # P, CMYK, YCbCr, LAB, HSV
                    arr = np.asarray(im.convert("RGB"))
    except ValueError:
        raise
    except (OSError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning,
            EOFError, MemoryError) as e:
        raise ValueError(" ".join(str(e).split()) or type(e).__name__) from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or min(arr.shape[:2]) < 1:
        raise ValueError(f"decoded to an unsupported array {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith("._") and "__MACOSX/" not in name


class _FileImages(Source):
    """Shared streaming for sources made of named image files read as bytes."""

    def __init__(self, spec: str, names: list[str], ignored: int, workers: int | None = None) -> None:
        super().__init__(spec)
        self.names = names
        self._ignored = ignored
        self.workers = workers or min(8, os.cpu_count() or 1)

    @property
    def n(self) -> int:
        return len(self.names)

    def _read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def _batches(self, batch_size: int) -> Iterator[Batch]:
        self.report.ignored = self._ignored
        buffers: dict[tuple[int, ...], list[np.ndarray]] = {}
        # Decode a window of files at a time: bounded memory, parallel decoding.
        window = max(batch_size, 4 * self.workers)
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for start in range(0, len(self.names), window):
                names = self.names[start : start + window]
                for name, result in zip(names, pool.map(self._decode_one, names)):
                    if isinstance(result, str):
                        self.report.reject(name, result)
                        continue
                    self.report.read += 1
                    buf = buffers.setdefault(result.shape, [])
                    buf.append(result)
                    if len(buf) == batch_size:
                        yield np.stack(buf), None
                        buf.clear()
        for buf in buffers.values():
            if buf:
                yield np.stack(buf), None
        if self.report.read == 0:
            first = self.report.rejected[0] if self.report.rejected else ("", "no files")
            raise GenevalError(
                f"{self.spec}: no readable image among {self.n} file(s) "
                f"({self.report.n_rejected} rejected; first: {first[0]}: {first[1]})"
            )

    def _decode_one(self, name: str) -> np.ndarray | str:
        try:
            return decode_image(self._read_bytes(name))
        except ValueError as e:
            return str(e) or "cannot decode"
        except OSError as e:
            return f"cannot read: {e.strerror or e}"


class FolderSource(_FileImages):
    """A folder of image files, searched recursively, in sorted relative-path order."""

    kind = "folder"

    def __init__(self, path: Path, workers: int | None = None) -> None:
        names, ignored = [], 0
        for root, dirs, files in os.walk(path, followlinks=True):
            dirs.sort()
            for fn in files:
                rel = os.path.relpath(os.path.join(root, fn), path).replace(os.sep, "/")
                if is_image_name(rel):
                    names.append(rel)
                elif not fn.startswith("."):
                    ignored += 1
        names.sort()
        super().__init__(str(path), names, ignored, workers)
        self.path = path

    def _read_bytes(self, name: str) -> bytes:
        with open(self.path / name, "rb") as f:
            return f.read()

    def _content_hash(self) -> str:
        # Names and bytes both count: a renamed file reorders the stream.
        h = hashlib.sha256(b"geneval-folder-v1")
        for name in self.names:
            h.update(name.encode() + b"\0")
            h.update(hash_file(self.path / name).digest())
        return h.hexdigest()


class ZipSource(_FileImages):
    """A `.zip` archive of image files (any folder depth), in sorted member-name order."""

    kind = "zip"

    def __init__(self, path: Path, workers: int | None = None) -> None:
        try:
            self._zip = zipfile.ZipFile(path)
            infos = [i for i in self._zip.infolist() if not i.is_dir()]
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise GenevalError(f"{path}: corrupt or truncated zip archive ({' '.join(str(e).split())})") from None
        names = sorted(i.filename for i in infos if is_image_name(i.filename))
        ignored = sum(1 for i in infos if not is_image_name(i.filename))
        super().__init__(str(path), names, ignored, workers)
        self.path = path

    def _read_bytes(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except (zipfile.BadZipFile, EOFError) as e:  # bad CRC or truncated member: reject it
            raise OSError(" ".join(str(e).split())) from None

    def _content_hash(self) -> str:
        return hash_file(self.path).hexdigest()

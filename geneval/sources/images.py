"""Image files: folders (recursive) and `.zip` archives of png / jpg / jpeg / webp / bmp.

Files are visited in sorted path order and decoded with Pillow on a small thread pool (decoding
releases the GIL). Rejection policy: a file that cannot be decoded (corrupt, truncated, 16-bit
or float pixels, decompression bomb) is rejected with its reason and the stream continues; the
rejections are counted in `report` and shown to the user. It becomes fatal (GenevalError) only
when no image at all could be read. Files whose names are not image extensions are ignored and
counted (`report.ignored`), as are macOS resource forks (`__MACOSX/`, `._*`) inside zips.
Files larger than `MAX_FILE_BYTES`, non-regular files (FIFOs, devices) and unreadable sub-folders
are rejected with their reason, never read or waited on.

Folder walks and symlinks: links are followed (a folder of links into a dataset is common), but
a link into a folder already walked (`loop -> .`, `a -> ../a`, two links to one folder) is
skipped, and so is a link to a file already counted (by device + inode), whether that file was
reached directly or through another link. Real entries are walked first, links after, so a
real path wins over a link to it. Skipped links are counted in `report.links_skipped`.
Hard links (no symlink involved) are separate directory entries and each counts.

Mixed sizes are fine: images are buffered per (H, W, C) and each batch holds one shape (the
extractor resizes everything to 299 anyway). So the feature order follows the file order only
when all images share one shape; no metric here depends on the order except IS's ADM chunks.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from geneval.errors import GenevalError
from geneval.sources.base import ZIP_ERRORS, Batch, Source, hash_file, one_line

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Pillow modes that convert losslessly (or by dropping nothing geneval uses) to L / RGB / RGBA.
_TO_L = {"1", "L", "LA", "La"}
_TO_RGBA = {"RGBA", "RGBa", "PA"}
_REJECT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# No image file worth evaluating is this large; bigger ones are rejected unread (memory guard).
MAX_FILE_BYTES = 1 << 30


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
                    raise _Unsupported(f"{mode} pixels (16-bit or float) are not supported: save 8-bit images")
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
    except _Unsupported as e:
        raise ValueError(str(e)) from None
    except Image.UnidentifiedImageError:
        # Pillow's message names the BytesIO object it was given; the caller names the file.
        raise ValueError("not a recognised image format (cannot identify the file)") from None
    except Exception as e:  # noqa: BLE001 - Pillow's decoders raise many types on damaged files
        msg = one_line(str(e))
        plain = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning)
        raise ValueError(msg if isinstance(e, plain) and msg else f"cannot decode ({type(e).__name__}{': ' + msg if msg else ''})") from None
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8 or arr.ndim != 3 or min(arr.shape[:2]) < 1:
        raise ValueError(f"decoded to an unsupported array {arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


class _Unsupported(Exception):
    """A decoded image geneval will not use (not a decoding failure)."""


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return name.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith("._") and "__MACOSX/" not in name


class _FileImages(Source):
    """Shared streaming for sources made of named image files read as bytes.

    Args:
        spec: what to call the source in messages.
        names: the image files, in stream order.
        ignored: files skipped for their names.
        workers: decoding threads.
        rejected: (item, reason) found while listing (unreadable folders), reported on each pass.
        links_skipped: symlinks the listing did not follow (see module docstring).
    """

    def __init__(
        self,
        spec: str,
        names: list[str],
        ignored: int,
        workers: int | None = None,
        *,
        rejected: list[tuple[str, str]] | None = None,
        links_skipped: int = 0,
    ) -> None:
        super().__init__(spec)
        self.names = names
        self._ignored = ignored
        self._listing_rejected = list(rejected or [])
        self.links_skipped = links_skipped
        self.workers = workers or min(8, os.cpu_count() or 1)

    @property
    def n(self) -> int:
        return len(self.names)

    def _read_bytes(self, name: str) -> bytes:
        raise NotImplementedError

    def _batches(self, batch_size: int) -> Iterator[Batch]:
        self.report.ignored = self._ignored
        self.report.links_skipped = self.links_skipped
        for item, why in self._listing_rejected:
            self.report.reject(item, why)
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
            if not self.report.rejected:
                raise GenevalError(f"{self.spec}: no images found")
            first = self.report.rejected[0]
            raise GenevalError(
                f"{self.spec}: no readable image among {self.n} file(s) ({self.report.n_rejected} rejected; first: {first[0]}: {first[1]})"
            )

    def _decode_one(self, name: str) -> np.ndarray | str:
        try:
            return decode_image(self._read_bytes(name))
        except ValueError as e:
            return str(e) or "cannot decode"
        except OSError as e:
            return f"cannot read: {e.strerror or e}"


def walk_folder(root: Path) -> tuple[list[str], int, int, list[tuple[str, str]]]:
    """List a folder's image files recursively, following symlinks without loops or double counts.

    Returns (sorted relative image paths, non-image files ignored, symlinks skipped,
    [(item, reason)] for sub-folders that could not be listed and non-regular files).
    See the module docstring for the symlink rules.

    Args:
        root: the folder.
    """
    try:
        st = os.stat(root)
    except OSError as e:
        raise GenevalError(f"cannot read folder {root}: {e.strerror or e}") from None
    walk = _Walk()
    walk.visited.add((st.st_dev, st.st_ino))
    walk.tree(os.fspath(root), "")
    # Links last, in the order found (sorted within each folder): a real path wins over a link to it.
    i = 0
    while i < len(walk.links):
        walk.link(*walk.links[i])
        i += 1
    walk.names.sort()
    return walk.names, walk.ignored, walk.skipped, walk.problems


class _Walk:
    """State of one folder walk: what was found, and which folders / files were already counted."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ignored = 0
        self.skipped = 0
        self.problems: list[tuple[str, str]] = []
        self.visited: set[tuple[int, int]] = set()  # folders walked, by (device, inode)
        self.counted: set[tuple[int, int]] = set()  # image files counted, by (device, inode)
        self.files: list[str] = []  # full paths of the image files counted, in `counted` up to _stated
        self._stated = 0
        self.links: list[tuple[str, str]] = []  # (relative path, full path), followed after the tree

    def file(self, rel: str, full: str) -> None:
        if is_image_name(rel):
            self.names.append(rel)
            self.files.append(full)
        elif not rel.rsplit("/", 1)[-1].startswith("."):
            self.ignored += 1

    def counted_files(self) -> set[tuple[int, int]]:
        # Filled when a link to a file needs it: one stat per image, only in folders with file
        # links. st_ino from stat, not readdir's d_ino, which overlay filesystems may not match.
        for full in self.files[self._stated :]:
            try:
                st = os.stat(full)
            except OSError:
                continue
            self.counted.add((st.st_dev, st.st_ino))
        self._stated = len(self.files)
        return self.counted

    def tree(self, full: str, rel: str) -> None:
        """Walk real entries below `full`; symlinks are queued, not followed."""
        stack = [(full, rel)]
        while stack:
            d, r = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as e:
                self.problems.append((r or ".", f"cannot list folder: {e.strerror or e}"))
                continue
            subdirs = []
            for e in entries:
                er = f"{r}/{e.name}" if r else e.name
                try:
                    if e.is_symlink():
                        self.links.append((er, e.path))
                    elif e.is_dir(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        key = (st.st_dev, st.st_ino)
                        if key in self.visited:  # a bind mount of a folder already walked
                            self.skipped += 1
                        else:
                            self.visited.add(key)
                            subdirs.append((e.path, er))
                    elif e.is_file(follow_symlinks=False):
                        self.file(er, e.path)
                    elif is_image_name(er):
                        self.problems.append((er, "not a regular file (FIFO, socket or device): not read"))
                except OSError as exc:
                    self.problems.append((er, f"cannot stat: {exc.strerror or exc}"))
            stack.extend(reversed(subdirs))  # popped in sorted order

    def link(self, rel: str, full: str) -> None:
        """Follow one symlink unless its target folder was walked or its target file counted."""
        try:
            target = os.stat(full)
        except OSError:  # dangling, or a cycle of links: an image name stays so its reason is shown
            if is_image_name(rel):
                self.names.append(rel)
            return
        key = (target.st_dev, target.st_ino)
        if stat.S_ISDIR(target.st_mode):
            if key in self.visited:
                self.skipped += 1
            else:
                self.visited.add(key)
                self.tree(full, rel)
        elif stat.S_ISREG(target.st_mode):
            if key in self.counted_files():
                self.skipped += 1
            else:
                self.file(rel, full)
        elif is_image_name(rel):
            self.problems.append((rel, "links to something that is not a regular file: not read"))


class FolderSource(_FileImages):
    """A folder of image files, searched recursively, in sorted relative-path order."""

    kind = "folder"

    def __init__(self, path: Path, workers: int | None = None) -> None:
        names, ignored, skipped, problems = walk_folder(path)
        super().__init__(str(path), names, ignored, workers, rejected=problems, links_skipped=skipped)
        self.path = path

    def _read_bytes(self, name: str) -> bytes:
        with open(self.path / name, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES >> 20} MiB: not read as an image")
        return data

    def _content_hash(self) -> str:
        # Names and bytes both count: a renamed file reorders the stream.
        h = hashlib.sha256(b"geneval-folder-v1")
        for name in self.names:
            # Linux file names are bytes; undecodable ones come back as surrogate escapes.
            h.update(name.encode("utf-8", "surrogateescape") + b"\0")
            try:
                h.update(hash_file(self.path / name).digest())
            except GenevalError:  # unreadable (dangling link, permissions): streaming rejects it too
                h.update(b"\0unreadable\0")
        return h.hexdigest()

    def describe(self) -> str:
        text = super().describe()
        return f"{text[:-1]}, {self.links_skipped} symlinks skipped)" if self.links_skipped else text


class ZipSource(_FileImages):
    """A `.zip` archive of image files (any folder depth), in sorted member-name order."""

    kind = "zip"

    def __init__(self, path: Path, workers: int | None = None) -> None:
        try:
            self._zip = zipfile.ZipFile(path)
            # Not ZipInfo.is_dir(): it raises IndexError on an empty member name (damaged archive).
            infos = [i for i in self._zip.infolist() if i.filename and not i.filename.endswith("/")]
        except ZIP_ERRORS as e:
            raise GenevalError(f"{path}: corrupt or truncated zip archive ({one_line(e)})") from None
        # A name stored twice: the last entry is what unzip extracts, so that one is read.
        self._infos = {i.filename: i for i in infos}
        names = sorted(n for n in self._infos if is_image_name(n))
        ignored = sum(1 for n in self._infos if not is_image_name(n))
        counts = Counter(i.filename for i in infos)
        dups = sorted(n for n, c in counts.items() if c > 1 and is_image_name(n))
        rejected = [(n, "stored more than once in the zip: only the last copy is read") for n in dups]
        super().__init__(str(path), names, ignored, workers, rejected=rejected)
        self.path = path

    def _read_bytes(self, name: str) -> bytes:
        info = self._infos[name]
        if info.file_size > MAX_FILE_BYTES:
            raise ValueError(f"larger than {MAX_FILE_BYTES >> 20} MiB uncompressed: not read as an image")
        try:
            with self._zip.open(info) as f:
                return f.read()
        except ZIP_ERRORS as e:  # bad CRC, truncated, encrypted or unsupported member: reject it
            raise ValueError(f"damaged zip member ({one_line(e)})") from None

    def _content_hash(self) -> str:
        return hash_file(self.path).hexdigest()

"""A feature cache: per-image features of a source, keyed by everything that shaped them.

The key is the sha256 of (content hash of the images, extractor name, weights sha256,
preprocessing mode, precision, geneval version) — never a user-chosen name — so a changed file,
network, resize or release can never be served stale numbers. Entries live in
`cache_dir()/features/<key>.npz`: the feature arrays (float32, one per layer) plus a JSON
metadata string (the key's parts, the read report). Writes are atomic (temp file in the same
folder + os.replace): a crash leaves the old entry or none. An unreadable entry is a miss and is
overwritten. `enabled=False` (CLI `--no-cache`) neither reads nor writes.

Size: 50k images x (2048 + 2023) float32 is about 0.8 GB; delete the folder to reclaim it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

log = logging.getLogger(__name__)

META_KEY = "__meta__"
KEY_VERSION = 1  # bump when the entry layout changes


@dataclass(frozen=True)
class CacheKey:
    """What shaped a set of features; `digest` is the entry's file name."""

    content_sha256: str
    extractor: str
    weights_sha256: str
    mode: str
    precision: str
    geneval_version: str

    @property
    def digest(self) -> str:
        parts = {"v": KEY_VERSION, **self.__dict__}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def make_key(content_sha256: str, extractor: str, weights_sha256: str, mode: str, precision: str,
             geneval_version: str | None = None) -> CacheKey:
    """Build a cache key; the geneval version defaults to the running one.

    Args:
        content_sha256: the source's content hash (file bytes / array bytes).
        extractor: the feature network's name (e.g. extractor.info["features"]).
        weights_sha256: sha256 of the weight file behind the network.
        mode: preprocessing mode (tf, pytorch, clean).
        precision: numeric precision (exact, tf32, fast).
        geneval_version: defaults to geneval.__version__.
    """
    if geneval_version is None:
        from geneval import __version__ as geneval_version
    return CacheKey(content_sha256, extractor, weights_sha256, mode, precision, geneval_version)


class FeatureCache:
    """Read and write feature entries under `root` (default `cache_dir()/features`).

    Args:
        root: folder for entries; default geneval's cache dir + "/features".
        enabled: False disables both reads and writes.
    """

    def __init__(self, root: str | os.PathLike | None = None, enabled: bool = True) -> None:
        if root is None:
            from geneval.weights import cache_dir

            root = cache_dir() / "features"
        self.root = Path(root)
        self.enabled = enabled

    def path(self, key: CacheKey) -> Path:
        return self.root / f"{key.digest}.npz"

    def load(self, key: CacheKey, needed: Iterable[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """The entry's arrays and metadata if it exists and holds every `needed` array; else None.

        Args:
            key: the entry's key.
            needed: array names the caller requires (e.g. "pool3", "spatial").
        """
        if not self.enabled:
            return None
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z[META_KEY])) if META_KEY in z.files else {}
                if meta.get("key") != key.__dict__:  # a digest collision or a hand-copied file
                    return None
                if not set(needed) <= set(z.files):
                    return None
                arrays = {k: z[k] for k in z.files if k != META_KEY}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            log.warning("ignoring unreadable cache entry %s: %s", path, e)
            return None
        return arrays, meta

    def save(self, key: CacheKey, arrays: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> Path | None:
        """Write an entry atomically; returns its path (None when disabled).

        Args:
            key: the entry's key.
            arrays: name → array (features are stored as given; pass float32).
            meta: JSON-serialisable extras (e.g. the read report); the key is added.
        """
        if not self.enabled:
            return None
        if META_KEY in arrays:
            raise ValueError(f"{META_KEY} is reserved")
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        payload = {**(meta or {}), "key": key.__dict__}
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npz.tmp", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays, **{META_KEY: np.asarray(json.dumps(payload, default=str))})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

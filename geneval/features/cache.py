"""The feature-cache key: everything that shaped a source's features, never a user-chosen name.

The key is the sha256 of (content hash of the images, extractor name, weights sha256,
preprocessing mode, precision, geneval version), so a changed file, network, resize or release
can never be served stale numbers. The entries themselves are shard stores of the execution
core (geneval.runner.shards under `cache_dir()/features/<digest>/`): finished shards are
written atomically, an interrupted extraction resumes by shard, and a store with
`complete.json` serves later runs. `--no-cache` uses a private store removed afterwards.

Size: 50k images x (2048 + 2023) float32 is about 0.8 GB; delete the folder to reclaim it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

KEY_VERSION = 2  # bump when the entry layout changes (2: shard stores)


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


def make_key(content_sha256: str, extractor: str, weights_sha256: str, mode: str, precision: str, geneval_version: str | None = None) -> CacheKey:
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

"""`geneval ref build`: turn an image set into an ADM-format reference batch (or a stats file).

The output is what ADM's evaluator reads (`arr_0`, `mu`, `sigma`, `mu_s`, `sigma_s`, float64
statistics with the N − 1 covariance) plus geneval's extras: `geneval_pool3` (float32 pool3
features, so KID / precision / recall / density / coverage need no re-extraction; on by
default, `with_features=False` drops it) and `geneval_meta` (mode, network, weights hash,
precision, N, source and its hash, version). `stats_only=True` writes the pytorch-fid layout
(`mu`, `sigma`, plus `mu_s`, `sigma_s` and the metadata): FID/sFID only, a few tens of MB.
See geneval/sources/reference.py for the file layout; the write is atomic.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from geneval.errors import GenevalError
from geneval.evaluation import (
    ExtractConfig,
    Extractors,
    effective_precision,
    stream_source,
)
from geneval.preflight import check_cache, check_device
from geneval.results import utc_now
from geneval.runner import distributed
from geneval.runner.execute import Needs
from geneval.sources import open_source
from geneval.sources.reference import ImageSpool, write_reference

log = logging.getLogger(__name__)

FORMAT = "geneval-ref-v1"


def build_reference(
    source: Any,
    out: str | os.PathLike,
    *,
    mode: str = "tf",
    device: str | None = None,
    precision: str = "exact",
    batch_size: int = 64,
    weights: str | None = None,
    with_images: bool = True,
    with_features: bool = True,
    stats_only: bool = False,
    cache: bool = True,
    progress: str | bool = "auto",
    shard_size: int = 1000,
) -> dict[str, Any]:
    """Extract pool3 + spatial features of `source` and write a reference `.npz`; returns its metadata.

    Args:
        source: anything `open_source` accepts that holds images.
        out: destination `.npz` (replaced atomically).
        mode: preprocessing (tf | pytorch | clean), recorded in the file.
        device: torch device (None: CUDA if available).
        precision: exact | tf32 | fast.
        batch_size: images per batch.
        weights: explicit TF-Inception weight file.
        with_images: store the images as `arr_0` (uint8 RGB; needs one image size).
        with_features: store per-image pool3 features as `geneval_pool3`.
        stats_only: write only statistics (pytorch-fid layout); overrides the two above.
        cache: use the feature cache.
        progress: auto | always | never (geneval.progress); True/False mean auto/never.
        shard_size: images per resumable shard.
    """
    from geneval import __version__, vocab
    from geneval.features.inception import FEATURES_NAME
    from geneval.weights import resolve_inception

    started = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise GenevalError(f"reference output must end in .npz, got {out}")
    vocab.check("mode", mode)
    vocab.check("precision", precision)
    check_device(device)
    if stats_only:
        with_images = with_features = False
    src = open_source(source)
    src_path = getattr(src, "path", None)
    if src_path is not None and out.exists() and out.resolve() == Path(src_path).resolve():
        raise GenevalError(f"--out {out} is the source itself: write the reference to another file")
    if not src.has_images:
        raise GenevalError(f"{src.spec} holds statistics only: a reference is built from images")
    src.check_nonempty()
    if src.n is not None and src.n < 2:
        raise GenevalError(f"a reference needs at least 2 images for a covariance, got N={src.n}")
    check_cache("features" if cache else "scratch")
    resolved = resolve_inception(weights)
    dist = distributed.current()
    config = ExtractConfig(mode, device, precision, batch_size, weights, cache, progress, shard_size)
    extractors = Extractors(config, resolved, need_logits=False)
    needs = Needs(stats=frozenset({"pool3", "spatial"}), rows=frozenset({"pool3"}) if with_features else frozenset())
    streamed, report, _ = stream_source(src, needs, config, resolved, extractors, "reference")
    n = streamed.n
    if n < 2:
        raise GenevalError(f"a reference needs at least 2 readable images, got {n}")
    if not dist.is_main:  # rank 0 writes the file
        distributed.barrier(dist)
        return {"n": n, "mode": mode, "weights_sha256": resolved.sha256, "path": str(out), "rank": dist.rank}
    if n < 2048:
        log.warning("reference with N=%d < 2048: FIDs against it are biased; compare only at equal N", n)
    meta = {
        "format": FORMAT,
        "mode": mode,
        "features": FEATURES_NAME,
        "weights_sha256": resolved.sha256,
        "precision": effective_precision(config),
        "n": n,
        "source": src.describe(),
        "source_sha256": src.content_hash(),
        "read": report.read,
        "rejected": report.n_rejected,
        "quantisation": src.quantisation,
        "has_images": with_images,
        "has_pool3": with_features,
        "geneval_version": __version__,
        "created_at": utc_now(),
        "world_size": dist.world,
    }
    spool = ImageSpool(out.parent if str(out.parent) else Path(".")) if with_images else None
    try:
        if spool is not None:  # a second, decode-only pass: the images go straight to disk
            for _ in spool.tee(src.batches(batch_size)):
                pass
        write_reference(out, {k: (s.mu, s.sigma) for k, s in streamed.stats.items()}, meta, images=spool, pool3=streamed.rows.get("pool3"))
    finally:
        if spool is not None:
            spool.discard()
        distributed.barrier(dist)
    meta["wall_s"] = round(time.perf_counter() - started, 3)
    meta["path"] = str(out)
    return meta

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
from geneval.evaluation import ExtractConfig, _Extractors, effective_precision
from geneval.features.cache import FeatureCache, PartialEntry, extract_resumable, make_key
from geneval.metrics.stats import GaussianStats
from geneval.results import utc_now
from geneval.sources import open_source
from geneval.sources.base import ReadReport
from geneval.sources.reference import ImageSpool, write_reference

log = logging.getLogger(__name__)

FORMAT = "geneval-ref-v1"


def build_reference(source: Any, out: str | os.PathLike, *, mode: str = "tf", device: str | None = None,
                    precision: str = "exact", batch_size: int = 64, weights: str | None = None,
                    with_images: bool = True, with_features: bool = True, stats_only: bool = False,
                    cache: bool = True, progress: bool = True) -> dict[str, Any]:
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
        progress: progress bar on stderr.
    """
    from geneval import __version__
    from geneval.features.extract import PRECISIONS
    from geneval.features.inception import FEATURES_NAME
    from geneval.features.resize import MODES
    from geneval.weights import resolve_inception

    started = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".npz":
        raise GenevalError(f"reference output must end in .npz, got {out}")
    if mode not in MODES:
        raise GenevalError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
    if precision not in PRECISIONS:
        raise GenevalError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if stats_only:
        with_images = with_features = False
    src = open_source(source)
    if not src.has_images:
        raise GenevalError(f"{src.spec} holds statistics only: a reference is built from images")
    src.check_nonempty()
    if src.n is not None and src.n < 2:
        raise GenevalError(f"a reference needs at least 2 images for a covariance, got N={src.n}")
    resolved = resolve_inception(weights)
    config = ExtractConfig(mode, device, precision, batch_size, weights, cache, progress)
    extractors = _Extractors(config, resolved, need_logits=False)
    feature_cache = FeatureCache(enabled=cache)
    key = make_key(src.content_hash(), FEATURES_NAME, resolved.sha256, mode, effective_precision(config))
    hit = feature_cache.load(key, ("pool3", "spatial"))
    spool = ImageSpool(out.parent if str(out.parent) else Path(".")) if with_images else None
    try:
        batches = src.batches(batch_size)
        if spool is not None:
            batches = spool.tee(batches)
        if hit is not None:
            arrays, meta = hit
            report = ReadReport.from_dict(meta.get("report", {}))
            if spool is not None:
                for _ in batches:  # only the images are needed; features come from the cache
                    pass
        else:
            partial = PartialEntry(feature_cache, key)  # an interrupted build resumes from its checkpoints
            arrays = extract_resumable(extractors.get(), (im for im, _ in batches), partial,
                                       needed=("pool3", "spatial"), progress=progress, total=src.n)
            report = src.report
            try:
                feature_cache.save(key, arrays, {"report": report.to_dict(), "source": src.describe()})
                partial.clear()
            except OSError as e:
                log.warning("could not write the feature cache: %s", e)
        log.info("reference: %s", report.summary())
        n = int(arrays["pool3"].shape[0])
        if n < 2:
            raise GenevalError(f"a reference needs at least 2 readable images, got {n}")
        if n < 2048:
            log.warning("reference with N=%d < 2048: FIDs against it are biased; compare only at equal N", n)
        stats = {layer: GaussianStats.from_features(arrays[layer]) for layer in ("pool3", "spatial")}
        meta = {
            "format": FORMAT, "mode": mode, "features": FEATURES_NAME, "weights_sha256": resolved.sha256,
            "precision": effective_precision(config), "n": n, "source": src.describe(),
            "source_sha256": src.content_hash(), "read": report.read, "rejected": report.n_rejected,
            "quantisation": src.quantisation, "has_images": with_images, "has_pool3": with_features,
            "geneval_version": __version__, "created_at": utc_now(),
        }
        write_reference(out, {k: (s.mu, s.sigma) for k, s in stats.items()}, meta, images=spool,
                        pool3=arrays["pool3"] if with_features else None)
    finally:
        if spool is not None:
            spool.discard()
    meta["wall_s"] = round(time.perf_counter() - started, 3)
    meta["path"] = str(out)
    return meta

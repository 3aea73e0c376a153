"""Preflight: everything that can fail cheaply fails here, before any image is decoded.

Metric names, weight files (IS needs the logits layer), sources that exist and are non-empty,
a reference that can serve the metrics (a stats-only file serves FID/sFID only), stored
statistics whose provenance fits the run, N >= 2 (k + 1 for the k-NN metrics), a KID subset
that fits N, and the N < 2048 bias warnings. Used by `geneval.evaluation` and `geneval.pipeline`.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from geneval import vocab
from geneval.errors import GenevalError
from geneval.metrics.compute import MetricOptions, check_computable
from geneval.metrics.kid import resolve_subset_size
from geneval.metrics.registry import expand_metrics, get_metric
from geneval.progress import progress_mode
from geneval.sources import Source, open_source

BIAS_DIMS = {"fid": 2048, "sfid": 2023}


@dataclass(frozen=True)
class ExtractConfig:
    """How features are made; every field is recorded with the results.

    Args:
        mode: preprocessing (tf | pytorch | clean).
        device: torch device for the network (None: CUDA if available, else CPU).
        precision: exact | tf32 | fast.
        batch_size: images per forward pass and per source batch.
        weights: explicit TF-Inception weight file (None: geneval.weights' lookup chain).
        cache: read and write the feature cache.
        progress: auto | always | never (geneval.progress); True/False mean auto/never.
        shard_size: images per resumable shard (cache entries and interrupted runs resume by shard).
    """

    mode: str = "tf"
    device: str | None = None
    precision: str = "exact"
    batch_size: int = 64
    weights: str | None = None
    cache: bool = True
    progress: str | bool = "auto"
    shard_size: int = 1000

    def __post_init__(self) -> None:
        object.__setattr__(self, "progress", progress_mode(self.progress))


@dataclass(frozen=True)
class Plan:
    """What preflight resolved: metric names, opened sources, weights, per-side needs."""

    metrics: tuple[str, ...]
    samples: Source
    ref: Source | None
    weights: Any  # geneval.weights.ResolvedWeights
    sample_needs: tuple[frozenset[str], frozenset[str]]  # (stats layers, feature layers)
    ref_needs: tuple[frozenset[str], frozenset[str]]
    warnings: dict[str, str]  # metric → N < dims bias warning
    networks: tuple = ()  # feature networks besides TF-Inception (geneval.features.networks)


def metric_needs(metrics: Iterable[str], side: str, ci: bool = False) -> tuple[frozenset[str], frozenset[str]]:
    """(layers needed as statistics only, layers needed as per-image features) for one side.

    Args:
        metrics: expanded metric names.
        side: "samples" or "reference" (the reference serves only metrics with needs_ref).
        ci: bootstrap intervals are asked for: the samples' pool3 rows are needed (they are resampled).
    """
    stats, feats = set(), set()
    for name in metrics:
        spec = get_metric(name)
        if side == "reference" and not spec.needs_ref:
            continue
        for layer in spec.needs:
            (stats if spec.stats_suffice else feats).add(layer)
    if ci and side == "samples" and "pool3" in stats | feats:
        feats.add("pool3")
    return frozenset(stats - feats), frozenset(feats)


def check_sizes(metrics: Iterable[str], n_samples: int | None, n_ref: int | None, options: MetricOptions) -> dict[str, str]:
    """Raise on sizes no metric can use (N = 1, KID subset > N, N ≤ k); return bias warnings.

    Args:
        metrics: expanded metric names.
        n_samples: number of sample images (None if unknown).
        n_ref: number of reference images (None if unknown, e.g. a stats-only file).
        options: metric knobs (k's, KID subset size).
    """
    metrics = list(metrics)
    for name, low in {m: get_metric(m).smallest_n(options) for m in metrics}.items():
        for which, n in (("samples", n_samples), ("reference", n_ref if get_metric(name).needs_ref else None)):
            if n is not None and n < low:
                raise GenevalError(f"{name} needs at least {low} {which.rstrip('s')} images, got N={n}")
    if "kid" in metrics and n_samples is not None and n_ref is not None:
        resolve_subset_size(n_samples, n_ref, options.kid_subset_size)
    found = {}
    for name in metrics:
        dims = BIAS_DIMS.get(name)
        small = [f"{w} N={n}" for w, n in (("samples", n_samples), ("reference", n_ref)) if n is not None and dims and n < dims]
        if small:
            found[name] = (
                f"{name} with {', '.join(small)} < {dims} feature dims is biased (it falls with N): compare only at equal N (papers use 50k)"
            )
    return found


def check_cache(sub: str) -> None:
    """Prove the cache folder writable before any work (GENEVAL_CACHE moves it). Shards go into a
    subfolder: `features/` for cached extraction, `scratch/` for a job's private shards without a
    cache, `runs/` for `geneval run`."""
    from geneval.runner.output import check_writable
    from geneval.weights import cache_dir

    check_writable(cache_dir() / sub, "cache folder (GENEVAL_CACHE)")


def preflight(
    samples: Any, ref: Any, metrics: str | Iterable[str], config: ExtractConfig, options: MetricOptions, features: str | None = None
) -> Plan:
    """Validate everything before any work; raise GenevalError with a one-line reason.

    Args:
        samples: anything `open_source` accepts.
        ref: anything `open_source` accepts, or None.
        metrics: metric / group names ("fid,pr").
        config: extraction settings.
        options: metric knobs.
        features: feature networks besides TF-Inception ("dinov2,clip").
    """
    from geneval.weights import resolve_inception

    names = tuple(expand_metrics(metrics))
    check_computable(names, "eval")
    vocab.check("mode", config.mode)
    vocab.check("precision", config.precision)
    check_device(config.device)
    if config.shard_size < 1:
        raise GenevalError(f"shard size must be >= 1, got {config.shard_size}")
    if config.batch_size < 1:
        raise GenevalError(f"batch size must be >= 1, got {config.batch_size}")
    vocab.check("is_convention", options.is_convention)
    if options.kid_subsets < 1:
        raise GenevalError(f"KID needs at least 1 subset, got {options.kid_subsets}")
    for seed in {options.kid_seed, options.is_seed, options.ci_seed}:
        check_seed(seed)
    needs_ref = [n for n in names if get_metric(n).needs_ref]
    need_logits = any("logits" in get_metric(n).needs for n in names)
    check_cache("features" if config.cache else "scratch")
    weights = resolve_inception(config.weights, need_logits=need_logits)  # MissingWeightsError names the file
    from geneval.runner.features import check_networks, networks_for

    networks = networks_for(names, features)
    check_networks(networks)  # DINOv2 / CLIP: library and weight file named before any work

    sample_src = open_source(samples)
    sample_src.check_nonempty()
    ref_src = None
    if ref is not None:
        ref_src = open_source(ref)
        ref_src.check_nonempty()
    elif needs_ref:
        raise GenevalError(f"{', '.join(needs_ref)} compare(s) against a reference: pass --ref (images, ADM batch or stats .npz)")
    s_needs = metric_needs(names, "samples", ci=options.ci is not None)
    r_needs = metric_needs(names, "reference") if ref_src is not None else (frozenset(), frozenset())
    check_servable(sample_src, names, "samples", s_needs)
    if ref_src is not None:
        check_servable(ref_src, needs_ref, "reference", r_needs)
    for src in (sample_src, ref_src):
        if src is not None:
            precomputed_usable(src, config.mode, weights, strict=not src.has_images)
    n_ref = ref_src.n if ref_src is not None else None
    found = check_sizes(names, sample_src.n, n_ref, options)
    return Plan(names, sample_src, ref_src, weights, s_needs, r_needs, found, tuple(networks))


DEVICE_TYPES = ("cpu", "cuda", "mps", "xpu")
SEED_MAX = 2**32 - 1  # numpy's RandomState (KID subsets, the torch-fidelity IS shuffle) takes no more


def check_device(device: str | None) -> None:
    """A --device torch cannot parse, or an accelerator that is not there, fails now with one line.

    Args:
        device: the requested device ("cpu", "cuda", "cuda:1", "mps"); None: the default, always usable.
    """
    if device is None:
        return
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in DEVICE_TYPES:
        raise GenevalError(f"unknown device {device!r}: use cpu, cuda, cuda:N or mps")
    if dev.type == "cpu":
        return
    if dev.type == "mps":
        available, count = torch.backends.mps.is_available(), 1
    else:
        backend = getattr(torch, dev.type, None)  # torch.cuda, torch.xpu
        available = backend is not None and backend.is_available()
        count = backend.device_count() if available else 0
    name = dev.type.upper()
    if not available:
        raise GenevalError(f"--device {device} requested but {name} is not available")
    if dev.index is not None and dev.index >= count:
        raise GenevalError(f"--device {device}: only {count} {name} device(s) here ({dev.type}:0 to {dev.type}:{count - 1})")


def check_seed(seed: int, what: str = "seed") -> None:
    """Seeds feed numpy's RandomState and SeedSequence: integers in [0, 2**32 - 1]."""
    try:
        value = operator.index(seed)
    except TypeError:
        value = None
    if isinstance(seed, bool) or value is None or not 0 <= value <= SEED_MAX:
        raise GenevalError(f"{what} must lie in [0, 2**32 - 1], got {seed!r}")


def check_servable(src: Source, metrics: Iterable[str], which: str, needs) -> None:
    """A statistics-only source serves only metrics whose needs are statistics it holds."""
    if src.has_images:
        return
    stats_layers, feature_layers = needs
    feature_layers = set(feature_layers) - set(src.features)  # stored per-image features (geneval_pool3) serve these
    bad = sorted({m for m in metrics if set(get_metric(m).needs) & feature_layers})
    missing = sorted(layer for layer in stats_layers if layer not in src.stats)
    if bad:
        raise GenevalError(f"{which} {src.spec} holds statistics only (no images): it can serve fid/sfid, not {', '.join(bad)}")
    if missing:
        keys = {"pool3": "mu/sigma", "spatial": "mu_s/sigma_s"}
        raise GenevalError(f"{which} {src.spec} lacks {', '.join(keys.get(m, m) for m in missing)} statistics and has no images to compute them")


def precomputed_usable(src: Source, mode: str, weights: Any, strict: bool) -> tuple[bool, list[str]]:
    """Whether a file's stored statistics/features fit this run; (usable, notes to record).

    Args:
        src: the opened source.
        mode: the run's preprocessing mode.
        weights: the run's resolved weights.
        strict: raise instead of returning False (no images to fall back on).
    """
    from geneval.features.inception import FEATURES_NAME

    if not (src.stats or src.features):
        return False, []
    meta = src.meta
    reason, notes = None, []
    if meta.get("mode"):
        if meta["mode"] != mode:
            reason = f"its statistics were computed in mode {meta['mode']!r}, this run uses {mode!r}"
        elif meta.get("features", FEATURES_NAME) != FEATURES_NAME:
            reason = f"its statistics come from network {meta['features']!r}, not {FEATURES_NAME!r}"
        elif meta.get("weights_sha256") and meta["weights_sha256"] != weights.sha256:
            notes.append(
                f"{src.spec}: statistics made from weight file sha256 {meta['weights_sha256'][:12]}…, "
                f"this run uses {weights.sha256[:12]}… (same network; features agree to ~1e-5)"
            )
    elif src.has_images:  # a foreign ADM reference batch: ADM computes it with the TF graph
        if mode != "tf":
            reason = f"ADM reference statistics come from the TF pipeline (mode tf), this run uses {mode!r}"
    else:
        notes.append(
            f"{src.spec}: statistics file without provenance (pytorch-fid format); assuming it was computed with mode {mode!r} and TF-Inception"
        )
    if reason is None:
        return True, notes
    if strict:
        raise GenevalError(f"{src.spec} cannot be used: {reason}; rebuild it with `geneval ref build` or pass --mode {meta.get('mode', 'tf')}")
    return False, [f"{src.spec}: stored statistics not used ({reason}); features re-extracted from its images"]

"""`geneval.evaluate`: images (or statistics) in, provenance-carrying metric rows out.

The work is split in three reusable steps so the sampling pipeline can feed features it
extracted itself (sampler batches → extractor in one stream) without re-reading images:

1. `preflight(...)` (geneval/preflight.py, re-exported here) — everything that can fail
   cheaply fails before any extraction: metric names, weight files (IS needs logits), sources
   exist and are non-empty, the reference can serve the metrics (a stats-only file serves
   FID/sFID only), N ≥ 2, the KID subset fits N, and the N < 2048 bias warning.
2. `features_for_source(...)` / `prepare_reference(...)` — one side's features: statistics or
   pool3 features stored in the file when their provenance matches (mode, network), else the
   feature cache, else streaming extraction (then cached).
3. `score(...)` — metric math on two `SideFeatures`, returning a `ResultSet` whose rows carry N,
   seed, mode, network, weights hash, reference hash, wall time and the metric's knobs.

Stored statistics policy: a file geneval wrote carries `geneval_meta` (mode, network, weights
hash); its statistics are used when the mode and network match (another weight file of the
same network is used with a recorded warning), else re-extracted from its images, else an
error. A foreign ADM reference batch is taken to be TF-pipeline statistics (mode tf); a foreign
stats file (pytorch-fid) carries no provenance and is used with a recorded warning.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.features.cache import make_key
from geneval.metrics.compute import FeatureSet, MetricOptions, compute_metrics
from geneval.metrics.registry import expand_metrics, get_metric
from geneval.metrics.stats import GaussianStats

# Re-exported: the pipeline and older callers import the preflight names from here.
from geneval.preflight import (  # noqa: F401
    BIAS_DIMS,
    ExtractConfig,
    Plan,
    check_servable,
    check_sizes,
    metric_needs,
    precomputed_usable,
    preflight,
)
from geneval.results import ResultRow, ResultSet, new_run_id
from geneval.runner.execute import Needs, Streamed
from geneval.sources import Source, open_source
from geneval.sources.base import ReadReport

log = logging.getLogger(__name__)

# extra_provenance keys that are ResultRow fields rather than extras.
_ROW_FIELDS = ("model", "sampler", "steps", "guidance", "convention")


@dataclass
class SideFeatures:
    """One side (samples or reference): its FeatureSet plus where every part came from.

    Args:
        features: what the metrics consume.
        describe: one line naming the source.
        content_sha256: hash of the source's content (None for features made elsewhere).
        report: counts read / rejected / ignored (None when only stored statistics were used).
        origin: layer → "extracted" | "cache" | "file statistics" | "file features" | "given".
        notes: warnings to record in every row (provenance doubts, bias, ...).
    """

    features: FeatureSet
    describe: str
    content_sha256: str | None = None
    report: ReadReport | None = None
    origin: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def n(self) -> int | None:
        return self.features.n

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], describe: str = "features", content_sha256: str | None = None, report: ReadReport | None = None
    ) -> SideFeatures:
        """Wrap features extracted elsewhere (e.g. the sampling pipeline's stream).

        Args:
            arrays: layer → (N, d) features, as FeatureExtractor.extract_all returns.
            describe: one line naming where they came from.
            content_sha256: optional hash identifying the images.
            report: optional read report.
        """
        fs = FeatureSet(pool3=arrays.get("pool3"), spatial=arrays.get("spatial"), logits=arrays.get("logits"))
        return cls(fs, describe, content_sha256, report, {k: "given" for k in arrays})


class Extractors:
    """Builds the FeatureExtractor on first use (a run served fully by caches needs none)."""

    def __init__(self, config: ExtractConfig, weights: Any, need_logits: bool, networks: Any = ()) -> None:
        self.config, self.weights, self.need_logits = config, weights, need_logits
        self.networks = list(networks)
        self._extractor = None
        # What shapes the features beyond Inception, known before anything is built (cache keys).
        self.info = {"networks": [n.describe() for n in self.networks]} if self.networks else {}

    def get(self):
        if self._extractor is None:
            from geneval.features.extract import FeatureExtractor

            c = self.config
            self._extractor = FeatureExtractor(
                mode=c.mode, device=c.device, precision=c.precision, weights=self.weights, need_logits=self.need_logits, batch_size=c.batch_size
            )
            if self.networks:
                from geneval.runner.features import MultiExtractor

                self._extractor = MultiExtractor(self._extractor, self.networks, str(self._extractor.device))
        return self._extractor


def features_for_source(
    source: Any,
    needs: tuple[Iterable[str], Iterable[str]],
    config: ExtractConfig,
    weights: Any = None,
    *,
    extractor: Any = None,
    label: str = "samples",
) -> SideFeatures:
    """One side's features: stored statistics/features if usable, else cache, else extraction.

    Args:
        source: an opened `Source` (or anything `open_source` accepts).
        needs: (layers needed only as statistics, layers needed as per-image features),
            as `metric_needs` returns.
        config: extraction settings (mode, device, precision, batch size, cache, progress).
        weights: resolved TF-Inception weights (None: resolve from config.weights).
        extractor: an existing FeatureExtractor / Extractors to reuse (None: built on demand).
        label: "samples" or "reference", for messages.
    """

    src = open_source(source)
    if weights is None:
        from geneval.weights import resolve_inception

        weights = resolve_inception(config.weights, need_logits="logits" in set(needs[1]))
    if extractor is None:
        extractor = Extractors(config, weights, "logits" in set(needs[1]))
    stats_layers, feature_layers = set(needs[0]), set(needs[1])
    usable, notes = precomputed_usable(src, config.mode, weights, strict=not src.has_images)
    origin: dict[str, str] = {}
    given_stats: dict[str, GaussianStats] = {}
    arrays: dict[str, np.ndarray] = {}
    n_file = src.meta.get("n")
    if usable:
        # File statistics serve FID/sFID even when another metric also needs that layer's features:
        # a compact reference stores statistics of all N images but features of a subset only.
        for layer in (stats_layers | feature_layers) & set(src.stats):
            mu, sigma = src.stats[layer]
            given_stats[layer] = GaussianStats(mu, sigma, src.n if src.has_images else n_file)
            origin[layer] = "file statistics"
        for layer in feature_layers & set(src.features):
            arrays[layer] = src.features[layer]
            origin[layer] = "file features"
    todo_rows = feature_layers - set(arrays)
    todo_stats = stats_layers - set(given_stats) - todo_rows
    report = None
    n_streamed = None
    labels = None
    if todo_rows or todo_stats:
        if not src.has_images:  # preflight refuses this; guard direct callers
            raise GenevalError(f"{label} {src.spec} has no images to extract {', '.join(sorted(todo_rows | todo_stats))} from")
        streamed, report, hit = stream_source(src, Needs(frozenset(todo_stats), frozenset(todo_rows)), config, weights, extractor, label)
        n_streamed = streamed.n
        labels = streamed.labels
        for layer in todo_rows:
            arrays[layer] = streamed.rows.get(layer)
            origin[layer] = "cache" if hit else "extracted"
        for layer in todo_stats:
            if layer in streamed.stats:
                given_stats[layer] = streamed.stats[layer]
            origin[layer] = "cache" if hit else "extracted"
    kept = {layer: arrays[layer] for layer in feature_layers if arrays.get(layer) is not None}
    n = n_streamed if n_streamed is not None else (src.n if src.has_images else n_file)
    fs = FeatureSet.from_parts(kept, given_stats, n, labels=labels if kept else None)
    if notes:
        for note in notes:
            log.warning(note)
    return SideFeatures(fs, src.describe(), src.content_hash(), report, origin, list(notes))


def stream_source(src: Source, needs: Needs, config: ExtractConfig, weights: Any, extractor: Any, label: str) -> tuple[Streamed, ReadReport, bool]:
    """One source's features through the execution core: cached, resumable shards on every rank.

    Returns (merged features, read report, whether everything came from the cache). The feature
    cache is the shard store itself (<cache>/features/<key>): a finished store serves later runs,
    an interrupted one resumes, and with cache off a private store is removed afterwards.

    Args:
        src: the opened source.
        needs: layers to sum and layers to gather.
        config: extraction settings (cache, batch size, progress).
        weights: resolved TF-Inception weights.
        extractor: a FeatureExtractor or Extractors (built only when a shard must be computed).
        label: "samples" or "reference", for messages.
    """
    import os

    from geneval.features.inception import FEATURES_NAME
    from geneval.runner import distributed
    from geneval.runner.execute import SourceProducer, stream_features
    from geneval.runner.shards import ShardStore, job_scratch
    from geneval.weights import cache_dir

    dist = distributed.current()
    key = make_key(src.content_hash(), FEATURES_NAME, weights.sha256, config.mode, effective_precision(config)).__dict__
    key = {**key, "kind": "features", "batch_size": config.batch_size, "outputs": sorted(_outputs(weights))}
    info = getattr(extractor, "info", None) or {}
    if info.get("networks"):  # DINOv2 / CLIP beside Inception: their weights shape the entry too
        key["networks"] = info["networks"]
    with contextlib.ExitStack() as scope:
        if config.cache:
            root = cache_dir() / "features"
        else:  # private to this job (all its ranks): neither read nor leave anything, even when killed
            name = os.environ.get("TORCHELASTIC_RUN_ID", f"pid{os.getpid()}")
            root = scope.enter_context(job_scratch(cache_dir() / "scratch", name))
        store = ShardStore(root, key, max(int(src.n or 0), 1), config.shard_size).open()
        record = store.complete_record()

        def extract(images: np.ndarray) -> dict[str, Any]:
            ex = extractor.get() if isinstance(extractor, Extractors) else extractor
            return ex.extract(images)

        streamed = stream_features(
            store, SourceProducer(src, config.batch_size), extract, needs, dist, progress=config.progress, desc=f"inception ({label})"
        )
        hit = streamed.resumed == store.num_shards
        if record is not None and hit:
            report = ReadReport.from_dict(record.get("report", {}))
            log.info("%s: features from cache (%s)", label, store.digest[:12])
        else:
            report = _merged_report(dist, src.report, streamed.n)
            if dist.is_main and config.cache:
                store.mark_complete({"report": report.to_dict(), "source": src.describe()})
        if streamed.n == 0:
            raise GenevalError(f"{label} {src.spec}: no images to extract features from (0 images could be read)")
        log.info("%s: %s", label, report.summary())
        store.release()
        if not config.cache:
            distributed.barrier(dist)
            if dist.is_main:
                store.remove()
        return streamed, report, hit


def _outputs(weights: Any) -> tuple[str, ...]:
    return ("pool3", "spatial", "logits") if weights.has_logits else ("pool3", "spatial")


def _merged_report(dist: Any, local: ReadReport, n: int) -> ReadReport:
    """The read report of the whole source: N from the merge, rejections united over ranks."""
    rejected = list(local.rejected)
    ignored = local.ignored
    if dist.active:
        import torch.distributed as tdist

        parts: list[Any] = [None] * dist.world
        tdist.all_gather_object(parts, (local.rejected, local.ignored))
        seen: dict[str, str] = {}
        for rej, _ in parts:
            for item, reason in rej:
                seen.setdefault(item, reason)
        rejected = list(seen.items())
        ignored = max(p[1] for p in parts)
    return ReadReport(n, rejected, ignored, local.links_skipped)  # every rank walks the same tree


def effective_precision(config: ExtractConfig) -> str:
    """The precision extraction will really use: FeatureExtractor runs "fast" as "exact" off CUDA."""
    if config.precision != "fast":
        return config.precision
    import torch

    device = torch.device(config.device) if config.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return "fast" if device.type == "cuda" else "exact"


def prepare_reference(ref: Any, metrics: str | Iterable[str], config: ExtractConfig, weights: Any = None, *, extractor: Any = None) -> SideFeatures:
    """The reference side for `metrics`: stored statistics/features where usable, else extracted.

    Args:
        ref: a reference path / dataset name / array / opened Source.
        metrics: metric or group names; only those comparing against a reference shape the needs.
        config: extraction settings.
        weights: resolved weights (None: resolve from config.weights).
        extractor: a FeatureExtractor to reuse.
    """
    names = expand_metrics(metrics)
    return features_for_source(ref, metric_needs(names, "reference"), config, weights, extractor=extractor, label="reference")


def score(
    samples: SideFeatures,
    ref: SideFeatures | None,
    metrics: str | Iterable[str],
    *,
    options: MetricOptions | None = None,
    info: dict[str, Any],
    seed: int | None = None,
    run_id: str | None = None,
    model: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    started: float | None = None,
    bias_warnings: dict[str, str] | None = None,
) -> ResultSet:
    """Compute metrics on prepared features and wrap them as provenance-carrying result rows.

    Args:
        samples: the samples' features (SideFeatures.from_arrays for features made elsewhere).
        ref: the reference's features, or None for reference-free metrics (IS).
        metrics: metric or group names.
        options: metric knobs (IS convention, KID subsets/seed, k's).
        info: the extractor's info dict (features, weights_sha256, mode, precision).
        seed: the seed recorded in the rows (the KID/IS draws use options' seeds).
        run_id: id shared by the rows (default: a new one).
        model: model name for the rows.
        extra_provenance: sampler/steps/guidance/convention go into the row fields of that
            name; anything else into each row's extra.
        started: time.perf_counter() at the start of the run, for wall_s (default: now).
        bias_warnings: metric → small-N warning from `check_sizes`, added to that metric's row.
    """
    started = time.perf_counter() if started is None else started
    options = options or MetricOptions()
    names = expand_metrics(metrics)
    t0 = time.perf_counter()
    values = compute_metrics(names, samples.features, None if ref is None else ref.features, options)
    score_s = time.perf_counter() - t0
    run_id = run_id or new_run_id("eval")
    provenance = dict(extra_provenance or {})
    fields = {k: provenance.pop(k) for k in _ROW_FIELDS if k in provenance}
    if model is not None:
        fields["model"] = model
    base_notes = samples.notes + (ref.notes if ref is not None else [])
    bias_warnings = bias_warnings or {}
    wall = time.perf_counter() - started
    rows = []
    for v in values:
        spec = get_metric(v.name)
        extra = dict(v.extra)
        warns = list(extra.pop("warnings", []) or [])
        if v.name in bias_warnings and not any("biased" in w for w in warns):
            warns.append(bias_warnings[v.name])
        warns += [w for w in base_notes if w not in warns]
        extra.update(
            {
                "precision": info.get("precision"),
                "device": info.get("device"),
                "samples": samples.describe,
                "samples_read": None if samples.report is None else samples.report.read,
                "samples_rejected": None if samples.report is None else samples.report.n_rejected,
                "samples_origin": dict(samples.origin),
                "score_s": round(score_s, 4),
                "warnings": warns,
            }
        )
        if ref is not None and spec.needs_ref:
            extra.update(
                {
                    "ref": ref.describe,
                    "ref_n": ref.n,
                    "ref_read": None if ref.report is None else ref.report.read,
                    "ref_rejected": None if ref.report is None else ref.report.n_rejected,
                    "ref_origin": dict(ref.origin),
                }
            )
        extra.update(provenance)
        rows.append(
            ResultRow(
                run_id=run_id,
                metric=v.name,
                value=float(v.value),
                std=None if v.std is None else float(v.std),
                n=v.n,
                higher_is_better=spec.higher_is_better,
                seed=seed,
                mode=info.get("mode"),
                features=info.get("features"),
                weights_sha256=info.get("weights_sha256"),
                ref_sha256=ref.content_sha256 if (ref is not None and spec.needs_ref) else None,
                wall_s=round(wall, 3),
                extra=extra,
                **fields,
            )
        )
    return ResultSet(rows)


def evaluate(
    samples: Any,
    ref: Any = None,
    metrics: str | Iterable[str] = "fid",
    mode: str = "tf",
    device: str | None = None,
    precision: str = "exact",
    batch_size: int = 64,
    weights: str | None = None,
    cache: bool = True,
    seed: int = 2020,
    is_convention: str = "adm",
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    progress: str | bool = "auto",
    run_id: str | None = None,
    model: str | None = None,
    extra_provenance: dict[str, Any] | None = None,
    shard_size: int = 1000,
    ci: float | None = None,
    features: str | None = None,
) -> ResultSet | None:
    """Score generated images against a reference with TF-Inception metrics.

    Args:
        samples: folder, .zip, ADM .npz, .npy, dataset name, numpy array / torch tensor (uint8).
        ref: the reference: images in any of those forms, an ADM reference batch, or a stats
            .npz (FID/sFID only); None for reference-free metrics (IS).
        metrics: names or groups: fid, sfid, is, kid, pr (precision, recall), dc (density, coverage).
        mode: preprocessing: tf (ADM, default), pytorch (pytorch-fid) or clean (clean-fid).
        device: torch device (None: CUDA if available, else CPU).
        precision: exact (default), tf32 or fast.
        batch_size: images per batch.
        weights: explicit TF-Inception weight file (IS needs one with the logits layer).
        cache: read/write the feature cache under the geneval cache dir.
        seed: seed of the KID subset draws and the torch-fidelity IS shuffle (2020 reproduces
            torch-fidelity's defaults); recorded in every row.
        is_convention: adm (5000-image chunks, default) or torch-fidelity (10 shuffled splits).
        kid_subsets: number of KID subsets.
        kid_subset_size: rows per KID subset; None = min(1000, N_samples, N_ref); larger than
            either N is an error.
        progress: auto (a live bar on a terminal only), always (also plain timed lines off a
            terminal) or never; True/False mean auto/never.
        run_id: id shared by the rows (default: a new one).
        model: model name recorded in the rows.
        extra_provenance: sampler/steps/guidance/convention fill those row fields; other keys
            go to each row's extra.
        shard_size: images per resumable shard of the feature cache.
        ci: bootstrap confidence level added to FID/PR/DC rows (e.g. 0.95, seeded by `seed`).
        features: feature networks besides TF-Inception ("dinov2,clip"); metrics add their own.
    Returns:
        The ResultSet; None on ranks other than 0 under torchrun (rank 0 merges and scores).
    Raises:
        GenevalError: bad input, found before any extraction where possible.
    """
    from geneval.runner import distributed

    started = time.perf_counter()
    dist = distributed.current()
    device = distributed.device_for(dist, device)
    config = ExtractConfig(mode, device, precision, batch_size, weights, cache, progress, shard_size)
    options = MetricOptions(
        is_convention=is_convention,
        is_seed=seed,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        kid_seed=seed,
        device=device,
        ci=ci,
        ci_seed=seed,
    )
    plan, error = None, None
    try:
        plan = preflight(samples, ref, metrics, config, options, features=features)
    except GenevalError as e:
        error = e
    distributed.agree(dist, error)  # a failure on any rank stops every rank before any extraction
    extractor = Extractors(config, plan.weights, any("logits" in get_metric(m).needs for m in plan.metrics), plan.networks)
    side = features_for_source(plan.samples, plan.sample_needs, config, plan.weights, extractor=extractor, label="samples")
    ref_side = None
    if plan.ref is not None and (plan.ref_needs[0] or plan.ref_needs[1]):  # e.g. --metrics is ignores --ref
        ref_side = features_for_source(plan.ref, plan.ref_needs, config, plan.weights, extractor=extractor, label="reference")
    if not dist.is_main:  # features were merged on rank 0, which scores and reports
        return None
    # Rejected files can shrink N after preflight: check again before any number is made. The
    # small-N bias warnings are given now, with the N really scored (and never before a fatal error).
    bias = check_sizes(plan.metrics, side.n, None if ref_side is None else ref_side.n, options)
    for w in bias.values():
        warnings.warn(w, stacklevel=2)
    info = _info(extractor, config, plan.weights)
    rs = score(
        side,
        ref_side,
        plan.metrics,
        options=options,
        info=info,
        seed=seed,
        run_id=run_id,
        model=model,
        extra_provenance=extra_provenance,
        started=started,
        bias_warnings=bias,
    )
    rs.config = {
        "command": "eval",
        "samples": side.describe,
        "ref": None if ref_side is None else ref_side.describe,
        "metrics": list(plan.metrics),
        **asdict(config),
        "precision_used": info.get("precision"),
        "options": asdict(options),
        "samples_report": None if side.report is None else side.report.to_dict(),
        "ref_report": None if (ref_side is None or ref_side.report is None) else ref_side.report.to_dict(),
        "warnings": list(bias.values()),
        "world_size": dist.world,
    }
    return rs


def _info(extractor: Extractors, config: ExtractConfig, weights: Any) -> dict[str, Any]:
    """The extractor's provenance; built from config/weights when no extraction ran."""
    if extractor._extractor is not None:
        return dict(extractor._extractor.info)
    from geneval.features.inception import FEATURES_NAME

    return {
        "features": FEATURES_NAME,
        "weights_sha256": weights.sha256,
        "mode": config.mode,
        "precision": config.precision,
        "device": config.device,
        "has_logits": weights.has_logits,
    }

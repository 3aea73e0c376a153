"""From features to numbers: the pure glue that runs registered feature metrics on two FeatureSets."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.fid import frechet_distance
from geneval.metrics.inception_score import inception_score
from geneval.metrics.kid import kernel_inception_distance, resolve_subset_size
from geneval.metrics.prdc import density_coverage, precision_recall
from geneval.metrics.registry import MetricSpec, expand_metrics, get_metric, register
from geneval.metrics.stats import GaussianStats

_LAYERS = ("pool3", "spatial", "logits")


@dataclass(frozen=True, eq=False)
class FeatureSet:
    """Per-image features and/or precomputed Gaussian statistics of one image set.

    Args:
        pool3: (N, 2048) pool3 features, or None.
        spatial: (N, 2023) mixed_6/conv features (first 7 channels), or None.
        logits: (N, 1008) unbiased logits, or None.
        pool3_stats: precomputed pool3 statistics (ADM reference mu/sigma, pytorch-fid npz).
        spatial_stats: precomputed spatial statistics (ADM reference mu_s/sigma_s).
        n: number of images behind the set; inferred from the arrays/statistics when None.
        is_chunks: a streamed ChunkedISAccumulator (ADM convention) standing in for `logits`.
        labels: (N,) class labels of the images (per-class metrics), or None.
        extra: rows of other feature networks' layers (e.g. "dinov2_cls", "clip_embed").
        extra_stats: statistics of other networks' layers.
    """

    pool3: Any = None
    spatial: Any = None
    logits: Any = None
    pool3_stats: GaussianStats | None = None
    spatial_stats: GaussianStats | None = None
    n: int | None = None
    is_chunks: Any = None
    labels: Any = None
    extra: dict = field(default_factory=dict)
    extra_stats: dict = field(default_factory=dict)

    @classmethod
    def from_parts(cls, rows: dict[str, Any], stats: dict[str, GaussianStats], n: int | None = None, **kw: Any) -> FeatureSet:
        """A FeatureSet from layer → rows and layer → statistics maps (any network's layers)."""
        known = {k: rows[k] for k in _LAYERS if rows.get(k) is not None}
        other = {k: v for k, v in rows.items() if k not in _LAYERS and v is not None}
        other_stats = {k: v for k, v in stats.items() if k not in ("pool3", "spatial")}
        return cls(
            **known,
            pool3_stats=stats.get("pool3"),
            spatial_stats=stats.get("spatial"),
            n=None if (known or other) else n,
            extra=other,
            extra_stats=other_stats,
            **kw,
        )

    def __post_init__(self):
        counts = {name: _rows(getattr(self, name)) for name in _LAYERS if getattr(self, name) is not None}
        counts.update({name: _rows(v) for name, v in self.extra.items()})
        if len(set(counts.values())) > 1:
            raise GenevalError(f"feature arrays disagree on the number of images: {counts}")
        if self.n is None:
            inferred = next(iter(counts.values()), None)
            if inferred is None:
                every = (self.pool3_stats, self.spatial_stats, *self.extra_stats.values())
                inferred = next((s.n for s in every if s is not None), None)
            object.__setattr__(self, "n", inferred)
        elif counts and self.n != next(iter(counts.values())):
            raise GenevalError(f"FeatureSet n={self.n} but the feature arrays hold {counts}")

    def features(self, layer: str) -> Any:
        """The per-image array of `layer`, or None."""
        return getattr(self, layer) if layer in _LAYERS else self.extra.get(layer)

    def given_stats(self, layer: str) -> GaussianStats | None:
        """Precomputed statistics of `layer` ("pool3" or "spatial"), or None."""
        return {"pool3": self.pool3_stats, "spatial": self.spatial_stats}.get(layer, self.extra_stats.get(layer))


def _rows(a: Any) -> int:
    shape = tuple(a.shape)
    if len(shape) != 2:
        raise GenevalError(f"feature arrays must be 2-d (N, d), got shape {shape}")
    return int(shape[0])


@dataclass(frozen=True)
class MetricOptions:
    """Knobs of the feature metrics; every value is recorded in the result's extra fields.

    Args:
        is_convention: "adm" (consecutive 5000-chunks) or "torch-fidelity" (seeded shuffle, splits).
        is_splits: splits for the torch-fidelity convention.
        is_chunk_size: chunk length for the ADM convention.
        is_seed: shuffle seed for the torch-fidelity convention.
        kid_subsets: number of KID subsets.
        kid_subset_size: rows per KID subset; None = min(1000, N_samples, N_ref).
        kid_seed: RandomState seed of the KID subset draws (2020 = torch-fidelity's default).
        pr_k: neighbourhood size of precision/recall.
        dc_k: neighbourhood size of density/coverage.
        block_size: rows/columns per k-NN distance block.
        device: where the k-NN and kernel computations run ("cpu", "cuda", ...).
        ci: coverage of bootstrap confidence intervals added to FID/PR/DC rows (None: none).
        ci_n_boot: bootstrap resamples.
        ci_seed: seed of the resampling.
    """

    is_convention: str = "adm"
    is_splits: int = 10
    is_chunk_size: int = 5000
    is_seed: int = 2020
    kid_subsets: int = 100
    kid_subset_size: int | None = None
    kid_seed: int = 2020
    pr_k: int = 3
    dc_k: int = 5
    block_size: int = 10000
    device: str = "cpu"
    ci: float | None = None
    ci_n_boot: int = 200
    ci_seed: int = 0


@dataclass(frozen=True)
class MetricValue:
    """One metric's number with its spread and provenance.

    Args:
        name: registered metric name.
        value: the number.
        std: spread across splits/subsets where the metric has one, else None.
        n: number of samples it was computed on.
        extra: convention, k, subsets, n_ref, warnings, ... for the result row.
    """

    name: str
    value: float
    std: float | None
    n: int | None
    extra: dict = field(default_factory=dict)


class _Context:
    """Caches statistics and pairwise results within one compute_metrics call."""

    def __init__(self, samples: FeatureSet, ref: FeatureSet | None, options: MetricOptions):
        self.samples, self.ref, self.options = samples, ref, options
        self._stats: dict[tuple[str, str], GaussianStats] = {}
        self._pairs: dict[str, tuple[float, float]] = {}

    def side(self, which: str) -> FeatureSet:
        return self.samples if which == "samples" else self.ref

    def stats(self, metric: str, which: str, layer: str) -> GaussianStats:
        key = (which, layer)
        if key not in self._stats:
            fs = self.side(which)
            given = fs.given_stats(layer)
            if given is not None:
                self._stats[key] = given
            elif fs.features(layer) is not None:
                n = _rows(fs.features(layer))
                if n < 2:
                    raise GenevalError(f"{metric} needs at least 2 {which} images for a covariance, got {n}")
                self._stats[key] = GaussianStats.from_features(fs.features(layer))
            else:
                raise GenevalError(f"{metric} needs {layer} features or statistics of the {which}, which were not provided")
        return self._stats[key]

    def arrays(self, metric: str, layer: str) -> tuple[Any, Any]:
        out = []
        for which in ("samples", "reference"):
            fs = self.side(which)
            arr = fs.features(layer)
            if arr is None:
                only = " (it provides only mu/sigma statistics)" if fs.given_stats(layer) is not None else ""
                raise GenevalError(
                    f"{metric} needs per-image {layer} features of the {which}{only}; pass images or an ADM reference batch with arr_0"
                )
            out.append(arr)
        return out[0], out[1]

    def pair(self, key: str, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
        if key not in self._pairs:
            self._pairs[key] = fn()
        return self._pairs[key]


def frechet_metric(ctx: _Context, name: str, layer: str) -> MetricValue:
    """Fréchet distance of `layer` statistics, samples vs reference, as a MetricValue (any network)."""
    a = ctx.stats(name, "samples", layer)
    b = ctx.stats(name, "reference", layer)
    if a.dim != b.dim:
        raise GenevalError(f"{name}: samples have {a.dim}-d {layer} statistics, the reference {b.dim}-d")
    warnings = []
    small = [f"{w} N={s.n}" for w, s in (("samples", a), ("reference", b)) if s.n is not None and s.n < a.dim]
    if small:
        warnings.append(f"{name} at N < {a.dim} feature dims ({', '.join(small)}) is biased; never compare {name.upper()}s computed at different N")
    value = frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    ref_source = "statistics" if ctx.ref.given_stats(layer) is not None else "features"
    extra = {"n_ref": b.n, "dims": a.dim, "ref_source": ref_source, "route": "eigh", "warnings": warnings}
    return MetricValue(name, value, None, ctx.samples.n, extra)


def frechet_spec(name: str, layer: str, description: str, weights: tuple[str, ...]) -> MetricSpec:
    """The registry entry of a Fréchet distance of one feature layer (FID, sFID, FD-DINOv2, …): lower
    is better, against the reference, its own group, Gaussian statistics suffice."""
    return MetricSpec(
        name, False, (layer,), True, name, description, stats_suffice=True, compute=lambda ctx: frechet_metric(ctx, name, layer), weights=weights
    )


def _is(ctx: _Context) -> MetricValue:
    logits = ctx.samples.logits
    o = ctx.options
    acc = ctx.samples.is_chunks
    if logits is None and acc is not None and o.is_convention == "adm" and acc.chunk_size == o.is_chunk_size:
        mean, std = acc.score()
        n = int(acc.sums[:, 0].sum())
        extra = {
            "convention": "adm",
            "chunk_size": o.is_chunk_size,
            "splits": int((acc.sums[:, 0] > 0).sum()),
            "std_ddof": 0,
            "streamed": "float64 chunk sums (no logits rows held)",
        }
        extra["std_method"] = f"split-std-{extra['splits']}"
        return MetricValue("is", mean, std, n, extra)
    if logits is None:
        raise GenevalError("is needs the samples' Inception logits, which need weights with the 1008-way classifier layer")
    mean, std = inception_score(logits, o.is_convention, splits=o.is_splits, chunk_size=o.is_chunk_size, seed=o.is_seed)
    n = _rows(logits)
    if o.is_convention == "adm":
        extra = {"convention": "adm", "chunk_size": o.is_chunk_size, "splits": -(-n // o.is_chunk_size)}
    else:
        extra = {"convention": "torch-fidelity", "splits": o.is_splits, "seed": o.is_seed}
    extra["std_ddof"] = 0
    # Spread of IS across splits: the gate may use it as a noise band, and says so.
    extra["std_method"] = f"split-std-{extra['splits']}"
    return MetricValue("is", mean, std, n, extra)


def _kid(ctx: _Context) -> MetricValue:
    x, y = ctx.arrays("kid", "pool3")
    o = ctx.options
    m = resolve_subset_size(_rows(x), _rows(y), o.kid_subset_size)
    mean, std = kernel_inception_distance(x, y, subsets=o.kid_subsets, subset_size=m, seed=o.kid_seed, device=o.device)
    extra = {
        "subsets": o.kid_subsets,
        "subset_size": m,
        "seed": o.kid_seed,
        "n_ref": _rows(y),
        "std_ddof": 0,
        "std_method": f"subset-std-{o.kid_subsets}",
    }
    return MetricValue("kid", mean, std, _rows(x), extra)


def _knn_metric(ctx: _Context, name: str, group: str, pair_fn: Callable[..., tuple[float, float]], k_option: str, which: int) -> MetricValue:
    """Value `which` (0 or 1) of the pair pair_fn gives for pool3 (precision_recall, density_coverage),
    computed once for the group, with k the option `k_option`."""
    x, y = ctx.arrays(name, "pool3")
    o = ctx.options
    k = getattr(o, k_option)
    pair = ctx.pair(group, lambda: pair_fn(y, x, k=k, block_size=o.block_size, device=o.device))
    extra = {"k": k, "n_ref": _rows(y), "distance": "squared euclidean, float32"}
    return MetricValue(name, pair[which], None, _rows(x), extra)


def _knn_spec(name: str, group: str, description: str, pair_fn: Callable[..., tuple[float, float]], k_option: str, which: int) -> MetricSpec:
    """The registry entry of a k-NN manifold metric of pool3 (see _knn_metric): higher is better,
    against the reference, defined from k + 1 points."""
    return MetricSpec(
        name,
        True,
        ("pool3",),
        True,
        group,
        description,
        compute=lambda ctx: _knn_metric(ctx, name, group, pair_fn, k_option, which),
        min_n=lambda o: getattr(o, k_option) + 1,
        weights=_INCEPTION,
    )


_INCEPTION = ("inception",)
# The feature metrics of the ADM / torch-fidelity recipes (REFERENCE §2): the registry entry is
# the compute table (function, features, weights, minimum N).
for _spec in (
    frechet_spec("fid", "pool3", "Frechet distance of TF-Inception pool3 (2048-d) Gaussians", _INCEPTION),
    frechet_spec("sfid", "spatial", "Frechet distance of TF-Inception mixed_6/conv spatial features (2023-d)", _INCEPTION),
    MetricSpec(
        "is",
        True,
        ("logits",),
        False,
        "is",
        "Inception Score: exp E KL(p(y|x) || p(y)) over 1008 unbiased logits",
        compute=_is,
        weights=("inception-logits",),
    ),
    MetricSpec(
        "kid",
        False,
        ("pool3",),
        True,
        "kid",
        "Kernel Inception Distance: unbiased MMD^2, cubic polynomial kernel, subsets",
        compute=_kid,
        weights=_INCEPTION,
    ),
    _knn_spec("precision", "pr", "Share of samples inside the reference k-NN manifold (Kynkaanniemi et al. 2019)", precision_recall, "pr_k", 0),
    _knn_spec("recall", "pr", "Share of reference points inside the sample k-NN manifold", precision_recall, "pr_k", 1),
    _knn_spec("density", "dc", "Mean count of reference k-NN balls holding each sample, over k (Naeem et al. 2020)", density_coverage, "dc_k", 0),
    _knn_spec("coverage", "dc", "Share of reference points whose k-NN ball holds a sample", density_coverage, "dc_k", 1),
):
    register(_spec)
del _spec


def feature_metrics() -> list[str]:
    """Names of the registered metrics computed from features (what `eval` and `run` can compute)."""
    from geneval.metrics.registry import METRICS, groups

    groups()  # loads every plugin module
    return [name for name, spec in METRICS.items() if spec.compute is not None]


def check_computable(names: Iterable[str], command: str) -> None:
    """Raise a one-line GenevalError, before any work, for metrics `command` cannot compute from features.

    Args:
        names: expanded metric names.
        command: the command asking ("run", "eval"), for the message.
    """
    bad = [n for n in names if get_metric(n).compute is None]
    if bad:
        raise GenevalError(
            f"{', '.join(bad)} cannot be computed by `geneval {command}` (needs pixels or image pairs: use `geneval recon`); "
            f"feature metrics: {', '.join(feature_metrics())}"
        )


def compute_metrics(
    names: str | Iterable[str],
    samples: FeatureSet,
    ref: FeatureSet | None = None,
    options: MetricOptions | None = None,
) -> list[MetricValue]:
    """Compute Inception-feature metrics of `samples` against `ref`, in the order asked.

    Args:
        names: metric and group names ("fid,pr" or a list); see the registry.
        samples: the generated images' features.
        ref: the reference set's features/statistics; None when only reference-free metrics are asked.
        options: metric knobs; defaults to MetricOptions().
    """
    options = options or MetricOptions()
    wanted = expand_metrics(names)
    check_computable(wanted, "eval")
    for name in wanted:
        spec = get_metric(name)
        if spec.needs_ref and ref is None:
            raise GenevalError(f"{name} compares against a reference set, but no reference was given")
    if samples.n is not None and samples.n < 2:
        raise GenevalError(f"metrics need at least 2 samples, got {samples.n}")
    if options.ci is not None and not 0 < options.ci < 1:
        raise GenevalError(f"--ci must lie in (0, 1), e.g. 0.95; got {options.ci}")
    ctx = _Context(samples, ref, options)
    with torch.no_grad():
        values = [get_metric(name).compute(ctx) for name in wanted]
        if options.ci is not None:
            from geneval.metrics.extended import attach_intervals

            attach_intervals(values, ctx, options.ci, options.ci_n_boot, options.ci_seed)
    return values


def stats_from_npz_arrays(arrays: dict[str, np.ndarray]) -> tuple[GaussianStats | None, GaussianStats | None]:
    """(pool3, spatial) statistics from ADM reference-batch / pytorch-fid npz keys mu, sigma, mu_s, sigma_s.

    Args:
        arrays: the npz contents as a mapping.
    """
    pool3 = GaussianStats(arrays["mu"], arrays["sigma"]) if "mu" in arrays and "sigma" in arrays else None
    spatial = GaussianStats(arrays["mu_s"], arrays["sigma_s"]) if "mu_s" in arrays and "sigma_s" in arrays else None
    return pool3, spatial

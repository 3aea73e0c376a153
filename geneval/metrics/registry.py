"""The metric registry: name → spec (direction, needed features, group); `--metrics` reads it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from geneval.errors import GenevalError


@dataclass(frozen=True)
class MetricSpec:
    """What a metric is and what it needs.

    Args:
        name: the name users type (`--metrics fid,is`) and results carry.
        higher_is_better: the direction gates and reports use; None for diagnostics without one
            (e.g. a latent's std), which gates must not judge.
        needs: feature layers the extractor must produce for it, e.g. ("pool3",), ("spatial",),
            ("logits",); empty for metrics on pixels or codes.
        needs_ref: whether it compares against a reference set.
        group: metrics computed together share a group; typing the group name selects all of them
            (`pr` → precision, recall).
        description: one line for `--help` and reports.
        stats_suffice: True when Gaussian statistics (mu, sigma) of the needed features are
            enough on both sides (FID, sFID), so a stats-only reference file can serve.
    """

    name: str
    higher_is_better: bool | None
    needs: tuple[str, ...]
    needs_ref: bool
    group: str
    description: str
    stats_suffice: bool = False


METRICS: dict[str, MetricSpec] = {}

# Modules that register further metrics on import (pixel/code metrics of `geneval recon`,
# LPIPS diversity). Lookups import them first, so every caller sees the same full registry.
PLUGIN_MODULES = ("geneval.metrics.recon", "geneval.metrics.lpips")
_plugins_loaded = False


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    import importlib

    _plugins_loaded = True
    for mod in PLUGIN_MODULES:
        importlib.import_module(mod)


def register(spec: MetricSpec) -> MetricSpec:
    """Add a metric to the registry; registering an identical spec again is a no-op.

    Args:
        spec: the metric's spec. A different spec under a taken name is a programming error.
    """
    key = spec.name.lower()
    if key != spec.name or not key or "," in key or key.strip() != key:
        raise ValueError(f"metric names are lowercase, non-empty and without commas: {spec.name!r}")
    old = METRICS.get(key)
    if old is not None and old != spec:
        raise ValueError(f"metric {key!r} is already registered with a different spec: {old}")
    METRICS[key] = spec
    return spec


def get_metric(name: str) -> MetricSpec:
    """The spec registered under `name` (case-insensitive).

    Args:
        name: a metric name.
    """
    spec = lookup(name)
    if spec is None:
        raise GenevalError(f"unknown metric {name.strip()!r}; known metrics: {_known()}")
    return spec


def lookup(name: str) -> MetricSpec | None:
    """The spec registered under `name` (case-insensitive), or None when no module registers it.

    Args:
        name: a metric name, e.g. one read back from a results file.
    """
    _load_plugins()
    return METRICS.get(name.strip().lower())


def groups() -> dict[str, list[str]]:
    """Group name → member metric names, in registration order."""
    _load_plugins()
    out: dict[str, list[str]] = {}
    for spec in METRICS.values():
        out.setdefault(spec.group, []).append(spec.name)
    return out


def expand_metrics(names: str | Iterable[str]) -> list[str]:
    """Resolve a comma list of metric and group names to metric names, duplicates removed.

    Args:
        names: "fid,pr,dc" or an iterable of names; group names expand to their members in
            registration order; order of first appearance is kept.
    """
    tokens = names.split(",") if isinstance(names, str) else list(names)
    tokens = [t.strip().lower() for t in tokens if t and t.strip()]
    if not tokens:
        raise GenevalError(f"no metrics given; choose from: {_known()}")
    by_group = groups()
    out: list[str] = []
    for tok in tokens:
        if tok in METRICS:
            members = [tok]
        elif tok in by_group:
            members = by_group[tok]
        else:
            raise GenevalError(f"unknown metric {tok!r}; known metrics: {_known()}")
        out.extend(m for m in members if m not in out)
    return out


def _known() -> str:
    names = list(METRICS)
    extra_groups = [g for g, members in groups().items() if g not in METRICS and len(members) > 1]
    text = ", ".join(names)
    if extra_groups:
        text += " (groups: " + ", ".join(extra_groups) + ")"
    return text


# The feature-based metrics of the ADM / torch-fidelity recipes (REFERENCE §2).
for _spec in (
    MetricSpec("fid", False, ("pool3",), True, "fid",
               "Frechet distance of TF-Inception pool3 (2048-d) Gaussians", stats_suffice=True),
    MetricSpec("sfid", False, ("spatial",), True, "sfid",
               "Frechet distance of TF-Inception mixed_6/conv spatial features (2023-d)",
               stats_suffice=True),
    MetricSpec("is", True, ("logits",), False, "is",
               "Inception Score: exp E KL(p(y|x) || p(y)) over 1008 unbiased logits"),
    MetricSpec("kid", False, ("pool3",), True, "kid",
               "Kernel Inception Distance: unbiased MMD^2, cubic polynomial kernel, subsets"),
    MetricSpec("precision", True, ("pool3",), True, "pr",
               "Share of samples inside the reference k-NN manifold (Kynkaanniemi et al. 2019)"),
    MetricSpec("recall", True, ("pool3",), True, "pr",
               "Share of reference points inside the sample k-NN manifold"),
    MetricSpec("density", True, ("pool3",), True, "dc",
               "Mean count of reference k-NN balls holding each sample, over k (Naeem et al. 2020)"),
    MetricSpec("coverage", True, ("pool3",), True, "dc",
               "Share of reference points whose k-NN ball holds a sample"),
):
    register(_spec)
del _spec

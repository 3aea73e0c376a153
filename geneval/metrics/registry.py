"""The metric registry: name → spec (direction, needed features, group); `--metrics` reads it."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

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
        compute: the function that computes it from features (geneval.metrics.compute's context
            → MetricValue); None for metrics that need pixels or image pairs (recon, LPIPS
            diversity), which `eval`/`run` refuse in preflight.
        min_n: the smallest N it is defined for: an int, or a function of MetricOptions (k-NN
            metrics need k + 1 points).
        weights: the weight files it needs, by geneval.weights name ("inception" — the trunk; IS
            needs "inception-logits"), for the preflight's weight check.
    """

    name: str
    higher_is_better: bool | None
    needs: tuple[str, ...]
    needs_ref: bool
    group: str
    description: str
    stats_suffice: bool = False
    compute: Callable[[Any], Any] | None = field(default=None, compare=False)
    min_n: int | Callable[[Any], int] = field(default=2, compare=False)
    weights: tuple[str, ...] = ()

    def smallest_n(self, options: Any) -> int:
        """min_n for these metric options."""
        return self.min_n(options) if callable(self.min_n) else int(self.min_n)


METRICS: dict[str, MetricSpec] = {}

# Modules that register further metrics on import (pixel/code metrics of `geneval recon`,
# LPIPS diversity). Lookups import them first, so every caller sees the same full registry.
PLUGIN_MODULES = ("geneval.metrics.compute", "geneval.metrics.extended", "geneval.metrics.recon", "geneval.metrics.lpips")
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

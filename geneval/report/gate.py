"""CI regression gate: results against a baseline, per metric, inside a stated noise band.

Band per metric = max(tolerance, z · sqrt(σ_result² + σ_baseline²)). Each σ comes from the row's
std when it records how it was obtained (`extra["std_method"]`: "bootstrap-200", "split-std",
"seed-repeats-3", …); a baseline built from k seed repeats carries their spread and its mean's σ
is spread/√k. A side without a noise estimate borrows the other side's single-run σ. A metric
fails when it is worse than the baseline by more than its band, in the registry's direction.
"""

from __future__ import annotations

import math
import re
import statistics
from dataclasses import dataclass
from typing import Sequence

from geneval.errors import GenevalError
from geneval.report.compare import (
    COMPARABLE_FIELDS,
    check_names,
    classify,
    combined_sigma,
    higher_is_better,
    metric_order,
)
from geneval.report.tables import fmt_cell, fmt_number
from geneval.results import ResultRow, ResultSet, utc_now

METHOD = "band = max(tolerance, z·√(σ_result² + σ_baseline²))"
# Fields that seed repeats of one configuration must share (besides COMPARABLE_FIELDS).
_CONFIG_FIELDS = ("model", "sampler", "steps", "guidance", "convention")


@dataclass(frozen=True)
class Tolerance:
    """An absolute tolerance, or a relative one (fraction of the baseline value)."""

    amount: float
    relative: bool

    def absolute(self, baseline: float) -> float:
        return self.amount * abs(baseline) if self.relative else self.amount

    def __str__(self) -> str:
        return f"{self.amount * 100:g}%" if self.relative else f"{self.amount:g}"


def parse_tolerances(text: str | None) -> dict[str, Tolerance]:
    """Parse 'fid=0.5,is=2%' ('*' sets a default for every metric).

    Args:
        text: comma-separated metric=amount pairs; a trailing % is relative to the baseline value.
    """
    out: dict[str, Tolerance] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        m = re.fullmatch(r"\s*([A-Za-z0-9_*-]+)\s*=\s*([0-9.eE+-]+)\s*(%?)\s*", part)
        if not m:
            raise GenevalError(f"bad tolerance {part.strip()!r}: use metric=amount or metric=amount%, e.g. fid=0.5,is=2%")
        name, amount, pct = m.group(1).lower(), m.group(2), m.group(3)
        try:
            value = float(amount)
        except ValueError:
            raise GenevalError(f"bad tolerance amount {amount!r} for {name}") from None
        if not math.isfinite(value) or value < 0:
            raise GenevalError(f"tolerance for {name} must be a finite number ≥ 0, got {amount}")
        if name in out:
            raise GenevalError(f"tolerance for {name} given twice")
        out[name] = Tolerance(value / 100 if pct else value, bool(pct))
    return out


def combine_runs(runs: Sequence[ResultSet], run_id: str | None = None) -> ResultSet:
    """One row per metric from one run, or the mean ± spread of several seed repeats.

    Seed repeats must share everything but the seed (N, mode, weights, reference, model,
    sampler, steps, guidance) and have distinct seeds; their std is the spread of one run
    (ddof 1), recorded as std_method "seed-repeats-k".

    Args:
        runs: one ResultSet per run.
        run_id: id of the combined rows; default "mean-of-<k>".
    """
    if not runs:
        raise GenevalError("no runs given")
    if len(runs) == 1:
        return runs[0]
    ids = [run.rows[0].run_id for run in runs]
    metric_sets = {rid: [r.metric for r in run.rows] for rid, run in zip(ids, runs)}
    metrics = metric_order(runs)
    for rid, ms in metric_sets.items():
        lacking = [m for m in metrics if m not in ms]
        if lacking:
            raise GenevalError(f"seed repeats must hold the same metrics; run {rid} lacks {', '.join(lacking)}")
    seeds = [run.rows[0].seed for run in runs]
    known = [s for s in seeds if s is not None]
    if len(set(known)) < len(known):
        raise GenevalError(f"seed repeats need distinct seeds; got seeds {seeds} for runs {ids}")
    k = len(runs)
    rid_out = run_id or f"mean-of-{k}"
    rows = []
    for m in metrics:
        group = [next(r for r in run.rows if r.metric == m) for run in runs]
        for f in COMPARABLE_FIELDS + _CONFIG_FIELDS:
            vals = {r.run_id: getattr(r, f) for r in group}
            if len(set(vals.values())) > 1:
                raise GenevalError(f"seed repeats must differ only in seed; {m} {f} differs: {vals}")
        values = [r.value for r in group]
        bad = [f"{r.run_id}={r.value}" for r in group if not math.isfinite(r.value)]
        if bad:
            raise GenevalError(f"cannot average non-finite {m} values over seed repeats: {', '.join(bad)}")
        first = group[0]
        rows.append(
            ResultRow(
                run_id=rid_out,
                metric=m,
                value=statistics.fmean(values),
                std=statistics.stdev(values),
                n=first.n,
                higher_is_better=first.higher_is_better,
                model=first.model,
                sampler=first.sampler,
                steps=first.steps,
                guidance=first.guidance,
                convention=first.convention,
                seed=None,
                mode=first.mode,
                features=first.features,
                weights_sha256=first.weights_sha256,
                ref_sha256=first.ref_sha256,
                created_at=utc_now(),
                wall_s=sum(r.wall_s for r in group) if all(r.wall_s is not None for r in group) else None,
                extra={"std_method": f"seed-repeats-{k}", "repeats": k, "runs": ids, "seeds": seeds, "values": values, "std_ddof": 1},
            )
        )
    return ResultSet(rows, {"combined_from": ids})


def make_baseline(runs: Sequence[ResultSet]) -> ResultSet:
    """A baseline from one run or from seed repeats (mean ± spread); refuses unusable inputs.

    Args:
        runs: one ResultSet per run.
    """
    base = combine_runs(runs, run_id=None if len(runs) == 1 else f"baseline-mean-of-{len(runs)}")
    for r in base.rows:
        if not math.isfinite(r.value):
            raise GenevalError(f"cannot make a baseline from a non-finite {r.metric} value ({r.value})")
        if r.n is None:
            raise GenevalError(f"cannot make a baseline from {r.metric} without N: the gate could not check comparability")
        higher_is_better(r.metric, [r])  # an unknown direction must fail now, not at gate time
    ids = [run.rows[0].run_id for run in runs]
    return ResultSet(base.rows, {"baseline": {"runs": ids, "created_at": utc_now(), "method": base.rows[0].extra.get("std_method") or "single run"}})


@dataclass(frozen=True)
class MetricVerdict:
    """The gate's decision on one metric."""

    metric: str
    higher_is_better: bool
    baseline: ResultRow
    result: ResultRow
    delta: float
    band: float
    tolerance: Tolerance | None
    sigma: float | None
    noise: str
    change: str  # better / worse / within noise / same

    @property
    def passed(self) -> bool:
        return self.change != "worse"


@dataclass(frozen=True)
class GateVerdict:
    """All metrics' verdicts plus what was gated and how."""

    verdicts: list[MetricVerdict]
    z: float
    ungated: list[str]
    results_label: str
    baseline_label: str

    @property
    def passed(self) -> bool:
        return all(v.passed for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        return 0 if self.passed else 1


def run_gate(
    results: ResultSet,
    baseline: ResultSet,
    tolerances: dict[str, Tolerance] | None = None,
    z: float = 3.0,
    results_label: str = "results",
    baseline_label: str = "baseline",
) -> GateVerdict:
    """Gate `results` (one run, or seed repeats combined) against `baseline`, per metric.

    Args:
        results: the candidate's rows; several runs are combined as seed repeats.
        baseline: the baseline's rows (written by `make_baseline`, or any results file).
        tolerances: metric → Tolerance; '*' applies to metrics without their own.
        z: noise band width in standard deviations.
        results_label: how the verdict names the results.
        baseline_label: how the verdict names the baseline.
    """
    if not math.isfinite(z) or z < 0:
        raise GenevalError(f"z must be a finite number ≥ 0, got {z}")
    tolerances = dict(tolerances or {})
    check_names(results, results_label)
    check_names(baseline, baseline_label)
    res = combine_runs(list(results.by_run().values())) if len(results.run_ids()) > 1 else results
    base = combine_runs(list(baseline.by_run().values())) if len(baseline.run_ids()) > 1 else baseline
    if not base.rows:
        raise GenevalError(f"baseline {baseline_label} holds no result rows")
    if not res.rows:
        raise GenevalError(f"results {results_label} hold no result rows")
    base_metrics = [r.metric for r in base.rows]
    unknown = sorted(set(tolerances) - set(base_metrics) - {"*"})
    if unknown:
        raise GenevalError(f"tolerance given for {', '.join(unknown)}, not in the baseline ({', '.join(base_metrics)})")
    res_by = {r.metric: r for r in res.rows}
    missing = [m for m in base_metrics if m not in res_by]
    if missing:
        raise GenevalError(f"metric(s) {', '.join(missing)} in the baseline are missing from the results")
    problems = []
    for b in base.rows:
        r = res_by[b.metric]
        for f in COMPARABLE_FIELDS:
            if getattr(b, f) != getattr(r, f):
                problems.append(f"{b.metric} {f}: baseline {getattr(b, f)} vs results {getattr(r, f)}")
        if not math.isfinite(b.value):
            problems.append(f"{b.metric}: baseline value is {b.value}")
        if math.isnan(r.value):
            problems.append(f"{b.metric}: result value is nan")
    if problems:
        raise GenevalError("baseline is not comparable with the results: " + "; ".join(problems))
    verdicts = []
    directionless = []
    for b in base.rows:
        r = res_by[b.metric]
        hib = higher_is_better(b.metric, [b, r])
        if hib is None:  # a diagnostic (latent_std, …): reported, never gated
            directionless.append(b.metric)
            continue
        tol = tolerances.get(b.metric, tolerances.get("*"))
        sigma, noise = combined_sigma(b, r, names=("baseline", "result"))
        band = max(tol.absolute(b.value) if tol else 0.0, z * sigma if sigma is not None else 0.0)
        delta = r.value - b.value
        verdicts.append(MetricVerdict(b.metric, hib, b, r, delta, band, tol, sigma, noise, classify(delta, hib, band)))
    if not verdicts:
        raise GenevalError(f"nothing to gate: the baseline's metrics ({', '.join(base_metrics)}) have no direction")
    ungated = [f"{m} (not in the baseline)" for m in res_by if m not in base_metrics]
    ungated += [f"{m} (diagnostic without a direction)" for m in directionless]
    return GateVerdict(verdicts, z, ungated, results_label, baseline_label)


def _describe(row: ResultRow) -> str:
    extra = row.extra
    if str(extra.get("std_method", "")).startswith("seed-repeats"):
        return f"mean of {extra.get('repeats')} seed repeats (seeds {extra.get('seeds')})"
    return f"run {row.run_id} (seed {row.seed})"


def verdict_markdown(v: GateVerdict) -> str:
    """The verdict as Markdown: headline, per-metric table and the noise-band method."""
    status = "PASS ✅" if v.passed else "FAIL ❌"
    failed = [x.metric for x in v.verdicts if not x.passed]
    first = v.verdicts[0]
    lines = [
        f"## geneval gate: {status}",
        "",
        f"{len(v.verdicts)} metric(s) gated"
        + (f"; regressed: {', '.join(failed)}" if failed else "; no regression")
        + f". N={first.result.n}, mode={first.result.mode}.",
        "",
        f"- results: `{v.results_label}` — {_describe(first.result)}",
        f"- baseline: `{v.baseline_label}` — {_describe(first.baseline)}",
        "",
        "| metric | better | baseline | result | Δ | band | change | verdict |",
        "|---|:-:|---:|---:|---:|---:|---|---|",
    ]
    for x in v.verdicts:
        lines.append(
            f"| {x.metric} | {'↑' if x.higher_is_better else '↓'} | {fmt_cell(x.baseline)} | {fmt_cell(x.result)} "
            f"| {x.delta:+.4g} | ±{fmt_number(x.band)} | {x.change} | {'pass' if x.passed else '**FAIL**'} |"
        )
    lines += ["", f"Noise band: {METHOD}, z={v.z:g}; a metric fails when it is worse than the baseline by more than its band.", ""]
    for x in v.verdicts:
        tol = (
            f"tolerance {x.tolerance}" + (f" = {fmt_number(x.tolerance.absolute(x.baseline.value))}" if x.tolerance and x.tolerance.relative else "")
            if x.tolerance
            else "no tolerance"
        )
        sig = f"z·σ = {fmt_number(v.z * x.sigma)}" if x.sigma is not None else "z·σ unavailable"
        lines.append(f"- {x.metric}: {tol}; {sig}; {x.noise}")
    exact = [x.metric for x in v.verdicts if x.band == 0]
    if exact:
        lines += [
            "",
            f"⚠ {', '.join(exact)}: band 0 (no recorded std and no tolerance), so any worsening fails; "
            "record a std with extra.std_method or pass --tolerance.",
        ]
    if v.ungated:
        lines += ["", f"Not gated: {', '.join(v.ungated)}."]
    return "\n".join(lines) + "\n"

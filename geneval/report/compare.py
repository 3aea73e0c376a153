"""Which numbers may be compared, which way is better, and A-vs-B deltas.

Two numbers of one metric are comparable only when they were measured under the same
conditions: the same N, preprocessing mode, feature network, feature weights and reference
set. Sampler, steps, guidance and seed are what a comparison is *about*, so they may differ.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from geneval.errors import GenevalError
from geneval.results import ResultRow, ResultSet, read_results

# More seed repeats than anyone runs: a larger count in a file is damage, not data.
_MAX_REPEATS = 1_000_000
# Fields that must agree for two values of one metric to be comparable.
COMPARABLE_FIELDS: tuple[str, ...] = ("n", "mode", "features", "weights_sha256", "ref_sha256")


def load_runs(paths: Sequence[str | os.PathLike]) -> list[ResultSet]:
    """Read results files or run directories and split them into one ResultSet per run.

    Args:
        paths: results files (.json/.csv/.jsonl) or run directories holding results.json.
    """
    if not paths:
        raise GenevalError("no results given")
    runs: list[ResultSet] = []
    seen: dict[str, str] = {}
    for path in paths:
        rs = read_results(path)
        if not rs.rows:
            raise GenevalError(f"{path}: holds no result rows")
        check_names(rs, str(path))
        for run_id, run in rs.by_run().items():
            if run_id in seen:
                raise GenevalError(f"run {run_id!r} appears in both {seen[run_id]} and {path}")
            seen[run_id] = str(path)
            metrics = [r.metric for r in run.rows]
            dup = sorted({m for m in metrics if metrics.count(m) > 1})
            if dup:
                raise GenevalError(f"{path}: run {run_id!r} has several rows for {', '.join(dup)}")
            runs.append(run)
    return runs


def check_names(rs: ResultSet, where: str) -> None:
    """Refuse run ids and metric names with control characters (newline, tab, …).

    They end up in one-line error messages and in table cells, which they would break.

    Args:
        rs: rows read from a file.
        where: the file, for the message.
    """
    for r in rs.rows:
        for name, v in (("run_id", r.run_id), ("metric", r.metric)):
            if not v.isprintable():
                raise GenevalError(f"{where}: {name} {v!r} holds a control character (newline, tab, …)")


def metric_order(runs: Iterable[ResultSet]) -> list[str]:
    """All metrics of the runs, in order of first appearance."""
    return list(dict.fromkeys(r.metric for run in runs for r in run.rows))


def _registered(metric: str):
    """The registry's spec of `metric`, or None; the registry imports the modules that add
    recon/LPIPS metrics itself, so a report over recon results sees them."""
    from geneval.metrics import registry

    return registry.lookup(metric)


def higher_is_better(metric: str, rows: Iterable[ResultRow] = ()) -> bool | None:
    """The metric's direction: the registry's, else the rows' own `higher_is_better`.

    Returns None only for metrics the registry declares direction-less (diagnostics such as
    latent_std); those are shown but never ranked or gated.

    Args:
        metric: the metric name.
        rows: rows of that metric, consulted only when the registry does not know it.
    """
    spec = _registered(metric)
    if spec is not None:
        return spec.higher_is_better
    stated = {r.higher_is_better for r in rows if r.higher_is_better is not None}
    if len(stated) == 1:
        return stated.pop()
    if len(stated) > 1:
        raise GenevalError(f"metric {metric!r}: rows disagree on higher_is_better and the registry does not know it")
    raise GenevalError(f"metric {metric!r} is not registered and its rows do not say whether higher is better; cannot tell better from worse")


@dataclass(frozen=True)
class Difference:
    """One condition that differs between values of one metric: field → value per run."""

    metric: str
    field: str
    values: dict[str, Any]

    def describe(self) -> str:
        vals = ", ".join(f"{run}={_short(v)}" for run, v in self.values.items())
        return f"{self.metric} {self.field} differs ({vals})"


def differences(rows: Sequence[ResultRow]) -> list[Difference]:
    """Conditions that differ among rows of one metric (a missing value counts as different)."""
    if not rows:
        return []
    out = []
    for f in COMPARABLE_FIELDS:
        vals = {r.run_id: getattr(r, f) for r in rows}
        if len(set(vals.values())) > 1:
            out.append(Difference(rows[0].metric, f, vals))
    return out


def _short(v: Any) -> str:
    if v is None:
        return "(missing)"
    s = str(v)
    return s[:12] if len(s) == 64 and all(c in "0123456789abcdef" for c in s) else s


# --- noise: what a row's std means --------------------------------------------------------------


@dataclass(frozen=True)
class Noise:
    """The noise estimate a row carries.

    Args:
        sigma: std of the row's value itself (for a mean of k seed repeats: spread / sqrt(k)).
        single: std of one run's value, which the other side of a comparison may borrow.
        label: how it was obtained, for the verdict.
    """

    sigma: float | None
    single: float | None
    label: str


def row_noise(row: ResultRow) -> Noise:
    """Read a row's std according to `extra["std_method"]`; a std without a method is not used."""
    method = row.extra.get("std_method")
    std = row.std
    if std is None or not math.isfinite(std):
        return Noise(None, None, "no std")
    if not method:
        return Noise(None, None, "std present but extra.std_method not recorded: not used")
    method = str(method)
    if method.startswith("seed-repeats"):
        k = _repeats(row, method)
        return Noise(std / math.sqrt(k), std, f"mean of {k} seed repeats, spread {std:.3g}/√{k}")
    return Noise(std, std, method)


def _repeats(row: ResultRow, method: str) -> int:
    k = row.extra.get("repeats")
    if k is None:
        tail = method.rsplit("-", 1)[-1]
        k = int(tail) if tail.isdigit() else None
    # A bool is an int to Python; an absurd count would overflow the sqrt.
    if not isinstance(k, int) or isinstance(k, bool) or not 2 <= k <= _MAX_REPEATS:
        raise GenevalError(f"{row.run_id}/{row.metric}: std_method {method!r} without a repeat count between 2 and {_MAX_REPEATS}")
    return k


def combined_sigma(a: ResultRow, b: ResultRow, names: tuple[str, str] = ("A", "B")) -> tuple[float | None, str]:
    """Std of the difference b - a, and how it was obtained.

    A side without its own noise estimate borrows the other side's single-run std: both sides
    are the same measurement at the same N, so their sampling noise is the same.
    """
    na, nb = row_noise(a), row_noise(b)
    sa, sb = na.sigma, nb.sigma
    la, lb = na.label, nb.label
    if sa is None and nb.single is not None:
        sa, la = nb.single, f"borrowed {nb.single:.3g} from the other side ({la})"
    if sb is None and na.single is not None:
        sb, lb = na.single, f"borrowed {na.single:.3g} from the other side ({lb})"
    if sa is None or sb is None:
        return None, f"no noise estimate ({la}; {lb})"
    return math.sqrt(sa * sa + sb * sb), f"σ_{names[0]} {sa:.3g} [{la}], σ_{names[1]} {sb:.3g} [{lb}]"


# --- A vs B -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delta:
    """One metric of B against A."""

    metric: str
    higher_is_better: bool | None
    a: ResultRow | None
    b: ResultRow | None
    delta: float | None
    rel: float | None
    change: str  # better / worse / same / within noise / not comparable / only in A / only in B
    sigma: float | None
    noise: str
    flags: tuple[Difference, ...] = ()


def compare_runs(a: ResultSet, b: ResultSet, z: float = 3.0, allow_incomparable: bool = False) -> list[Delta]:
    """Per-metric deltas of run B against run A with their direction.

    A change counts as better/worse only beyond z·σ of the difference when both rows carry a noise
    estimate; otherwise any nonzero change counts.

    Args:
        a: the reference run (one run).
        b: the run compared with it (one run).
        z: width of the noise band in standard deviations.
        allow_incomparable: show deltas of incomparable metrics flagged instead of refusing.
    """
    if z < 0:
        raise GenevalError(f"z must be ≥ 0, got {z}")
    for name, rs in (("A", a), ("B", b)):
        if len(rs.run_ids()) != 1:
            raise GenevalError(f"compare needs one run per side; {name} holds {len(rs.run_ids())}")
    out: list[Delta] = []
    problems: list[Difference] = []
    for m in metric_order([a, b]):
        ra = next((r for r in a.rows if r.metric == m), None)
        rb = next((r for r in b.rows if r.metric == m), None)
        hib = higher_is_better(m, [r for r in (ra, rb) if r is not None])
        if ra is None or rb is None:
            out.append(Delta(m, hib, ra, rb, None, None, "only in A" if rb is None else "only in B", None, ""))
            continue
        diffs = differences([ra, rb])
        problems += diffs
        delta = rb.value - ra.value
        rel = delta / abs(ra.value) if ra.value not in (0.0,) and math.isfinite(ra.value) else None
        sigma, noise = combined_sigma(ra, rb)
        if diffs:
            change = "not comparable"
        else:
            change = classify(delta, hib, (z * sigma) if sigma is not None else 0.0)
        out.append(Delta(m, hib, ra, rb, delta, rel, change, sigma, noise, tuple(diffs)))
    if problems and not allow_incomparable:
        raise GenevalError(incomparable_message(problems))
    return out


def classify(delta: float, higher_is_better: bool | None, band: float) -> str:
    """better / worse beyond `band`, same when equal, else within noise ('changed' without a direction)."""
    if math.isnan(delta):
        return "undefined"
    if delta == 0:
        return "same"
    if higher_is_better is None:
        return "changed (no direction)" if abs(delta) > band else "within noise"
    gain = delta if higher_is_better else -delta
    if abs(gain) <= band:
        return "within noise"
    return "better" if gain > 0 else "worse"


def incomparable_message(problems: Sequence[Difference]) -> str:
    """One line naming every condition that differs (metrics sharing a difference are grouped)."""
    groups: dict[tuple[str, str], list[str]] = {}
    for d in problems:
        vals = ", ".join(f"{run}={_short(v)}" for run, v in d.values.items())
        groups.setdefault((d.field, vals), []).append(d.metric)
    parts = [f"{field} differs for {', '.join(ms)} ({vals})" for (field, vals), ms in groups.items()]
    return "numbers are not comparable: " + "; ".join(parts) + "; pass --allow-incomparable to show them flagged"


def deltas_markdown(deltas: Sequence[Delta], z: float) -> str:
    """The A-vs-B deltas as a Markdown table with the noise method per metric."""
    from geneval.report.tables import arrow, fmt_cell

    a_id = next((d.a.run_id for d in deltas if d.a is not None), "A")
    b_id = next((d.b.run_id for d in deltas if d.b is not None), "B")
    lines = [
        f"# geneval compare: B `{b_id}` against A `{a_id}`",
        "",
        "| metric | better | A | B | Δ (B−A) | Δ% | change |",
        "|---|:-:|---:|---:|---:|---:|---|",
    ]
    for d in deltas:
        dd = "—" if d.delta is None else f"{d.delta:+.4g}"
        rel = "—" if d.rel is None else f"{100 * d.rel:+.2f}%"
        change = f"⚠ {d.change}" if d.flags else d.change
        lines.append(f"| {d.metric} | {arrow(d.higher_is_better)} | {fmt_cell(d.a)} | {fmt_cell(d.b)} | {dd} | {rel} | {change} |")
    lines += ["", f"better/worse: beyond z·σ of the difference (z={z:g}) when both sides carry a noise estimate, else any nonzero change.", ""]
    for d in deltas:
        if d.a is not None and d.b is not None:
            lines.append(f"- {d.metric}: {d.noise}" + (f"; z·σ = {z * d.sigma:.3g}" if d.sigma is not None else ""))
        for f in d.flags:
            lines.append(f"- ⚠ {f.describe()}")
    return "\n".join(lines) + "\n"


def deltas_json(deltas: Sequence[Delta], z: float) -> str:
    """The A-vs-B deltas as JSON."""
    import json

    return (
        json.dumps(
            {
                "z": z,
                "deltas": [
                    {
                        "metric": d.metric,
                        "higher_is_better": d.higher_is_better,
                        "a": None if d.a is None else d.a.to_dict(),
                        "b": None if d.b is None else d.b.to_dict(),
                        "delta": d.delta,
                        "rel": d.rel,
                        "change": d.change,
                        "sigma": d.sigma,
                        "noise": d.noise,
                        "differences": [f.describe() for f in d.flags],
                    }
                    for d in deltas
                ],
            },
            indent=2,
            default=str,
        )
        + "\n"
    )

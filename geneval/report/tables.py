"""Runs × metrics comparison tables (pandas pivot) rendered as Markdown, CSV or JSON.

The best value per metric is marked using the registry's direction, and only among numbers
measured under the same conditions (N, mode, feature weights, reference).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from geneval.errors import GenevalError
from geneval.report.compare import (
    COMPARABLE_FIELDS,
    Difference,
    differences,
    higher_is_better,
    incomparable_message,
    metric_order,
)
from geneval.results import ResultRow, ResultSet

# Per-run fields shown beside the numbers.
RUN_FIELDS: tuple[str, ...] = ("model", "sampler", "steps", "guidance", "convention", "seed")
FORMATS: tuple[str, ...] = ("md", "csv", "json", "html")
FLAG = "⚠"


@dataclass
class Comparison:
    """Everything a comparison table shows, computed once and rendered in any format."""

    runs: list[ResultSet]
    metrics: list[str]
    higher_is_better: dict[str, bool | None]
    cells: dict[tuple[str, str], ResultRow]
    best: dict[str, set[str]]
    flags: dict[str, list[Difference]] = field(default_factory=dict)

    @property
    def run_ids(self) -> list[str]:
        return [run.rows[0].run_id for run in self.runs]

    def cell(self, run_id: str, metric: str) -> ResultRow | None:
        return self.cells.get((run_id, metric))

    def run_info(self, run: ResultSet) -> dict[str, Any]:
        """Per-run fields (model, sampler, …); a field that varies across the run's rows says so."""
        info = {}
        for f in RUN_FIELDS:
            vals = list(dict.fromkeys(getattr(r, f) for r in run.rows))
            info[f] = vals[0] if len(vals) == 1 else "varies"
        return info

    def conditions(self, metric: str) -> dict[str, Any]:
        """The measurement conditions of a metric's column (the shared value, or 'varies')."""
        rows = [r for (run, m), r in self.cells.items() if m == metric]
        out = {}
        for f in COMPARABLE_FIELDS:
            vals = list(dict.fromkeys(getattr(r, f) for r in rows))
            out[f] = vals[0] if len(vals) == 1 else "varies"
        return out


def build_comparison(runs: Sequence[ResultSet], allow_incomparable: bool = False) -> Comparison:
    """Pivot runs × metrics, mark the best value per metric, check comparability.

    Args:
        runs: one ResultSet per run (see `load_runs`).
        allow_incomparable: flag incomparable metrics (no best marked) instead of refusing.
    """
    runs = list(runs)
    if not runs:
        raise GenevalError("no runs to report")
    metrics = metric_order(runs)
    cells = {(r.run_id, r.metric): r for run in runs for r in run.rows}
    directions: dict[str, bool] = {}
    best: dict[str, set[str]] = {}
    flags: dict[str, list[Difference]] = {}
    for m in metrics:
        rows = [r for r in (cells.get((run.rows[0].run_id, m)) for run in runs) if r is not None]
        directions[m] = higher_is_better(m, rows)
        diffs = differences(rows)
        if diffs:
            flags[m] = diffs
            continue
        finite = [r for r in rows if math.isfinite(r.value)]
        if len(finite) >= 2 and directions[m] is not None:
            pick = max if directions[m] else min
            top = pick(r.value for r in finite)
            best[m] = {r.run_id for r in finite if r.value == top}
    if flags and not allow_incomparable:
        raise GenevalError(incomparable_message([d for ds in flags.values() for d in ds]))
    return Comparison(runs, metrics, directions, cells, best, flags)


# --- number formatting --------------------------------------------------------------------------


def fmt_number(v: float | None, std: float | None = None) -> str:
    """A value rounded to what its std supports (2 significant digits of std), else 4 digits."""
    if v is None:
        return "—"
    if not math.isfinite(v):
        return str(v)
    if std is not None and math.isfinite(std) and std > 0:
        decimals = max(0, 1 - math.floor(math.log10(std)))
    else:
        decimals = 0 if v == 0 else max(0, 3 - math.floor(math.log10(abs(v))))
    decimals = min(decimals, 8)
    return f"{v:.{decimals}f}"


def fmt_cell(row: ResultRow | None) -> str:
    """'value ± std' (or 'value [lo, hi]' when the row carries a CI instead of a std)."""
    if row is None:
        return "—"
    if row.std is not None and math.isfinite(row.std):
        return f"{fmt_number(row.value, row.std)} ± {fmt_number(row.std, row.std)}"
    lo, hi = _number(row.extra.get("ci_low")), _number(row.extra.get("ci_high"))
    if lo is not None and hi is not None:
        return f"{fmt_number(row.value)} [{fmt_number(lo)}, {fmt_number(hi)}]"
    return fmt_number(row.value)


def _number(x: Any) -> float | None:
    """A JSON number as a float; None for anything else (bools, text, ints too large for a float)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        return float(x)
    except OverflowError:
        return None


def fmt_field(name: str, v: Any) -> str:
    """A provenance value for display: hashes shortened, None as a dash."""
    if v is None:
        return "—"
    if name.endswith("sha256") and isinstance(v, str) and len(v) > 12:
        return v[:12]
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def fmt_guidance(info: dict[str, Any]) -> str:
    g, conv = info.get("guidance"), info.get("convention")
    if g is None:
        return "—"
    return f"{fmt_field('guidance', g)} ({conv})" if conv else fmt_field("guidance", g)


def arrow(hib: bool | None) -> str:
    """↑ higher is better, ↓ lower is better, · no direction (a diagnostic)."""
    return "·" if hib is None else ("↑" if hib else "↓")


# --- renderers ----------------------------------------------------------------------------------


def to_frame(cmp: Comparison):
    """The pivot as a wide pandas DataFrame: one row per run, value and std columns per metric."""
    import pandas as pd

    recs = []
    for run in cmp.runs:
        rid = run.rows[0].run_id
        rec: dict[str, Any] = {"run_id": rid, **cmp.run_info(run)}
        for m in cmp.metrics:
            r = cmp.cell(rid, m)
            rec[m] = r.value if r is not None else None
            rec[f"{m}_std"] = r.std if r is not None else None
            rec[f"{m}_best"] = rid in cmp.best.get(m, ())
            if m in cmp.flags:
                rec[f"{m}_comparable"] = False
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def to_csv(cmp: Comparison) -> str:
    return to_frame(cmp).to_csv(index=False)


def to_json(cmp: Comparison) -> str:
    """Runs, metrics (direction, conditions, best, flags) and cells as a JSON document."""
    obj = {
        "runs": [
            {"run_id": run.rows[0].run_id, **cmp.run_info(run), "geneval_version": run.rows[0].geneval_version, "created_at": run.rows[0].created_at}
            for run in cmp.runs
        ],
        "metrics": [
            {
                "metric": m,
                "higher_is_better": cmp.higher_is_better[m],
                "conditions": cmp.conditions(m),
                "best": sorted(cmp.best.get(m, ())),
                "comparable": m not in cmp.flags,
                "differences": [d.describe() for d in cmp.flags.get(m, [])],
            }
            for m in cmp.metrics
        ],
        "cells": [r.to_dict() for r in cmp.cells.values()],
    }
    return json.dumps(obj, indent=2, default=str) + "\n"


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def to_markdown(cmp: Comparison, title: str = "geneval report") -> str:
    """A Markdown comparison table (best in bold), a conditions table and footnotes."""
    head = ["run", "model", "sampler", "steps", "guidance", "seed"]
    head += [f"{m} {arrow(cmp.higher_is_better[m])}" + (f" {FLAG}" if m in cmp.flags else "") for m in cmp.metrics]
    lines = [
        f"# {title}",
        "",
        f"{len(cmp.runs)} run(s), {len(cmp.metrics)} metric(s)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---"] * 6 + ["---:"] * len(cmp.metrics)) + "|",
    ]
    for run in cmp.runs:
        rid = run.rows[0].run_id
        info = cmp.run_info(run)
        cells = [
            rid,
            fmt_field("model", info["model"]),
            fmt_field("sampler", info["sampler"]),
            fmt_field("steps", info["steps"]),
            fmt_guidance(info),
            fmt_field("seed", info["seed"]),
        ]
        for m in cmp.metrics:
            text = fmt_cell(cmp.cell(rid, m))
            cells.append(f"**{text}**" if rid in cmp.best.get(m, ()) else text)
        lines.append("| " + " | ".join(_md_escape(c) for c in cells) + " |")
    lines += [
        "",
        "↑ higher is better, ↓ lower is better, · diagnostic without a direction; **bold** = best among comparable runs; "
        "± = std as recorded per row (method below).",
        "",
    ]
    lines += ["## Conditions", "", "| metric | N | mode | features | weights | reference | std method |", "|---|---:|---|---|---|---|---|"]
    for m in cmp.metrics:
        c = cmp.conditions(m)
        methods = sorted(
            {str(r.extra.get("std_method") or ("unrecorded" if r.std is not None else "—")) for (run, mm), r in cmp.cells.items() if mm == m}
        )
        lines.append(
            "| "
            + " | ".join(
                _md_escape(x)
                for x in [
                    m,
                    fmt_field("n", c["n"]),
                    fmt_field("mode", c["mode"]),
                    fmt_field("features", c["features"]),
                    fmt_field("weights_sha256", c["weights_sha256"]),
                    fmt_field("ref_sha256", c["ref_sha256"]),
                    ", ".join(methods),
                ]
            )
            + " |"
        )
    if cmp.flags:
        lines += ["", f"{FLAG} **Not comparable** (shown because of --allow-incomparable; no best marked):", ""]
        for diffs in cmp.flags.values():
            lines.append(f"- {FLAG} " + "; ".join(d.describe() for d in diffs))
    warnings = [(r.run_id, r.metric, w) for r in cmp.cells.values() for w in (r.extra.get("warnings") or [])]
    if warnings:
        lines += ["", "Warnings recorded with the numbers:", ""]
        lines += [f"- {rid} / {m}: {w}" for rid, m, w in warnings]
    return "\n".join(lines) + "\n"


def render(cmp: Comparison, fmt: str, title: str = "geneval report") -> str:
    """Render a comparison as md, csv, json or html.

    Args:
        cmp: a comparison from `build_comparison`.
        fmt: md, csv, json or html.
        title: heading of the md and html renderings.
    """
    if fmt == "md":
        return to_markdown(cmp, title)
    if fmt == "csv":
        return to_csv(cmp)
    if fmt == "json":
        return to_json(cmp)
    if fmt == "html":
        from geneval.report.html import to_html

        return to_html(cmp, title)
    raise GenevalError(f"unknown report format {fmt!r}; choose from {', '.join(FORMATS)}")

"""A self-contained HTML comparison page: inline CSS, no scripts, no external assets."""

from __future__ import annotations

import datetime as _dt
import json
from html import escape

from geneval.report.tables import (
    FLAG,
    Comparison,
    arrow,
    fmt_cell,
    fmt_field,
    fmt_guidance,
)

_CSS = """
:root { --ink:#1d2330; --muted:#5b6475; --line:#d9dee7; --best:#e3f4e6; --bestink:#11612a;
        --warn:#fff4d6; --warnink:#8a5a00; --head:#f4f6fa; }
* { box-sizing:border-box; }
body { font:15px/1.5 -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif;
       color:var(--ink); margin:0; background:#fff; }
main { max-width:1120px; margin:0 auto; padding:28px 32px 48px; }
h1 { font-size:24px; margin:0 0 4px; }
h2 { font-size:18px; margin:32px 0 10px; border-bottom:1px solid var(--line); padding-bottom:4px; }
h3 { font-size:15px; margin:0 0 6px; font-family:ui-monospace, "DejaVu Sans Mono", monospace; }
.sub { color:var(--muted); margin:0 0 18px; }
table { border-collapse:collapse; width:100%; font-variant-numeric:tabular-nums; }
th, td { padding:7px 10px; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
th { background:var(--head); font-weight:600; white-space:nowrap; }
td.num, th.num { text-align:right; white-space:nowrap; }
td.run { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:13px; white-space:nowrap; }
td.best { background:var(--best); color:var(--bestink); font-weight:700; }
th.flag, td.flag { background:var(--warn); color:var(--warnink); }
.dir { color:var(--muted); font-weight:400; }
.note { color:var(--muted); font-size:13px; margin:8px 0 0; }
.warnbox { background:var(--warn); color:var(--warnink); border:1px solid #f0d48a; border-radius:6px;
           padding:10px 14px; margin:16px 0; }
.warnbox ul { margin:4px 0 0 18px; padding:0; }
.cards { display:grid; grid-template-columns:repeat(auto-fill, minmax(330px, 1fr)); gap:14px; }
.card { border:1px solid var(--line); border-radius:8px; padding:12px 14px; }
.card table td, .card table th { padding:3px 6px; font-size:13px; border:none; background:none; }
.card table td { overflow-wrap:anywhere; }
.card table th { color:var(--muted); font-weight:500; width:42%; }
code, .mono { font-family:ui-monospace, "DejaVu Sans Mono", monospace; font-size:12.5px; }
details { margin-top:6px; font-size:13px; }
pre { background:var(--head); padding:8px; border-radius:6px; overflow-x:auto; font-size:12px; }
"""


def _td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{escape(text)}</td>' if cls else f"<td>{escape(text)}</td>"


def _main_table(cmp: Comparison) -> list[str]:
    out = ['<table class="cmp">', "<thead><tr>"]
    out += [f"<th>{h}</th>" for h in ("run", "model", "sampler", "steps", "guidance", "seed")]
    for m in cmp.metrics:
        flagged = m in cmp.flags
        cls = "num flag" if flagged else "num"
        mark = f" {FLAG}" if flagged else ""
        hib = cmp.higher_is_better[m]
        title = "no direction (diagnostic)" if hib is None else ("higher is better" if hib else "lower is better")
        out.append(f'<th class="{cls}" title="{title}">{escape(m)} <span class="dir">{arrow(cmp.higher_is_better[m])}</span>{mark}</th>')
    out.append("</tr></thead><tbody>")
    for run in cmp.runs:
        rid = run.rows[0].run_id
        info = cmp.run_info(run)
        tds = [
            _td(rid, "run"),
            _td(fmt_field("model", info["model"])),
            _td(fmt_field("sampler", info["sampler"])),
            _td(fmt_field("steps", info["steps"]), "num"),
            _td(fmt_guidance(info)),
            _td(fmt_field("seed", info["seed"]), "num"),
        ]
        for m in cmp.metrics:
            cls = "num"
            if rid in cmp.best.get(m, ()):
                cls += " best"
            if m in cmp.flags:
                cls += " flag"
            tds.append(_td(fmt_cell(cmp.cell(rid, m)), cls))
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table>")
    out.append(
        '<p class="note">↑ higher is better, ↓ lower is better, · diagnostic without a direction. Highlighted bold = best among '
        "comparable runs. ± is the std recorded with each number (method in the conditions table).</p>"
    )
    return out


def _conditions(cmp: Comparison) -> list[str]:
    out = ["<h2>Measurement conditions</h2>", "<table><thead><tr>"]
    out += [f"<th>{h}</th>" for h in ("metric", "N", "mode", "features", "weights", "reference", "std method")]
    out.append("</tr></thead><tbody>")
    for m in cmp.metrics:
        c = cmp.conditions(m)
        methods = sorted(
            {str(r.extra.get("std_method") or ("unrecorded" if r.std is not None else "—")) for (run, mm), r in cmp.cells.items() if mm == m}
        )
        cls = "flag" if m in cmp.flags else ""
        out.append(
            "<tr>"
            + _td(m, cls)
            + _td(fmt_field("n", c["n"]), "num")
            + _td(fmt_field("mode", c["mode"]))
            + _td(fmt_field("features", c["features"]))
            + _td(fmt_field("weights_sha256", c["weights_sha256"]), "mono")
            + _td(fmt_field("ref_sha256", c["ref_sha256"]), "mono")
            + _td(", ".join(methods))
            + "</tr>"
        )
    out.append("</tbody></table>")
    return out


def _flags(cmp: Comparison) -> list[str]:
    if not cmp.flags:
        return []
    out = [
        '<div class="warnbox"><strong>' + FLAG + " Not comparable</strong> — shown because of "
        "<code>--allow-incomparable</code>; no best value is marked for these metrics:<ul>"
    ]
    for diffs in cmp.flags.values():
        out += [f"<li>{escape(d.describe())}</li>" for d in diffs]
    out.append("</ul></div>")
    return out


_PROVENANCE = (
    "model",
    "sampler",
    "steps",
    "guidance",
    "convention",
    "seed",
    "n",
    "mode",
    "features",
    "weights_sha256",
    "ref_sha256",
    "geneval_version",
    "created_at",
    "wall_s",
)


def _display(name: str, v) -> str:
    """A provenance value for the cards: UTC timestamps and seconds spelled out."""
    if name == "created_at" and isinstance(v, str) and v.endswith("+00:00"):
        return v[: -len("+00:00")].replace("T", " ") + " UTC"
    if name == "wall_s" and isinstance(v, (int, float)):
        return f"{v:.1f} s"
    return fmt_field(name, v)


def _provenance(cmp: Comparison) -> list[str]:
    out = ["<h2>Provenance per run</h2>", '<div class="cards">']
    for run in cmp.runs:
        rid = run.rows[0].run_id
        out.append(f'<div class="card"><h3>{escape(rid)}</h3><table>')
        for f in _PROVENANCE:
            vals = list(dict.fromkeys(getattr(r, f) for r in run.rows))
            text = ", ".join(_display(f, v) for v in vals)
            if f == "wall_s" and len(vals) > 1:
                text = _display(f, sum(v or 0.0 for v in vals)) + " (sum over metrics)"
            mono = "mono" if f.endswith("sha256") or f == "created_at" else ""
            out.append(f"<tr><th>{escape(f)}</th>{_td(text, mono)}</tr>")
        out.append("</table>")
        warnings = [f"{r.metric}: {w}" for r in run.rows for w in (r.extra.get("warnings") or [])]
        if warnings:
            out.append('<div class="warnbox"><ul>' + "".join(f"<li>{escape(w)}</li>" for w in warnings) + "</ul></div>")
        extras = {r.metric: {k: v for k, v in r.extra.items() if k != "warnings"} for r in run.rows}
        out.append("<details><summary>per-metric details</summary><pre>" + escape(json.dumps(extras, indent=1, default=str)) + "</pre></details>")
        if run.config:
            out.append(
                "<details><summary>resolved configuration</summary><pre>" + escape(json.dumps(run.config, indent=1, default=str)) + "</pre></details>"
            )
        out.append("</div>")
    out.append("</div>")
    return out


def to_html(cmp: Comparison, title: str = "geneval report") -> str:
    """The comparison as one self-contained HTML page (table, conditions, flags, provenance).

    Args:
        cmp: a comparison from `build_comparison`.
        title: the page title.
    """
    from geneval import __version__

    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{len(cmp.runs)} runs × {len(cmp.metrics)} metrics · generated {now} by geneval {escape(__version__)}</p>',
        *_flags(cmp),
        *_main_table(cmp),
        *_conditions(cmp),
        *_provenance(cmp),
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)}</title>'
        f"<style>{_CSS}</style></head><body><main>\n" + "\n".join(body) + "\n</main></body></html>\n"
    )

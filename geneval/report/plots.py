"""Tradeoff plots for sweeps: each metric against the swept value, and parametric metric-vs-metric curves.

Every figure's title says what the numbers are comparable under: guidance convention, sampler,
steps (or the swept steps), N and the feature mode. Figures are written as PNG and SVG.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from geneval.errors import GenevalError
from geneval.results import ResultSet

# Parametric pairs drawn when both metrics are present: (x, y).
PARAMETRIC_PAIRS: tuple[tuple[str, str], ...] = (("precision", "fid"), ("is", "fid"), ("recall", "precision"))

_AXIS_NAMES = {"guidance": "guidance scale", "steps": "sampling steps"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # headless; never opens a window
    import matplotlib.pyplot as plt

    return plt


def _series(rs: ResultSet, param: str) -> tuple[list[float], dict[str, list[float]]]:
    """Swept values (in sweep order) and, per metric, the value at each of them."""
    points: dict[float, dict[str, float]] = {}
    order: list[float] = []
    for r in rs.rows:
        x = r.extra.get("sweep_value", getattr(r, param, None))
        if x is None:
            x = 0.0 if param == "guidance" else math.nan
        x = float(x)
        if x not in points:
            points[x] = {}
            order.append(x)
        points[x][r.metric] = r.value
    metrics: list[str] = []
    for x in order:
        metrics.extend(m for m in points[x] if m not in metrics)
    return order, {m: [points[x].get(m, math.nan) for x in order] for m in metrics}


def describe(rs: ResultSet, param: str) -> str:
    """One line with the provenance every plot must show (convention, sampler, steps, N, mode)."""

    def uniq(attr: str) -> str:
        vals = sorted({str(getattr(r, attr)) for r in rs.rows if getattr(r, attr) is not None})
        return "/".join(vals) if vals else "-"

    parts = []
    if param == "guidance":
        conv = uniq("convention")
        unguided = {"w": "w=0 unguided", "s": "s=1 unguided"}.get(conv, "")
        parts.append(f"CFG convention {conv}" + (f" ({unguided})" if unguided else ""))
        parts.append(f"sampler {uniq('sampler')}, {uniq('steps')} steps")
    else:
        parts.append(f"sampler {uniq('sampler')}, guidance {uniq('guidance')} ({uniq('convention')})")
    parts.append(f"N={uniq('n')}")
    parts.append(f"mode {uniq('mode')}")
    return ", ".join(parts)


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    from geneval.runner.output import atomic_open

    paths = []
    for ext in ("png", "svg"):
        p = out_dir / f"{stem}.{ext}"
        with atomic_open(p, "wb") as f:
            fig.savefig(f, format=ext, dpi=120, bbox_inches="tight")
        paths.append(p)
    return paths


def plot_sweep(rs: ResultSet, param: str, out_dir: str | os.PathLike, title: str | None = None) -> list[Path]:
    """Draw `metrics_vs_<param>` and the parametric tradeoff curves; return the written files.

    Args:
        rs: the combined results of a sweep (rows carry `extra["sweep_value"]` or the param field).
        param: the swept parameter, "guidance" or "steps".
        out_dir: folder for the PNG and SVG files.
        title: optional title prefix (e.g. the model name).
    """
    if not rs.rows:
        raise GenevalError("nothing to plot: the sweep produced no results")
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    xs, series = _series(rs, param)
    info = describe(rs, param)
    head = f"{title}: " if title else ""
    written: list[Path] = []

    names = list(series)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, m in zip(axes.flat, names):
        ax.plot(xs, series[m], marker="o")
        ax.set_xlabel(_AXIS_NAMES.get(param, param) + (f" ({_unique_convention(rs)})" if param == "guidance" else ""))
        ax.set_ylabel(m)
        ax.set_title(f"{m} ({_direction(rs, m)})")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"{head}metrics vs {_AXIS_NAMES.get(param, param)}\n{info}", fontsize=10)
    fig.tight_layout()
    written += _save(fig, out_dir, f"metrics_vs_{param}")
    plt.close(fig)

    for xm, ym in PARAMETRIC_PAIRS:
        if xm not in series or ym not in series:
            continue
        fig, ax = plt.subplots(figsize=(5.2, 4.2))
        ax.plot(series[xm], series[ym], marker="o")
        for x, a, b in zip(xs, series[xm], series[ym]):
            if math.isfinite(a) and math.isfinite(b):
                label = f"{'w' if _unique_convention(rs) == 'w' else 's'}={x:g}" if param == "guidance" else f"{x:g} steps"
                ax.annotate(label, (a, b), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(xm)
        ax.set_ylabel(ym)
        ax.grid(alpha=0.3)
        ax.set_title(f"{head}{ym} vs {xm} over {_AXIS_NAMES.get(param, param)}\n{info}", fontsize=9)
        fig.tight_layout()
        written += _save(fig, out_dir, f"{ym}_vs_{xm}")
        plt.close(fig)
    return written


def _direction(rs: ResultSet, metric: str) -> str:
    hib = {r.higher_is_better for r in rs.rows if r.metric == metric and r.higher_is_better is not None}
    return "higher is better" if hib == {True} else "lower is better" if hib == {False} else "direction unknown"


def _unique_convention(rs: ResultSet) -> str:
    convs = {r.convention for r in rs.rows if r.convention}
    return convs.pop() if len(convs) == 1 else "/".join(sorted(convs)) or "w"

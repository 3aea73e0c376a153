"""`geneval sweep`: one `run` per guidance scale (or step count), a combined result file and tradeoff plots.

Every point is preflighted before the first sample is drawn, the reference features are
prepared once and shared, and each point keeps its own report folder under
`<out_dir>/<sweep_id>/runs/`. The combined results (JSON/CSV/Markdown), the resolved sweep
config and the plots (PNG + SVG) go to `<out_dir>/<sweep_id>/`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from geneval.config import RunConfig, SweepConfig
from geneval.errors import GenevalError
from geneval.results import ResultSet, atomic_write_text, new_run_id, write_results
from geneval.runner.output import check_writable

log = logging.getLogger(__name__)


def parse_values(text: str, param: str) -> tuple[float, ...]:
    """Parse "0,0.5,1,2" (floats for guidance, positive ints for steps).

    Args:
        text: comma-separated values.
        param: "guidance" or "steps".
    """
    out: list[float] = []
    for tok in (t.strip() for t in text.split(",")):
        if not tok:
            continue
        try:
            v = float(tok)
        except ValueError:
            raise GenevalError(f"--{param}: {tok!r} is not a number") from None
        if not math.isfinite(v):
            raise GenevalError(f"--{param}: {tok!r} is not a {'positive integer' if param == 'steps' else 'finite number'}")
        if param == "steps":
            if v != int(v) or v < 1:
                raise GenevalError(f"--steps: {tok!r} is not a positive integer")
            v = int(v)
        out.append(v)
    if not out:
        raise GenevalError(f"--{param}: no values given")
    if len(set(out)) != len(out):
        raise GenevalError(f"--{param}: repeated values in {text!r}")
    return tuple(out)


def _point_config(sweep: SweepConfig, value: float, runs_dir: Path, sweep_id: str) -> RunConfig:
    label = f"{sweep.param}{value:g}"
    return sweep.base.replace(**{sweep.param: value}, run_id=f"{sweep_id}-{label}", out_dir=str(runs_dir))


def sweep(base: RunConfig, param: str, values: Sequence[float], sweep_id: str | None = None) -> ResultSet | None:
    """Run `base` once per value of `param` and draw the tradeoff plots.

    Args:
        base: the run configuration shared by every point.
        param: "guidance" or "steps".
        values: the swept values in order.
        sweep_id: report folder name under base.out_dir (default: a new id).
    """
    from geneval.pipeline import execute, preflight, prepare_ref, replan
    from geneval.report.plots import plot_sweep
    from geneval.runner import distributed

    # Under torchrun the sweep is one job: every rank samples its share of every point, rank 0 writes.
    dist = distributed.current()
    sweep_id = sweep_id or distributed.broadcast_object(dist, new_run_id("sweep"))
    cfg = SweepConfig(base=base, param=param, values=tuple(values), sweep_id=sweep_id)
    out = Path(base.out_dir) / cfg.sweep_id
    started = time.perf_counter()
    partial = Path(base.out_dir) / f".{cfg.sweep_id}.partial"
    runs_dir = partial / "runs"
    plans, error = [], None
    try:
        if out.exists():
            raise GenevalError(f"sweep folder {out} already exists: pick another --sweep-id")
        check_writable(base.out_dir, "output folder")  # named as given, not as the hidden partial folder inside it
        # Preflight every point before any sampling: a bad value fails now, not after hours.
        # The model, classifier, weights and reference load once, for the first point; the other
        # points reuse them and re-check only what the swept value changes.
        first = preflight(_point_config(cfg, cfg.values[0], runs_dir, cfg.sweep_id))
        plans = [first] + [replan(first, _point_config(cfg, v, runs_dir, cfg.sweep_id)) for v in cfg.values[1:]]
    except GenevalError as e:
        error = e
    distributed.agree(dist, error)  # one failing rank stops every rank, before any sampling
    try:
        ref_side = prepare_ref(plans[0])
        rows = []
        for v, plan in zip(cfg.values, plans):
            log.info("sweep %s: %s=%g", cfg.sweep_id, param, v)
            rs = execute(plan, ref_side=ref_side)
            if rs is None:  # ranks other than 0 sample and extract; rank 0 holds the results
                continue
            for r in rs.rows:
                r.extra["sweep_id"] = cfg.sweep_id
                r.extra["sweep_param"] = param
                r.extra["sweep_value"] = v
            rows.extend(rs.rows)
        if not dist.is_main:
            return None
        combined = ResultSet(rows, {"command": "sweep", **cfg.to_dict(), "wall_s": round(time.perf_counter() - started, 3)})
        combined.config["world_size"] = dist.world
        for name in ("results.json", "results.csv", "results.md"):
            write_results(combined, partial / name)
        atomic_write_text(partial / "config.json", json.dumps(combined.config, indent=2, default=str) + "\n")
        model = "demo-unet-fmnist" if base.model is None else Path(base.model).name
        plot_sweep(combined, param, partial, title=model)
        if out.exists():
            raise GenevalError(f"sweep folder {out} appeared while the sweep was going")
        os.replace(partial, out)
    except BaseException:
        if dist.is_main:
            shutil.rmtree(partial, ignore_errors=True)
        raise
    # The per-point report folders moved with the partial folder.
    for r in combined.rows:
        r.extra["report_dir"] = str(out / "runs" / r.run_id)
    combined.config["report_dir"] = str(out)
    return combined

"""`geneval report`, `geneval compare` and `geneval gate`: tables, deltas and CI regression gates."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer

from geneval.errors import GenevalError


def _emit(text: str, out: Path | None) -> None:
    """Print to stdout, or write atomically to `out` and say so on stderr."""
    from geneval.runner.output import atomic_write_text

    if out is None:
        sys.stdout.write(text)
    else:
        atomic_write_text(out, text)
        print(f"wrote {out}", file=sys.stderr)


def _check_out(out: Path | None) -> None:
    """An --out that cannot be written fails before anything is read (exit 2, nothing left behind)."""
    if out is not None:
        from geneval.runner.output import check_output_file

        check_output_file(out, "--out")


def _format(fmt: str | None, out: Path | None, allowed: tuple[str, ...]) -> str:
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        if suffix and suffix not in allowed + ("markdown", "htm"):  # never markdown silently written to r.pdf
            known = ", ".join(f".{a}" for a in allowed)
            raise GenevalError(f"--out {out}: unknown format .{suffix}; use {known} (or name the format with --format)")
        fmt = {"markdown": "md", "htm": "html"}.get(suffix, suffix) if suffix else "md"
    fmt = fmt.lower()
    if fmt not in allowed:
        raise GenevalError(f"unknown format {fmt!r}; choose from {', '.join(allowed)}")
    return fmt


def report(
    runs: list[Path] = typer.Argument(..., help="Results files (.json/.csv/.jsonl) or run directories holding results.json."),
    fmt: str | None = typer.Option(None, "--format", "-f", help="md, csv, json or html (default: from --out's suffix, else md)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here (atomically) instead of stdout."),
    allow_incomparable: bool = typer.Option(
        False, "--allow-incomparable", help="Show numbers measured under different N/mode/weights/reference, flagged, instead of refusing."
    ),
    title: str = typer.Option("geneval report", "--title", help="Heading of the md/html report."),
) -> None:
    """Compare runs × metrics in one table; the best value per metric is marked.

    Example: geneval report reports/run-a reports/run-b --format html --out report.html
    """
    from geneval.report.compare import load_runs
    from geneval.report.tables import FORMATS, build_comparison, render

    _check_out(out)
    fmt = _format(fmt, out, FORMATS)
    loaded = load_runs(runs)
    cmp = build_comparison(loaded, allow_incomparable=allow_incomparable)
    print(f"read {len(loaded)} run(s), {len(cmp.cells)} result row(s) from {len(runs)} input(s)", file=sys.stderr)
    _emit(render(cmp, fmt, title=title), out)


def compare(
    a: Path = typer.Argument(..., help="Run A (the reference): a results file or run directory."),
    b: Path = typer.Argument(..., help="Run B (compared with A)."),
    z: float = typer.Option(3.0, "--z", min=0.0, help="Changes within z·σ of the difference count as noise (when stds are recorded)."),
    fmt: str | None = typer.Option(None, "--format", "-f", help="md or json (default md)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Write here instead of stdout."),
    allow_incomparable: bool = typer.Option(False, "--allow-incomparable", help="Show deltas of incomparable metrics flagged instead of refusing."),
) -> None:
    """Per-metric deltas of B against A, with direction (better/worse) from the metric registry.

    Example: geneval compare reports/baseline-run reports/new-run
    """
    from geneval.report.compare import (
        compare_runs,
        deltas_json,
        deltas_markdown,
        load_runs,
    )

    _check_out(out)
    fmt = _format(fmt, out, ("md", "json"))
    ra, rb = load_runs([a]), load_runs([b])
    for name, rs, path in (("A", ra, a), ("B", rb, b)):
        if len(rs) != 1:
            raise GenevalError(f"{name} ({path}) holds {len(rs)} runs; compare needs one run per side")
    deltas = compare_runs(ra[0], rb[0], z=z, allow_incomparable=allow_incomparable)
    text = deltas_markdown(deltas, z) if fmt == "md" else deltas_json(deltas, z)
    _emit(text, out)


def gate(
    results: list[Path] = typer.Argument(..., help="Results files or run directories (several = seed repeats, averaged)."),
    baseline: Path = typer.Option(..., "--baseline", "-b", help="Baseline results JSON (written by --update-baseline)."),
    tolerance: str | None = typer.Option(
        None, "--tolerance", "-t", help="Per-metric tolerance: fid=0.5,is=2% (% = of the baseline value; * = every metric)."
    ),
    z: float = typer.Option(3.0, "--z", min=0.0, help="Noise band width in standard deviations."),
    update_baseline: bool = typer.Option(
        False, "--update-baseline", help="Write RESULTS (one run, or the mean ± spread of seed repeats) as the new baseline instead of gating."
    ),
) -> None:
    """Fail (exit 1) when a metric regresses beyond its noise band; exit 2 on unusable input.

    Example: geneval gate reports/pr-run/results.json --baseline ci/baseline.json --tolerance fid=0.5,is=2%
    """
    from geneval.report.compare import load_runs
    from geneval.report.gate import (
        make_baseline,
        parse_tolerances,
        run_gate,
        verdict_markdown,
    )
    from geneval.results import ResultSet, read_results, write_results
    from geneval.runner.output import check_output_file

    # Every argument is checked before anything is read or printed: an error is the only line.
    tols = parse_tolerances(tolerance)
    if update_baseline:
        if baseline.suffix.lower() != ".json":
            raise GenevalError(f"baseline must be a .json file, got {baseline}")
        check_output_file(baseline, "--baseline")
    elif not baseline.exists():
        raise GenevalError(f"baseline {baseline} not found; create it with: geneval gate RESULTS --baseline {baseline} --update-baseline")
    runs = load_runs(results)
    read = f"read {len(runs)} run(s) from {len(results)} input(s)"
    if update_baseline:
        base = make_baseline(runs)
        print(read, file=sys.stderr)
        write_results(base, baseline)
        method = base.config["baseline"]["method"]
        summary = ", ".join(f"{r.metric}={r.value:.6g}" + (f"±{r.std:.3g}" if r.std is not None else "") for r in base.rows)
        print(f"wrote baseline {baseline} from {len(runs)} run(s) ({method}): {summary}")
        return
    base_rs = read_results(baseline)
    res = ResultSet([r for run in runs for r in run.rows])
    verdict = run_gate(res, base_rs, tols, z=z, results_label=", ".join(map(str, results)), baseline_label=str(baseline))
    print(read, file=sys.stderr)
    md = verdict_markdown(verdict)
    sys.stdout.write(md)
    summary_path = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary_path:
        with open(summary_path, "a", encoding="utf-8") as f:
            f.write(md + "\n")
    raise typer.Exit(verdict.exit_code)


def register(app: typer.Typer) -> None:
    """Add report, compare and gate to the app."""
    app.command("report")(report)
    app.command("compare")(compare)
    app.command("gate")(gate)

"""Comparison reports (md/csv/json/html) and `geneval compare` over realistic runs."""

import io
import json
import re

import pandas as pd
import pytest

from geneval.cli import main
from geneval.errors import GenevalError
from geneval.report.compare import compare_runs, load_runs
from geneval.report.tables import build_comparison, fmt_cell, render
from geneval.results import ResultRow, ResultSet, write_results

W, R = "3e1f" + "5" * 60, "9a0b" + "6" * 60


def make_run(run_id, seed, sampler, steps, values, n=1000, mode="tf", ref=R):
    """One run as eval/run write it: provenance on every row, bootstrap/split stds with their method."""
    rows = []
    for m, (v, s, method) in values.items():
        rows.append(
            ResultRow(
                run_id,
                m,
                v,
                s,
                n,
                None,
                "demo-fmnist-unet",
                sampler,
                steps,
                2.0,
                "cfg-w",
                seed,
                mode,
                "inception-v3-tf",
                W,
                None if m == "is" else ref,
                wall_s=41.5,
                extra={"std_method": method} if method else {},
            )
        )
    return ResultSet(rows, {"sampler": {"name": sampler, "steps": steps}, "seed": seed})


RUNS = [
    make_run(
        "ddim-50",
        0,
        "ddim",
        50,
        {"fid": (24.3, 0.41, "bootstrap-200"), "is": (7.12, 0.09, "split-std"), "precision": (0.612, None, None), "recall": (0.481, None, None)},
    ),
    make_run(
        "heun-18",
        1,
        "heun",
        18,
        {"fid": (21.7, 0.38, "bootstrap-200"), "is": (7.31, 0.08, "split-std"), "precision": (0.655, None, None), "recall": (0.455, None, None)},
    ),
    make_run(
        "euler-10",
        2,
        "euler",
        10,
        {"fid": (31.9, 0.52, "bootstrap-200"), "is": (6.60, 0.11, "split-std"), "precision": (0.548, None, None), "recall": (0.502, None, None)},
    ),
]


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def _files(tmp_path, runs=RUNS):
    return [str(write_results(r, tmp_path / r.rows[0].run_id / "results.json").parent) for r in runs]


def test_best_follows_the_registry_direction():
    cmp = build_comparison(RUNS)
    assert cmp.best == {"fid": {"heun-18"}, "is": {"heun-18"}, "precision": {"heun-18"}, "recall": {"euler-10"}}
    assert cmp.higher_is_better == {"fid": False, "is": True, "precision": True, "recall": True}


def test_markdown_report_of_three_runs(tmp_path, capsys):
    code, out, err = _cli(["report", *_files(tmp_path), "--format", "md"], capsys)
    assert code == 0 and "read 3 run(s)" in err
    table = [ln for ln in out.splitlines() if ln.startswith("| ") and "run" not in ln.split("|")[1]]
    header = next(ln for ln in out.splitlines() if ln.startswith("| run |"))
    assert "fid ↓" in header and "is ↑" in header
    rows = {ln.split("|")[1].strip(): ln for ln in table if ln.split("|")[1].strip() in ("ddim-50", "heun-18", "euler-10")}
    assert len(rows) == 3
    assert "**21.70 ± 0.38**" in rows["heun-18"] and "**0.5020**" in rows["euler-10"]
    assert "24.30 ± 0.41" in rows["ddim-50"] and "**" not in rows["ddim-50"]
    assert "| fid | 1000 | tf | inception-v3-tf | 3e1f55555555 | 9a0b66666666 | bootstrap-200 |" in out


def test_html_report_is_self_contained_with_provenance(tmp_path, capsys):
    out_file = tmp_path / "report.html"
    code, _, err = _cli(["report", *_files(tmp_path), "--out", str(out_file)], capsys)
    assert code == 0 and "wrote" in err
    html = out_file.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<style>" in html
    assert not re.search(r"<script|<link|<img|src=|@import|url\(|https?://", html)
    assert html.count('class="card"') == 3 and "Provenance per run" in html
    best = re.findall(r'<td class="num best">([^<]+)</td>', html)
    assert "21.70 ± 0.38" in best and "0.5020" in best and "24.30 ± 0.41" not in best
    for run in ("ddim-50", "heun-18", "euler-10"):
        assert run in html
    assert W[:12] in html and R[:12] in html


def test_csv_and_json_formats(tmp_path, capsys):
    files = _files(tmp_path)
    code, out, _ = _cli(["report", *files, "--format", "csv"], capsys)
    df = pd.read_csv(io.StringIO(out))
    assert code == 0 and list(df["run_id"]) == ["ddim-50", "heun-18", "euler-10"]
    assert df.loc[df.fid_best, "run_id"].tolist() == ["heun-18"] and df["fid_std"].tolist() == [0.41, 0.38, 0.52]
    code, out, _ = _cli(["report", *files, "--format", "json"], capsys)
    obj = json.loads(out)
    assert {m["metric"]: m["best"] for m in obj["metrics"]}["recall"] == ["euler-10"]
    assert len(obj["cells"]) == 12


def test_incomparable_runs_are_refused_by_default(tmp_path, capsys):
    other = make_run("big-n", 3, "heun", 18, {"fid": (19.0, 0.2, "bootstrap-200")}, n=5000)
    code, _, err = _cli(["report", *_files(tmp_path, RUNS + [other])], capsys)
    last = err.strip().splitlines()[-1]
    assert code == 2 and last.startswith("error: numbers are not comparable: n differs for fid")
    assert "big-n=5000" in last and "--allow-incomparable" in last


def test_allow_incomparable_flags_visibly(tmp_path, capsys):
    other = make_run("clean-mode", 3, "heun", 18, {"fid": (19.0, 0.2, "bootstrap-200")}, mode="clean")
    files = _files(tmp_path, RUNS + [other])
    code, out, _ = _cli(["report", *files, "--allow-incomparable"], capsys)
    assert code == 0 and "fid ↓ ⚠" in out and "mode differs" in out
    fid_cells = [ln.split("|")[7] for ln in out.splitlines() if ln.startswith("| ") and "-" in ln.split("|")[1]]
    assert not any("**" in c for c in fid_cells)  # no best among incomparable numbers
    code, out, _ = _cli(["report", *files, "--allow-incomparable", "--format", "html"], capsys)
    assert "Not comparable" in out and 'th class="num flag"' in out


def test_missing_reference_hash_counts_as_different():
    a = make_run("a", 0, "heun", 18, {"fid": (20.0, None, None)})
    b = make_run("b", 1, "heun", 18, {"fid": (21.0, None, None)}, ref=None)
    with pytest.raises(GenevalError, match=r"ref_sha256 differs for fid \(a=9a0b66666666, b=\(missing\)\)"):
        build_comparison([a, b])


def test_input_errors(tmp_path):
    with pytest.raises(GenevalError, match="appears in both"):
        load_runs(_files(tmp_path)[:1] * 2)
    odd = ResultSet([ResultRow("r", "sharpness", 1.0, n=10)])
    with pytest.raises(GenevalError, match="not registered"):
        build_comparison([odd])
    with pytest.raises(GenevalError, match="unknown report format"):
        render(build_comparison(RUNS), "pdf")


def test_compare_deltas_and_direction(tmp_path, capsys):
    deltas = {d.metric: d for d in compare_runs(RUNS[0], RUNS[1])}
    assert deltas["fid"].delta == pytest.approx(-2.6) and deltas["fid"].change == "better"
    assert deltas["recall"].change == "worse"  # no std: any drop counts
    assert deltas["is"].change == "within noise"  # +0.19 < 3·√(0.09² + 0.08²) = 0.36
    files = _files(tmp_path)
    code, out, _ = _cli(["compare", files[0], files[2]], capsys)
    assert code == 0
    line = next(ln for ln in out.splitlines() if ln.startswith("| fid |"))
    assert "+7.6" in line and "worse" in line
    code, out, _ = _cli(["compare", files[0], files[2], "--format", "json"], capsys)
    assert {d["metric"]: d["change"] for d in json.loads(out)["deltas"]}["precision"] == "worse"


def test_cell_format():
    row = ResultRow("r", "kid", 0.001234, 0.000211)
    assert fmt_cell(row) == "0.00123 ± 0.00021"
    assert fmt_cell(ResultRow("r", "fid", float("inf"))) == "inf"
    assert fmt_cell(ResultRow("r", "fid", 1234.5678)) == "1235"
    assert fmt_cell(ResultRow("r", "lpips", 0.2, extra={"ci_low": 0.18, "ci_high": 0.22})) == "0.2000 [0.1800, 0.2200]"


def test_directionless_metric_is_shown_but_not_ranked():
    rows = lambda rid, v: ResultSet([ResultRow(rid, "latent_std", v, None, 100, mode="tf")])  # noqa: E731
    cmp = build_comparison([rows("a", 1.0), rows("b", 2.0)])
    assert cmp.higher_is_better == {"latent_std": None} and cmp.best == {}
    assert "latent_std ·" in render(cmp, "md")
    (d,) = compare_runs(rows("a", 1.0), rows("b", 2.0))
    assert d.change == "changed (no direction)"

"""Sweeps: value parsing, config resolution, tradeoff plots, and a tiny end-to-end guidance sweep."""

from __future__ import annotations


import pytest

from geneval.config import RunConfig, load_toml, resolve_run_config
from geneval.errors import GenevalError
from geneval.results import ResultRow, ResultSet
from geneval.sweep import parse_values


def test_parse_values():
    assert parse_values("0, 0.5,1,2,4", "guidance") == (0.0, 0.5, 1.0, 2.0, 4.0)
    assert parse_values("10,25,50", "steps") == (10, 25, 50)
    for bad, param in (("1,x", "guidance"), ("10,2.5", "steps"), ("0", "steps"), ("", "guidance"), ("1,1", "guidance")):
        with pytest.raises(GenevalError):
            parse_values(bad, param)


def test_config_resolution_order(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('metrics = ["fid", "pr"]\nn = 500\n[run]\nsteps = 10\nguidance = 1.5\nconvention = "s"\n')
    cfg = resolve_run_config(load_toml(toml), n=64, steps=None)
    assert (cfg.metrics, cfg.n, cfg.steps, cfg.guidance, cfg.convention) == ("fid,pr", 64, 10, 1.5, "s")
    assert cfg.guidance_w == pytest.approx(0.5)  # s = 1 + w
    with pytest.raises(GenevalError, match="unknown config file key"):
        resolve_run_config({"stepz": 3})
    with pytest.raises(GenevalError, match="invalid TOML"):
        bad = tmp_path / "bad.toml"
        bad.write_text("n = = 3")
        load_toml(bad)
    with pytest.raises(GenevalError, match="convention"):
        RunConfig(convention="x")
    with pytest.raises(GenevalError, match="classifier"):
        RunConfig(classifier_scale=1.0)


def _fake_sweep(conv: str = "w") -> ResultSet:
    rows = []
    for g, fid, p, r in ((0.0, 40.0, 0.5, 0.6), (1.0, 30.0, 0.7, 0.4), (2.0, 35.0, 0.8, 0.2)):
        for m, v in (("fid", fid), ("precision", p), ("recall", r)):
            rows.append(
                ResultRow(
                    run_id=f"s-{g}",
                    metric=m,
                    value=v,
                    n=1000,
                    higher_is_better=m != "fid",
                    sampler="ddim",
                    steps=20,
                    guidance=g,
                    convention=conv,
                    mode="tf",
                    extra={"sweep_value": g},
                )
            )
    return ResultSet(rows)


def test_plot_sweep_writes_png_and_svg_with_provenance(tmp_path):
    from geneval.report.plots import describe, plot_sweep

    files = plot_sweep(_fake_sweep(), "guidance", tmp_path, title="demo")
    names = sorted(p.name for p in files)
    assert names == sorted(
        [
            "metrics_vs_guidance.png",
            "metrics_vs_guidance.svg",
            "fid_vs_precision.png",
            "fid_vs_precision.svg",
            "precision_vs_recall.png",
            "precision_vs_recall.svg",
        ]
    )
    for p in files:
        assert p.stat().st_size > 1000
    svg = (tmp_path / "fid_vs_precision.svg").read_text()
    info = describe(_fake_sweep(), "guidance")
    for needle in ("CFG convention w", "w=0 unguided", "ddim", "20 steps", "N=1000", "mode tf"):
        assert needle in info
    assert "N=1000" in svg and "convention w" in svg  # the labels are in the figure itself
    assert not list(tmp_path.glob(".*tmp*"))
    with pytest.raises(GenevalError):
        plot_sweep(ResultSet([]), "guidance", tmp_path)


def test_plot_sweep_s_convention_label():
    from geneval.report.plots import describe

    assert "s=1 unguided" in describe(_fake_sweep("s"), "guidance")

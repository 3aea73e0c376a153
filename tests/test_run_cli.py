"""`geneval run` / `geneval sweep` on the command line: exit codes, one-line errors, stdout table, report folders."""

from __future__ import annotations

import json

import pytest

from geneval.cli import main
from test_pipeline import REF, make_tiny_checkpoint


def _cli(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("cli") / "tiny")


@pytest.mark.parametrize("case", ["bad_checkpoint", "missing_ref", "unknown_metric", "missing_model", "missing_model_no_ref"])
def test_run_preflight_errors_exit_2(case, ckpt, tmp_path, capsys, monkeypatch):
    import geneval.sampling.generate as gen

    monkeypatch.setattr(gen, "sample", lambda *a, **k: (_ for _ in ()).throw(AssertionError("sampled")))
    args = [
        "run",
        "--model",
        str(ckpt),
        "--metrics",
        "fid",
        "--ref",
        REF,
        "--n",
        "4",
        "--steps",
        "2",
        "--device",
        "cpu",
        "--out-dir",
        str(tmp_path / "rep"),
        "--run-id",
        "r",
        "--no-progress",
    ]
    if case == "bad_checkpoint":
        bad = tmp_path / "model.pt"
        bad.write_bytes(b"not a checkpoint")
        args[2], needle = str(bad), "does not load"
    elif case == "missing_ref":
        args[args.index("--ref") + 1], needle = str(tmp_path / "missing.npz"), "not found"
    elif case == "unknown_metric":
        args[args.index("--metrics") + 1], needle = "fid,nope", "unknown metric 'nope'"
    elif case == "missing_model":
        args[2], needle = str(tmp_path / "no-such-ckpt"), "not found"
    else:  # a mistyped --model is named first, not hidden behind the missing --ref
        i = args.index("--ref")
        del args[i : i + 2]
        args[2], needle = str(tmp_path / "no-such-ckpt"), "model checkpoint not found"
    code, out, err = _cli(args, capsys)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert lines[-1].startswith("error: ") and needle in lines[-1]
    assert not (tmp_path / "rep" / "r").exists()


def test_run_cli_prints_table_and_writes_report(ckpt, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('metrics = "fid"\nn = 4\nsteps = 2\nseed = 3\n')
    code, out, err = _cli(
        [
            "run",
            "--model",
            str(ckpt),
            "--config",
            str(toml),
            "--ref",
            REF,
            "--n",
            "5",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
            "--run-id",
            "cli",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    assert "| cli | fid |" in out and "| 5 |" in out  # --n overrides the TOML's n
    assert "biased" in out  # small-N FID warning is part of the printed result
    cfg = json.loads((tmp_path / "cli" / "config.json").read_text())
    assert (cfg["n"], cfg["steps"], cfg["seed"]) == (5, 2, 3)


def test_sweep_cli_guidance(ckpt, tmp_path, capsys):
    code, out, err = _cli(
        [
            "sweep",
            "--model",
            str(ckpt),
            "--guidance",
            "0,2",
            "--convention",
            "w",
            "--metrics",
            "fid",
            "--ref",
            REF,
            "--n",
            "4",
            "--steps",
            "2",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
            "--sweep-id",
            "sw",
            "--no-progress",
        ],
        capsys,
    )
    assert code == 0, err
    d = tmp_path / "sw"
    for name in ("results.json", "results.csv", "results.md", "config.json", "metrics_vs_guidance.png", "metrics_vs_guidance.svg"):
        assert (d / name).exists(), name
    assert sorted(p.name for p in (d / "runs").iterdir()) == ["sw-guidance0", "sw-guidance2"]
    rows = json.loads((d / "results.json").read_text())["results"]
    assert [(r["guidance"], r["extra"]["sweep_value"]) for r in rows] == [(0.0, 0.0), (2.0, 2.0)]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_sweep_cli_refuses_two_lists(ckpt, tmp_path, capsys):
    code, _, err = _cli(["sweep", "--model", str(ckpt), "--guidance", "0,1", "--steps", "2,4", "--ref", REF, "--out-dir", str(tmp_path)], capsys)
    assert code == 2 and "one parameter at a time" in err


@pytest.mark.slow
def test_demo_run_end_to_end(tmp_path, capsys):
    """`geneval run` with no --model: shipped demo model vs shipped Fashion-MNIST reference, offline."""
    code, out, err = _cli(["run", "--out-dir", str(tmp_path), "--run-id", "demo", "--no-progress"], capsys)
    assert code == 0, err
    assert "| demo | fid |" in out and "| demo | precision |" in out and "biased" in out
    assert (tmp_path / "demo" / "grid.png").exists()

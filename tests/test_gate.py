"""The CI gate: direction from the registry, the noise band, exit codes and baselines."""

import json
import math

import numpy as np
import pytest

from geneval.cli import main
from geneval.errors import GenevalError
from geneval.report.gate import combine_runs, make_baseline, parse_tolerances, run_gate
from geneval.results import ResultRow, ResultSet, read_results, write_results

W, R = "7" * 64, "c" * 64


def make_run(run_id="run-0", seed=0, n=2000, mode="tf", std=True, **values):
    """A realistic one-run ResultSet; values default to a plausible demo model."""
    vals = {"fid": 20.0, "is": 6.0, "precision": 0.60}
    vals.update(values)
    stds = {"fid": (0.3, "bootstrap-200"), "is": (0.1, "split-std"), "precision": (None, None)}
    rows = []
    for m, v in vals.items():
        s, meth = stds.get(m, (None, None)) if std else (None, None)
        rows.append(
            ResultRow(
                run_id,
                m,
                v,
                s,
                n,
                None,
                "demo-fmnist",
                "heun",
                18,
                1.0,
                "cfg-w",
                seed,
                mode,
                "inception-v3-tf",
                W,
                None if m == "is" else R,
                wall_s=4.0,
                extra={"std_method": meth} if meth else {},
            )
        )
    return ResultSet(rows, {"seed": seed})


def gate_cli(tmp_path, capsys, results, baseline, *args):
    rp = write_results(results, tmp_path / "results.json") if isinstance(results, ResultSet) else results
    bp = write_results(baseline, tmp_path / "baseline.json") if isinstance(baseline, ResultSet) else baseline
    with pytest.raises(SystemExit) as e:
        main(["gate", str(rp), "--baseline", str(bp), *args])
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_identical_results_pass(tmp_path, capsys):
    code, out, _ = gate_cli(tmp_path, capsys, make_run(), make_run())
    assert code == 0, out
    assert "PASS" in out and "band = max(tolerance" in out and "bootstrap-200" in out


@pytest.mark.parametrize(
    "change,code",
    [
        ({"fid": 22.0}, 1),  # FID up 2.0 > 3·√2·0.3 = 1.27: regression
        ({"fid": 20.9}, 0),  # FID up 0.9, inside the band
        ({"fid": 15.0}, 0),  # FID down: better
        ({"is": 7.0}, 0),  # IS up: better
        ({"is": 5.0}, 1),  # IS down 1.0 > 3·√2·0.1: regression
        ({"precision": 0.55}, 1),  # precision down, no std, no tolerance: any drop fails
        ({"precision": 0.65}, 0),  # precision up
    ],
)
def test_direction_comes_from_the_registry(tmp_path, capsys, change, code):
    got, out, _ = gate_cli(tmp_path, capsys, make_run(**change), make_run())
    assert got == code, out
    metric = next(iter(change))
    line = next(ln for ln in out.splitlines() if ln.startswith(f"| {metric} |"))
    assert ("FAIL" in line) == (code == 1)


def test_tolerances_absolute_and_relative(tmp_path, capsys):
    base = make_run(std=False)
    code, out, _ = gate_cli(tmp_path, capsys, make_run(std=False, fid=20.4, **{"is": 5.9}), base, "--tolerance", "fid=0.5,is=2%")
    assert code == 0, out  # FID +0.4 ≤ 0.5; IS −1.7% ≤ 2% of 6.0
    code, out, _ = gate_cli(tmp_path, capsys, make_run(std=False, **{"is": 5.85}), base, "--tolerance", "fid=0.5,is=2%")
    assert code == 1 and "is" in out.split("regressed:")[1].split(".")[0]  # −2.5% > 2%
    code, out, _ = gate_cli(tmp_path, capsys, make_run(std=False, precision=0.59), base, "--tolerance", "*=2%")
    assert code == 0, out


def test_parse_tolerances():
    t = parse_tolerances("fid=0.5, is=2%")
    assert t["fid"].absolute(30.0) == 0.5 and t["is"].absolute(-50.0) == pytest.approx(1.0)
    for bad in ("fid", "fid=-1", "fid=abc", "fid=1,fid=2", "fid=inf"):
        with pytest.raises(GenevalError):
            parse_tolerances(bad)


@pytest.mark.parametrize(
    "baseline_text,match",
    [
        (None, "not found"),
        ("{broken", "not valid JSON"),
        ('{"results": "nope"}', "no 'results' list"),
        ('{"results": []}', "no result rows"),
    ],
)
def test_missing_or_malformed_baseline_exits_2(tmp_path, capsys, baseline_text, match):
    bp = tmp_path / "baseline.json"
    if baseline_text is not None:
        bp.write_text(baseline_text)
    code, _, err = gate_cli(tmp_path, capsys, make_run(), bp)
    assert code == 2
    last = err.strip().splitlines()[-1]
    assert last.startswith("error:") and match in last


@pytest.mark.parametrize(
    "baseline,match",
    [
        (make_run(n=5000), "n: baseline 5000 vs results 2000"),
        (make_run(mode="clean"), "mode: baseline clean vs results tf"),
        (make_run(recall=0.5), "recall in the baseline are missing from the results"),
    ],
)
def test_incomparable_baseline_exits_2(tmp_path, capsys, baseline, match):
    code, _, err = gate_cli(tmp_path, capsys, make_run(), baseline)
    assert code == 2 and match in err, err


def test_other_usage_errors_exit_2(tmp_path, capsys):
    code, _, err = gate_cli(tmp_path, capsys, make_run(), make_run(), "--tolerance", "lpips=1")
    assert code == 2 and "lpips" in err
    code, _, err = gate_cli(tmp_path, capsys, make_run(), make_run(), "--tolerance", "fid:1")
    assert code == 2 and "bad tolerance" in err
    code, _, err = gate_cli(tmp_path, capsys, tmp_path / "nope.json", make_run())
    assert code == 2 and "not found" in err


def test_unregistered_metric_needs_a_stated_direction():
    row = lambda v, hib: ResultRow("r", "my_score", v, None, 10, hib, mode="tf")  # noqa: E731
    v = run_gate(ResultSet([row(2.0, True)]), ResultSet([row(1.0, True)]))
    assert v.passed and v.verdicts[0].change == "better"
    v = run_gate(ResultSet([row(0.5, True)]), ResultSet([row(1.0, True)]))
    assert not v.passed
    with pytest.raises(GenevalError, match="not registered"):
        run_gate(ResultSet([row(2.0, None)]), ResultSet([row(1.0, None)]))


def test_std_without_method_is_not_used_and_said_so():
    base = make_run(std=False)
    base["fid"].std = 5.0  # a std of unknown meaning must not widen the band
    v = run_gate(make_run(std=False, fid=20.5), base)
    fid = next(x for x in v.verdicts if x.metric == "fid")
    assert fid.band == 0 and not fid.passed and "not recorded" in fid.noise


def test_baseline_from_seed_repeats(tmp_path, capsys):
    runs = [make_run(f"s{s}", seed=s, std=False, fid=f) for s, f in zip((0, 1, 2), (20.0, 20.6, 19.7))]
    paths = [write_results(r, tmp_path / f"s{i}.json") for i, r in enumerate(runs)]
    bp = tmp_path / "ci" / "baseline.json"
    with pytest.raises(SystemExit) as e:
        main(["gate", *map(str, paths), "--baseline", str(bp), "--update-baseline"])
    assert e.value.code == 0
    assert "seed-repeats-3" in capsys.readouterr().out
    fid = read_results(bp)["fid"]
    assert fid.value == pytest.approx(np.mean([20.0, 20.6, 19.7]))
    assert fid.std == pytest.approx(np.std([20.0, 20.6, 19.7], ddof=1))
    assert fid.extra["seeds"] == [0, 1, 2] and fid.n == 2000

    # a single new run without its own std borrows the seed spread: σ = spread·√(1 + 1/3)
    v = run_gate(make_run(std=False, fid=21.0), read_results(bp), z=3)
    band = next(x for x in v.verdicts if x.metric == "fid").band
    assert band == pytest.approx(3 * fid.std * math.sqrt(1 + 1 / 3))

    # invalid repeats (different N) leave the existing baseline untouched
    before = bp.read_bytes()
    bad = write_results(make_run("s9", seed=9, n=500), tmp_path / "bad.json")
    with pytest.raises(SystemExit) as e:
        main(["gate", str(paths[0]), str(bad), "--baseline", str(bp), "--update-baseline"])
    assert e.value.code == 2 and bp.read_bytes() == before
    assert list(bp.parent.iterdir()) == [bp]  # no temp file left behind


def test_seed_repeats_need_distinct_seeds():
    with pytest.raises(GenevalError, match="distinct seeds"):
        combine_runs([make_run("a", seed=1), make_run("b", seed=1)])
    with pytest.raises(GenevalError, match="differ only in seed"):
        make_baseline(
            [make_run("a", seed=1), ResultSet([ResultRow(**{**r.__dict__, "steps": 50, "seed": 2, "run_id": "b"}) for r in make_run().rows])]
        )


def test_verdict_goes_to_github_step_summary(tmp_path, capsys, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    code, out, _ = gate_cli(tmp_path, capsys, make_run(fid=25.0), make_run())
    text = summary.read_text()
    assert code == 1 and text.startswith("earlier step\n") and "## geneval gate: FAIL" in text
    assert out.strip() in text


def test_noise_band_calibration_with_bootstrap_stds():
    """Simulated runs whose values scatter with their recorded bootstrap std.

    With z=3 the band is 3·√2·σ, so two draws of the same model fail (one-sided) with
    probability P(Z > 3) ≈ 0.13%; a model degraded by 8σ fails with probability ≈ 99.6%.
    """
    rng = np.random.default_rng(0)
    sigma, base_fid = 0.3, 20.0

    def draw(shift):
        return ResultSet(
            [
                ResultRow(
                    "r",
                    "fid",
                    base_fid + shift + sigma * rng.standard_normal(),
                    sigma,
                    2000,
                    mode="tf",
                    features="inception-v3-tf",
                    weights_sha256=W,
                    ref_sha256=R,
                    extra={"std_method": "bootstrap-200"},
                )
            ]
        )

    same = sum(not run_gate(draw(0.0), draw(0.0)).passed for _ in range(300))
    degraded = sum(not run_gate(draw(8 * sigma), draw(0.0)).passed for _ in range(300))
    assert same <= 3, same  # expected 0.4 of 300
    assert degraded >= 290, degraded  # expected 298.8 of 300


def test_baseline_json_written_by_update_is_a_results_file(tmp_path, capsys):
    rp = write_results(make_run(), tmp_path / "r.json")
    bp = tmp_path / "b.json"
    with pytest.raises(SystemExit):
        main(["gate", str(rp), "--baseline", str(bp), "--update-baseline"])
    obj = json.loads(bp.read_text())
    assert obj["config"]["baseline"]["runs"] == ["run-0"]
    code, _, _ = gate_cli(tmp_path, capsys, rp, bp)
    assert code == 0


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["gate"])
    assert e.value.code == 2 and "Missing argument" in capsys.readouterr().err


def test_recon_metrics_and_directionless_diagnostics():
    """psnr (registered by metrics/recon.py on import) gates upward; latent_std is never gated."""

    def recon(psnr, latent_std):
        common = dict(n=500, mode="tf", model="demo-ae")
        return ResultSet([ResultRow("ae", "psnr", psnr, None, **common), ResultRow("ae", "latent_std", latent_std, None, **common)])

    v = run_gate(recon(27.0, 2.0), recon(28.0, 1.0))
    assert [x.metric for x in v.verdicts] == ["psnr"] and not v.passed
    assert v.ungated == ["latent_std (diagnostic without a direction)"]
    assert run_gate(recon(29.0, 0.5), recon(28.0, 1.0)).passed

"""The execution core's contracts: one vocabulary, one preflight that refuses what cannot be computed,
option spellings that survive torchrun, outputs checked before work, and the drift items fixed."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from geneval.errors import GenevalError

ROOT = Path(__file__).resolve().parents[1]


def test_every_precision_the_help_offers_is_accepted_by_run_config():
    """`run --precision tf32` was offered by --help but rejected by RunConfig."""
    from geneval import vocab
    from geneval.config import RunConfig
    from geneval.features import extract

    for p in vocab.PRECISIONS:
        assert RunConfig(precision=p).precision == p
    assert extract.PRECISIONS is vocab.PRECISIONS
    with pytest.raises(GenevalError, match="unknown precision 'fp8': choose one of exact, tf32, fast"):
        RunConfig(precision="fp8")


def test_cli_help_is_derived_from_the_vocabularies():
    from typer.testing import CliRunner

    from geneval import vocab
    from geneval.cli import build_app

    runner = CliRunner()
    for cmd in (["run", "--help"], ["eval", "--help"], ["sample", "--help"]):
        out = " ".join(runner.invoke(build_app(), cmd, env={"COLUMNS": "2000", "TERM": "dumb"}).output.split())
        for kind in ("precision", "mode"):
            if cmd[0] != "sample":
                for name in getattr(vocab, {"precision": "PRECISIONS", "mode": "MODES"}[kind]):
                    assert f"{name} (" in out, (cmd, name)
        for conv in vocab.CONVENTIONS if cmd[0] != "eval" else ():
            assert f"{conv} (" in out


@pytest.mark.parametrize("metric", ["psnr", "lpips_div", "ssim"])
def test_run_refuses_pixel_metrics_in_preflight(metric, tmp_path, monkeypatch):
    """`run --metrics psnr` used to pass preflight and fail after all sampling."""
    from geneval.config import RunConfig
    from geneval.pipeline import preflight

    called = []
    monkeypatch.setattr("geneval.models.formats.load_model", lambda *a, **k: called.append(1))
    with pytest.raises(GenevalError, match=f"{metric} cannot be computed by `geneval run`"):
        preflight(RunConfig(metrics=f"fid,{metric}", n=4, out_dir=str(tmp_path)))
    assert not called and not any(tmp_path.iterdir())


def test_registry_is_the_compute_table():
    from geneval.metrics.compute import MetricOptions, feature_metrics
    from geneval.metrics.registry import get_metric

    names = feature_metrics()
    assert names[:8] == ["fid", "sfid", "is", "kid", "precision", "recall", "density", "coverage"]
    assert {"fid_inf", "vendi", "fid_per_class"} <= set(names)
    o = MetricOptions(pr_k=4, dc_k=7)
    assert get_metric("precision").smallest_n(o) == 5 and get_metric("coverage").smallest_n(o) == 8
    assert get_metric("fid").smallest_n(o) == 2
    assert get_metric("is").weights == ("inception-logits",) and get_metric("fid").weights == ("inception",)
    assert get_metric("psnr").compute is None


def test_metric_options_carry_the_run_device():
    """KID/PR/DC always computed on the CPU because MetricOptions.device was never set."""
    from geneval.config import RunConfig
    from geneval.pipeline import _metric_options

    assert _metric_options(RunConfig(device="cpu")).device == "cpu"
    assert _metric_options(RunConfig(device="cuda:3")).device == "cuda:3"


def test_no_module_imports_another_modules_private_names():
    """Private helpers (_name) are not imported across modules: shared pieces have public names."""
    offenders = []
    for path in (ROOT / "geneval").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("geneval"):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        offenders.append(f"{path.relative_to(ROOT)}: {node.module}.{alias.name}")
    assert not offenders, offenders


def test_one_preflight_for_features():
    """run's preflight reuses eval's checks instead of a second copy of them."""
    import inspect

    from geneval import pipeline

    src = inspect.getsource(pipeline.preflight)
    for shared in ("check_servable", "precomputed_usable", "check_sizes", "check_computable"):
        assert shared in src


def _geneval_options() -> dict[str, list[list[str]]]:
    """Every command's options, grouped by parameter: the spellings each option has."""
    import typer.main

    from geneval.cli import build_app

    group = typer.main.get_command(build_app())
    found: dict[str, list[list[str]]] = {}

    def walk(cmd, path):
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])
        for p in getattr(cmd, "params", []):
            opts = [o for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", []) if o.startswith("-")]
            if opts:
                found.setdefault(" ".join(path), []).append(opts)

    walk(group, [])
    return found


def test_every_option_has_a_spelling_that_survives_torchrun():
    """torchrun's parser claims abbreviations of its own options even after `-m geneval` (`--n`)."""
    from torch.distributed.run import get_args_parser

    parser = get_args_parser()
    checked = 0
    for cmd, params in _geneval_options().items():
        for spellings in params:
            ok = []
            for opt in spellings:
                argv = ["--standalone", "--nproc-per-node", "2", "-m", "geneval", *cmd.split(), opt, "x"]
                try:
                    args = parser.parse_args(argv)
                except SystemExit:
                    continue
                ok.append(args.training_script_args == [*cmd.split(), opt, "x"])
            assert any(ok), f"geneval {cmd}: none of {spellings} survives torchrun's parser"
            checked += 1
    assert checked > 50


def test_documented_torchrun_command_lines_parse_as_written():
    """The README's torchrun lines reach geneval unchanged."""
    import re
    import shlex

    from torch.distributed.run import get_args_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [m.group(0) for m in re.finditer(r"^torchrun [^\n]*-m geneval [^\n]*$", readme, re.M)]
    assert len(lines) >= 3
    for line in lines:
        argv = shlex.split(line.replace("\\\n", " "))[1:]
        args = parser_args = get_args_parser().parse_args(argv)
        assert args.module and parser_args.training_script == "geneval", line
        tail = argv[argv.index("geneval") + 1 :]
        assert args.training_script_args == tail, line


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "fashion-mnist:test[0:4]", "--ref", "fashion-mnist:test[4:8]", "--out", "{file}/x/results.json"],
        ["report", "{reports}", "--out", "{file}/report.md"],
        ["sample", "--model", "demo", "--num-samples", "2", "--out", "{file}/s.npz"],
    ],
)
def test_unwritable_outputs_fail_before_work(argv, tmp_path, monkeypatch, capsys):
    """An --out under a regular file is a one-line exit-2 error before anything is read or sampled."""
    from geneval.cli import main

    blocker = tmp_path / "plainfile"
    blocker.write_text("not a folder")
    reports = tmp_path / "reports"
    reports.mkdir()
    argv = [a.format(file=blocker, reports=reports) for a in argv]
    monkeypatch.setattr("geneval.evaluation.features_for_source", lambda *a, **k: pytest.fail("extraction ran"))
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: ") and "plainfile" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plainfile", "reports"]


def test_click_parameter_errors_are_one_line(capsys):
    from geneval.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--num-samples", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err


def test_sample_to_npz_streams_shards_and_resumes(tmp_path, one_thread):
    """sample_to_npz used to concatenate every shard in RAM; now rank 0 streams shards into the file."""
    from test_pipeline import make_tiny_checkpoint

    from geneval.models.formats import load_model
    from geneval.runner.output import NpzStreamWriter
    from geneval.sampling.generate import SamplingConfig, sample, sample_to_npz

    model = load_model(make_tiny_checkpoint(tmp_path / "m"), device="cpu")
    cfg = SamplingConfig(n=7, steps=2, seed=3)
    adds = []
    real_add = NpzStreamWriter.add

    def spy(self, images, labels=None):
        adds.append(len(images))
        return real_add(self, images, labels)

    import unittest.mock as mock

    with mock.patch.object(NpzStreamWriter, "add", spy):
        rec = sample_to_npz(model, tmp_path / "s.npz", cfg, batch_size=2, shard_size=3, keep_shards=True)
    assert adds == [3, 3, 1]  # one shard in memory at a time
    direct = np.concatenate([b.images for b in sample(model, 7, steps=2, seed=3, batch_size=7)])
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (7, 16, 16, 3)  # RGB, like run --save-samples
        np.testing.assert_array_equal(z["arr_0"][..., 0], direct[..., 0])
    assert rec["resumed_shards"] == 0 and rec["channels"].startswith("rgb")
    rec2 = sample_to_npz(model, tmp_path / "s.npz", cfg, batch_size=5, shard_size=3)
    assert rec2["resumed_shards"] == 3


def test_streamed_is_equals_adm_is_from_rows(rng):
    """IS (ADM chunks) from float64 chunk sums, batches in any order, equals the row computation."""
    from geneval.metrics.inception_score import ChunkedISAccumulator, inception_score

    logits = rng.normal(scale=3.0, size=(12_003, 20))
    want = inception_score(logits, "adm", chunk_size=5000)
    acc = ChunkedISAccumulator(20, len(logits), 5000)
    order = rng.permutation(len(logits))
    for part in np.array_split(order, 7):
        acc.update(logits[part], part)
    got = acc.score()
    assert got[0] == pytest.approx(want[0], rel=1e-12) and got[1] == pytest.approx(want[1], rel=1e-9, abs=1e-12)


def test_core_streams_is_without_rows(tmp_path, rng):
    import torch

    from geneval.metrics.compute import FeatureSet, MetricOptions, compute_metrics
    from geneval.runner.distributed import SINGLE
    from geneval.runner.execute import Chunk, Needs, stream_features
    from geneval.runner.shards import ShardStore

    logits = rng.normal(scale=2.0, size=(37, 11)).astype(np.float32)

    def produce(lo, hi):
        for b in range(lo, hi, 4):
            idx = np.arange(b, min(b + 4, hi))
            yield Chunk(np.zeros((len(idx), 2, 2, 3), np.uint8), None, idx)

    produce_pos = [0]

    def extract_tracking(images):
        out = {"logits": torch.from_numpy(logits[produce_pos[0] : produce_pos[0] + len(images)])}
        produce_pos[0] += len(images)
        return out

    store = ShardStore(tmp_path, {"k": "is"}, n=37, shard_size=10).open()
    out = stream_features(store, produce, extract_tracking, Needs(is_chunk=5), SINGLE)
    assert out.rows == {} and out.inception_score is not None
    o = MetricOptions(is_chunk_size=5)
    streamed = compute_metrics("is", FeatureSet(is_chunks=out.inception_score, n=37), options=o)[0]
    rows = compute_metrics("is", FeatureSet(logits=logits), options=o)[0]
    assert streamed.value == pytest.approx(rows.value, rel=1e-12) and streamed.n == 37


def test_new_metrics_through_the_compute_table(rng):
    """Per-class FID flags the degraded class; --ci puts intervals on FID/PR rows; Vendi and FID∞ run on pool3."""
    from geneval.metrics.compute import FeatureSet, MetricOptions, compute_metrics

    centres = rng.normal(scale=4.0, size=(3, 8))
    ly, lx = np.repeat(np.arange(3), 120), np.repeat(np.arange(3), 100)
    ref = centres[ly] + rng.normal(size=(360, 8))
    x = centres[lx] + rng.normal(size=(300, 8))
    x[lx == 1] += 3.0  # class 1 degraded
    vals = {
        v.name: v
        for v in compute_metrics(
            "fid,pr,vendi,fid_inf,fid_per_class",
            FeatureSet(pool3=x, labels=lx),
            FeatureSet(pool3=ref, labels=ly),
            MetricOptions(ci=0.9, ci_n_boot=30),
        )
    }
    pc = vals["fid_per_class"].extra
    assert pc["worst_class"] == 1 and pc["per_class"]["1"] > 5 * max(pc["per_class"]["0"], pc["per_class"]["2"])
    for m in ("fid", "precision", "recall"):
        e = vals[m].extra
        assert e["ci"] == 0.9 and e["ci_lo"] <= e["ci_hi"] and e["ci_n_boot"] == 30
    assert "ci_lo" not in vals["vendi"].extra
    assert 1.0 <= vals["vendi"].value <= 8.0
    assert set(vals["vendi"].extra["per_class"]) == {"0", "1", "2"}
    assert vals["fid_inf"].extra["n_points"] == 15
    with pytest.raises(GenevalError, match="class labels of the reference"):
        compute_metrics("fid_per_class", FeatureSet(pool3=x, labels=lx), FeatureSet(pool3=ref))


def test_failed_preflight_leaves_no_report_folder(tmp_path, monkeypatch, capsys):
    """`run` failing in preflight (bad checkpoint) leaves no empty reports/ behind."""
    from geneval.cli import main

    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00not a checkpoint" * 8)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(["run", "--model", str(bad), "--num-samples", "4", "--no-progress"])
    assert e.value.code == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.safetensors"]


def test_weights_folder_is_named_as_a_folder(tmp_path):
    from geneval.weights import resolve_inception

    with pytest.raises(GenevalError, match="is a folder; pass the weight file itself"):
        resolve_inception(tmp_path)


def test_sample_takes_zoo_names_like_run(tmp_path, capsys):
    from geneval.cli import main

    with pytest.raises(SystemExit) as e:
        main(
            ["sample", "--model", "demo", "--num-samples", "2", "--steps", "2", "--out", str(tmp_path / "s.npz"), "--no-progress", "--device", "cpu"]
        )
    assert e.value.code == 0, capsys.readouterr().err
    with np.load(tmp_path / "s.npz") as z:
        assert z["arr_0"].shape == (2, 32, 32, 3)

"""geneval.run: preflight before sampling, one-pass streaming, report folder contents, provenance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from geneval.errors import GenevalError

N = 12
REF = "fashion-mnist:test[0:16]"


def make_tiny_checkpoint(folder: Path, conditional: bool = True, seed: int = 0) -> Path:
    """A tiny randomly initialised class-conditional UNet (2 classes + null) in the native format."""
    from geneval.models.formats import save_native
    from geneval.models.unet import UNetConfig, UNetModel, init_random_
    from geneval.sampling.schedules import DiffusionConfig

    cfg = UNetConfig(
        image_size=16,
        in_channels=1,
        out_channels=1,
        model_channels=32,
        num_res_blocks=1,
        attention_resolutions=(),
        channel_mult=(1,),
        num_classes=3 if conditional else None,
    )
    net = init_random_(UNetModel(cfg), seed=seed, std=0.02)
    extra = {"null_class": 2, "class_names": ["a", "b"]} if conditional else {}
    save_native(net, cfg, folder, DiffusionConfig(num_timesteps=100, beta_schedule="cosine"), **extra)
    return folder


def make_tiny_classifier(folder: Path) -> Path:
    from geneval.models.classifier import ClassifierConfig, EncoderUNet
    from geneval.models.formats import save_native
    from geneval.models.unet import init_random_

    cfg = ClassifierConfig(
        image_size=16,
        in_channels=1,
        model_channels=32,
        out_channels=2,
        num_res_blocks=1,
        attention_resolutions=(),
        channel_mult=(1,),
        num_head_channels=32,
    )
    save_native(init_random_(EncoderUNet(cfg), seed=1, std=0.02), cfg, folder)
    return folder


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def tiny_run(tiny_ckpt, tmp_path_factory):
    import os

    os.environ.setdefault("GENEVAL_OFFLINE", "1")
    from geneval.pipeline import run

    out = tmp_path_factory.mktemp("reports")
    npz = out / "samples.npz"
    rs = run(
        model=str(tiny_ckpt),
        metrics="fid,pr",
        ref=REF,
        n=N,
        steps=3,
        guidance=1.0,
        convention="w",
        seed=5,
        batch_size=5,
        device="cpu",
        save_samples=str(npz),
        out_dir=str(out),
        run_id="tiny",
        progress=False,
    )
    return rs, out, npz


def test_run_writes_complete_report(tiny_run):
    rs, out, _ = tiny_run
    run_dir = out / "tiny"
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json", "grid.png", "results.csv", "results.json", "results.md"]
    assert [r.metric for r in rs.rows] == ["fid", "precision", "recall"]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no partial folder or temp files left
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["n"] == N and cfg["sampling"]["respacing"] == "ddim3" and cfg["metrics_expanded"] == ["fid", "precision", "recall"]
    from geneval.results import read_results

    back = read_results(run_dir / "results.json")
    assert [r.value for r in back.rows] == pytest.approx([r.value for r in rs.rows])


def test_rows_carry_provenance(tiny_run):
    rs, _, _ = tiny_run
    for r in rs.rows:
        assert (r.n, r.sampler, r.steps, r.guidance, r.convention, r.seed, r.mode) == (N, "ddim", 3, 1.0, "w", 5, "tf")
        assert len(r.weights_sha256) == 64 and len(r.ref_sha256) == 64 and r.wall_s > 0
        assert r.extra["quantisation"].startswith("adm-truncate")
        assert r.extra["guidance_w"] == 1.0 and len(r.extra["model_sha256"]) == 64
        assert r.extra["sample_s"] > 0 and r.extra["features_s"] > 0
    assert any("biased" in w for w in rs["fid"].extra["warnings"])  # N < 2048


def test_streamed_features_equal_evaluating_saved_samples(tiny_run):
    """No PNG round trip: scoring the side-written ADM npz gives the same numbers as the stream."""
    from geneval.evaluation import evaluate

    rs, _, npz = tiny_run
    with np.load(npz) as z:
        assert z["arr_0"].shape == (N, 16, 16, 3) and z["arr_0"].dtype == np.uint8
        assert z["arr_1"].shape == (N,) and set(z["arr_1"].tolist()) <= {0, 1}
        assert np.array_equal(z["arr_0"][..., 0], z["arr_0"][..., 2])  # gray repeated to RGB
    ev = evaluate(str(npz), REF, metrics="fid,pr", device="cpu", batch_size=5, progress=False, cache=False)
    for m in ("fid", "precision", "recall"):
        assert ev.value(m) == pytest.approx(rs.value(m), rel=1e-6, abs=1e-6)


def test_samples_match_the_sampler_alone(tiny_run, tiny_ckpt):
    """The pipeline draws exactly what geneval.sample draws for the same config (batch-size independent)."""
    from geneval.models.formats import load_model
    from geneval.sampling.generate import sample

    _, _, npz = tiny_run
    batches = list(sample(load_model(tiny_ckpt), N, steps=3, guidance=1.0, convention="w", seed=5, batch_size=N))
    with np.load(npz) as z:
        assert np.array_equal(z["arr_0"][..., :1], np.concatenate([b.images for b in batches]))


def _no_sampling(monkeypatch):
    import geneval.sampling.generate as gen

    def boom(*a, **k):
        raise AssertionError("sampling started before preflight finished")

    monkeypatch.setattr(gen, "sample", boom)


@pytest.mark.parametrize(
    "case", ["bad_checkpoint", "missing_ref", "unknown_metric", "cfg_on_unconditional", "bad_save_path", "guidance_without_convention"]
)
def test_preflight_fails_before_sampling(case, tmp_path, tiny_ckpt, monkeypatch):
    from geneval.pipeline import run

    _no_sampling(monkeypatch)
    kw = dict(model=str(tiny_ckpt), metrics="fid", ref=REF, n=4, steps=2, device="cpu", out_dir=str(tmp_path / "rep"), run_id="x", progress=False)
    if case == "bad_checkpoint":
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"\x00garbage" * 10)
        kw["model"], match = str(bad), "does not load"
    elif case == "missing_ref":
        kw["ref"], match = str(tmp_path / "nope.npz"), "not found"
    elif case == "unknown_metric":
        kw["metrics"], match = "fid,fidd", "unknown metric"
    elif case == "cfg_on_unconditional":
        kw["model"] = str(make_tiny_checkpoint(tmp_path / "uncond", conditional=False))
        kw["guidance"], kw["convention"], match = 2.0, "w", "class-conditional"
    elif case == "guidance_without_convention":  # never silently assumed (the README promises it)
        kw["guidance"], match = 2.0, "needs an explicit --convention"
    else:
        kw["save_samples"], match = str(tmp_path / "s.png"), "npz"
    with pytest.raises(GenevalError, match=match):
        run(**kw)
    assert not (tmp_path / "rep" / "x").exists()
    assert not [p for p in (tmp_path / "rep").glob(".*")] if (tmp_path / "rep").exists() else True


def test_classifier_guided_run(tmp_path, tiny_ckpt):
    from geneval.pipeline import run

    clf = make_tiny_classifier(tmp_path / "clf")
    rs = run(
        model=str(tiny_ckpt),
        metrics="fid",
        ref=REF,
        n=4,
        steps=2,
        classifier=str(clf),
        classifier_scale=2.0,
        device="cpu",
        out_dir=str(tmp_path),
        run_id="cg",
        progress=False,
    )
    r = rs["fid"]
    assert r.extra["classifier"] == str(clf) and r.extra["classifier_scale"] == 2.0
    assert np.isfinite(r.value) and (tmp_path / "cg" / "grid.png").exists()

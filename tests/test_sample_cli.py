"""`geneval sample`: output format, preflight errors (exit 2 before sampling), shard resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from geneval.cli import main
from geneval.models.classifier import ClassifierConfig, EncoderUNet
from geneval.models.formats import load_model, save_native
from geneval.models.unet import UNetConfig, UNetModel, init_random_
from geneval.sampling import generate
from geneval.sampling.generate import SamplingConfig, sample_to_npz
from geneval.sampling.schedules import DiffusionConfig


pytestmark = pytest.mark.usefixtures("one_thread")


def _unet(num_classes):
    return UNetConfig(
        image_size=8,
        model_channels=32,
        out_channels=6,
        num_res_blocks=1,
        attention_resolutions=(4,),
        channel_mult=(1, 1),
        num_classes=num_classes,
        num_heads=2,
    )


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    diff = DiffusionConfig(100, "linear", variance_type="learned_range")
    cond = _unet(4)
    save_native(init_random_(UNetModel(cond), seed=0, std=0.03), cond, d / "cond.safetensors", diff, null_class=3)
    unc = _unet(None)
    save_native(init_random_(UNetModel(unc), seed=1, std=0.03), unc, d / "uncond.safetensors", diff)
    torch.save(UNetModel(unc).state_dict(), d / "uncond_gd.pt")
    ccfg = ClassifierConfig(
        image_size=8, model_channels=32, out_channels=3, num_res_blocks=1, attention_resolutions=(4,), channel_mult=(1, 1), num_head_channels=32
    )
    save_native(init_random_(EncoderUNet(ccfg), seed=2), ccfg, d / "clf.safetensors")
    return d


def _run(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def test_sample_writes_adm_npz_and_record(ckpts, tmp_path, capsys):
    out = tmp_path / "s.npz"
    code, stdout, err = _run(
        [
            "sample",
            "--model",
            str(ckpts / "cond.safetensors"),
            "--n",
            "5",
            "--steps",
            "3",
            "--guidance",
            "1.5",
            "--convention",
            "s",
            "--batch-size",
            "2",
            "--shard-size",
            "2",
            "--no-progress",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    with np.load(out) as z:
        assert z["arr_0"].shape == (5, 8, 8, 3) and z["arr_0"].dtype == np.uint8
        assert z["arr_1"].shape == (5,) and set(z["arr_1"]) <= {0, 1, 2}  # real classes only, never the null slot
    rec = json.loads((tmp_path / "s.npz.json").read_text())
    assert rec["sampling"]["convention"] == "s" and rec["sampling"]["guidance"] == 1.5 and rec["sampling"]["cfg_s"] == 1.5
    assert rec["sampling"]["respacing"] == "ddim3" and rec["quantisation"].startswith("adm-truncate")
    assert rec["model"]["weights_sha256"] and rec["shards"] == 3
    assert json.loads(stdout)["n"] == 5
    assert not (tmp_path / "s.npz.shards").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "{d}/uncond_gd.pt", "--preset", "adm-64"], "does not match preset adm-64: missing keys"),
        (["--model", "{d}/cond.safetensors", "--classifier-scale", "1.0"], "needs a noisy classifier: pass --classifier"),
        (
            ["--model", "{d}/uncond.safetensors", "--guidance", "2", "--convention", "w"],
            "needs a class-conditional model; .* is unconditional \\(use --classifier",
        ),
        (["--model", "{d}/uncond.safetensors", "--guidance", "2"], "--guidance 2 needs an explicit --convention: w \\(Ho & Salimans"),
        (["--model", "{d}/cond.safetensors", "--steps", "0"], "steps must be >= 1, got 0"),
        (["--model", "{d}/cond.safetensors", "--sampler", "plms"], "unknown sampler 'plms'; known samplers: ddpm, ddim, dpmpp_2m, euler, heun"),
        (["--model", "{d}/cond.safetensors", "--convention", "cfg"], "unknown guidance convention 'cfg'"),
        (
            ["--model", "{d}/cond.safetensors", "--sampler", "heun", "--classifier", "{d}/clf.safetensors", "--classifier-scale", "1"],
            "does not support classifier guidance",
        ),
        (["--model", "{d}/clf.safetensors"], "is a classifier, not a diffusion UNet"),
    ],
)
def test_bad_input_exits_2_before_sampling(ckpts, tmp_path, capsys, monkeypatch, args, message):
    def no_sampling(*a, **k):
        raise AssertionError("sampling started despite bad input")

    monkeypatch.setattr(generate, "generate_range", no_sampling)
    argv = ["sample", *[a.format(d=ckpts) for a in args], "--n", "2", "--out", str(tmp_path / "x.npz")]
    code, stdout, err = _run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    import re

    assert re.search(message, err), err
    assert not list(tmp_path.iterdir())  # nothing partial left behind


def test_shard_resume_gives_identical_output(ckpts, tmp_path, monkeypatch):
    model = load_model(ckpts / "cond.safetensors")
    cfg = SamplingConfig(n=7, sampler="ddpm", steps=3, guidance=1.0, seed=3)
    whole = sample_to_npz(model, tmp_path / "a.npz", cfg, batch_size=3, shard_size=3)
    assert whole["resumed_shards"] == 0

    real = generate.generate_range
    calls = []

    def dies_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C in the middle of shard 2
        return real(*a, **k)

    monkeypatch.setattr(generate, "generate_range", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        sample_to_npz(model, tmp_path / "b.npz", cfg, batch_size=2, shard_size=3)
    assert not (tmp_path / "b.npz").exists()
    (store,) = [p for p in (tmp_path / "b.npz.shards").iterdir() if not p.name.startswith(".")]  # one folder per job key (+ .locks)
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["manifest.json", "shard_000000.npz"]
    monkeypatch.setattr(generate, "generate_range", real)
    resumed = sample_to_npz(model, tmp_path / "b.npz", cfg, batch_size=5, shard_size=3)
    assert resumed["resumed_shards"] == 1 and resumed["shards"] == 3
    with np.load(tmp_path / "a.npz") as a, np.load(tmp_path / "b.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["arr_1"], b["arr_1"])


def test_changed_config_never_resumes_from_stale_shards(ckpts, tmp_path, monkeypatch):
    """Shards live under a key of everything that shapes the samples: another seed gets its own store."""
    model = load_model(ckpts / "cond.safetensors")
    real = generate.generate_range
    monkeypatch.setattr(generate, "generate_range", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        sample_to_npz(model, tmp_path / "c.npz", SamplingConfig(n=4, steps=2, seed=0), shard_size=2)
    monkeypatch.setattr(generate, "generate_range", real)
    sample_to_npz(model, tmp_path / "c.npz", SamplingConfig(n=4, steps=2, seed=0), shard_size=2, keep_shards=True)
    rec = sample_to_npz(model, tmp_path / "d.npz", SamplingConfig(n=4, steps=2, seed=1), shard_size=2)
    assert rec["resumed_shards"] == 0
    other = sample_to_npz(model, tmp_path / "c.npz", SamplingConfig(n=4, steps=2, seed=1), shard_size=2)
    assert other["resumed_shards"] == 0  # the seed-0 shards next to it were not used
    with np.load(tmp_path / "c.npz") as c, np.load(tmp_path / "d.npz") as d:
        assert np.array_equal(c["arr_0"], d["arr_0"])


def test_quantisation_rules():
    x = torch.tensor([-1.0, -0.99, 0.0, 0.999, 1.0, 1.5]).reshape(1, 1, 1, 6).permute(0, 3, 1, 2)  # 6 channels, 1 px
    trunc = generate.quantize(x, "truncate").ravel().tolist()
    rnd = generate.quantize(x, "round").ravel().tolist()
    assert trunc == [0, 1, 127, 254, 255, 255]  # ((x+1)*127.5) truncated
    assert rnd == [0, 1, 128, 255, 255, 255]  # x*127.5+128 truncated (EDM): rounds to nearest


def test_sample_and_run_save_samples_write_the_same_rgb_batch(tmp_path, capsys, monkeypatch):
    """One rule for both commands: a grayscale model's arr_0 is N×H×W×3 (gray repeated), byte for byte the same."""
    from test_pipeline import make_tiny_checkpoint

    gray = make_tiny_checkpoint(tmp_path / "gray")  # in_channels=1, 16 px
    ref = tmp_path / "ref.npz"
    np.savez(ref, arr_0=np.random.default_rng(0).integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8))
    monkeypatch.chdir(tmp_path)
    common = ["--model", str(gray), "--n", "3", "--steps", "2", "--seed", "1", "--device", "cpu", "--progress", "never"]
    code, _, err = _run(["sample", *common, "--out", "s.npz"], capsys)
    assert code == 0, err
    code, _, err = _run(["run", *common, "--metrics", "kid", "--ref", str(ref), "--save-samples", "r.npz", "--out-dir", "rep"], capsys)
    assert code == 0, err
    with np.load("s.npz") as s, np.load("r.npz") as r:
        assert s["arr_0"].shape == r["arr_0"].shape == (3, 16, 16, 3) and s["arr_0"].dtype == np.uint8
        assert np.array_equal(s["arr_0"][..., 0], s["arr_0"][..., 2])  # gray, repeated
        assert np.array_equal(s["arr_0"], r["arr_0"]) and np.array_equal(s["arr_1"], r["arr_1"])
    assert json.loads((tmp_path / "s.npz.json").read_text())["channels"].startswith("rgb")

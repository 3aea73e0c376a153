"""Scale-out through torchrun's own launcher (gloo on CPU): 1, 2 and 3 ranks give the same samples and numbers.

Each test launches `python -m torch.distributed.run --standalone --nproc-per-node W -m geneval …`
exactly as the README documents it (torchrun is that module's console script), so the option
spellings are the ones that survive torchrun's own parser.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_pipeline import make_tiny_checkpoint

N = 12
REF = "fashion-mnist:test[0:16]"
METRICS = "fid,sfid,kid,pr,dc"
REL = 1e-9


def _env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(GENEVAL_CACHE=str(cache), GENEVAL_OFFLINE="1", OMP_NUM_THREADS="1", GENEVAL_DIST_TIMEOUT="120")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def launch(world: int, args: list[str], cache: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    """geneval ARGS under torchrun with `world` CPU processes (world 1: plain `python -m geneval`)."""
    if world == 1:
        cmd = [sys.executable, "-m", "geneval", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world), "-m", "geneval", *args]
    return subprocess.run(cmd, env=_env(cache), capture_output=True, text=True, timeout=timeout)


def _values(report: Path) -> dict[str, float]:
    rows = json.loads((report / "results.json").read_text())["results"]
    return {r["metric"]: r["value"] for r in rows}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("dist-ckpt") / "tiny")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, session_cache):
    # The converted Inception weights are shared; every job's shards go to a fresh cache per world size.
    return Path(session_cache)


def _run_args(ckpt: Path, out: Path, run_id: str, world: int) -> list[str]:
    return [
        "run",
        "--model",
        str(ckpt),
        "--metrics",
        METRICS,
        "--ref",
        REF,
        "--num-samples",
        str(N),
        "--steps",
        "3",
        "--guidance",
        "1",
        "--convention",
        "w",
        "--seed",
        "5",
        "--batch-size",
        "4",
        "--shard-size",
        "4",
        "--device",
        "cpu",
        "--save-samples",
        str(out / f"{run_id}.npz"),
        "--out-dir",
        str(out),
        "--run-id",
        run_id,
        "--no-progress",
    ]


@pytest.fixture(scope="module")
def runs(ckpt, tmp_path_factory, cache):
    """The same run at world sizes 1, 2 and 3."""
    out = tmp_path_factory.mktemp("dist-runs")
    for world in (1, 2, 3):
        p = launch(world, _run_args(ckpt, out, f"w{world}", world), cache)
        assert p.returncode == 0, p.stderr[-3000:]
    return out


def test_run_samples_bit_identical_across_world_sizes(runs):
    arrays = []
    for world in (1, 2, 3):
        with np.load(runs / f"w{world}.npz") as z:
            arrays.append((z["arr_0"], z["arr_1"]))
    assert arrays[0][0].shape == (N, 16, 16, 3)  # grayscale model, RGB arr_0 (one rule for every writer)
    for images, labels in arrays[1:]:
        np.testing.assert_array_equal(images, arrays[0][0])
        np.testing.assert_array_equal(labels, arrays[0][1])


def test_run_metrics_agree_across_world_sizes(runs):
    base = _values(runs / "w1")
    assert set(base) == {"fid", "sfid", "kid", "precision", "recall", "density", "coverage"}
    for world in (2, 3):
        got = _values(runs / f"w{world}")
        for metric, v in base.items():
            assert got[metric] == pytest.approx(v, rel=REL, abs=1e-12), (world, metric)
        rows = json.loads((runs / f"w{world}" / "results.json").read_text())["results"]
        assert all(r["extra"]["world_size"] == world for r in rows)


def test_eval_metrics_agree_across_world_sizes(runs, tmp_path, cache):
    values = []
    for world in (1, 2, 3):
        out = tmp_path / f"eval{world}.json"
        p = launch(
            world,
            [
                "eval",
                str(runs / "w1.npz"),
                "--ref",
                REF,
                "--metrics",
                METRICS,
                "--device",
                "cpu",
                "--seed",  # the run's seed: KID draws the same subsets as the run did
                "5",
                "--batch-size",
                "4",
                "--shard-size",
                "4",
                "--no-cache",
                "--quiet",
                "--out",
                str(out),
            ],
            cache,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        assert sum(line.startswith("metric ") for line in p.stdout.splitlines()) == 1  # only rank 0 prints the table
        rows = json.loads(out.read_text())["results"]
        values.append({r["metric"]: r["value"] for r in rows})
    # The run's streamed features and eval's re-read of the saved samples agree too.
    run_vals = _values(runs / "w1")
    for v in values[1:] + [run_vals]:
        for metric in values[0]:
            assert v[metric] == pytest.approx(values[0][metric], rel=1e-6, abs=1e-9), metric
    for v in values[1:]:
        for metric in values[0]:
            assert v[metric] == pytest.approx(values[0][metric], rel=REL, abs=1e-12), metric


def test_ref_build_identical_across_world_sizes(tmp_path, cache):
    outs = []
    for world in (1, 2):
        out = tmp_path / f"ref{world}.npz"
        p = launch(
            world,
            [
                "ref",
                "build",
                "fashion-mnist:test[0:10]",
                "--out",
                str(out),
                "--device",
                "cpu",
                "--batch-size",
                "4",
                "--shard-size",
                "3",
                "--no-cache",
                "--quiet",
            ],
            cache,
        )
        assert p.returncode == 0, p.stderr[-3000:]
        outs.append(np.load(out))
    a, b = outs
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    np.testing.assert_array_equal(a["geneval_pool3"], b["geneval_pool3"])
    for k in ("mu", "sigma", "mu_s", "sigma_s"):
        np.testing.assert_allclose(b[k], a[k], rtol=REL, atol=1e-12)


def test_preflight_failure_on_every_rank_is_one_line_exit_2(ckpt, tmp_path, cache):
    p = launch(
        2,
        [
            "run",
            "--model",
            str(ckpt),
            "--metrics",
            "fid,psnr",
            "--ref",
            REF,
            "--num-samples",
            "4",
            "--device",
            "cpu",
            "--out-dir",
            str(tmp_path),
            "--no-progress",
        ],
        cache,
        timeout=300,
    )
    assert p.returncode != 0
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "psnr" in errors[0], p.stderr[-2000:]
    assert not any(tmp_path.iterdir())  # nothing written


def test_killed_rank_ends_the_job_and_rerun_resumes_identically(ckpt, tmp_path, cache):
    """SIGKILL one rank mid-run: every process exits non-zero within a bound; rerunning (another world size too) resumes."""
    out = tmp_path / "k"
    args = _run_args(ckpt, out, "killed", 2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "geneval", *args]
    env = _env(cache) | {"GENEVAL_KEEP_SHARDS": ""}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    store_root = cache / "runs"
    deadline = time.time() + 300
    killed = False
    while time.time() < deadline and proc.poll() is None:
        shards = list(store_root.glob("*/shard_*.npz"))
        if shards:  # at least one shard finished: kill a worker (not the agent) now
            workers = subprocess.run(["pgrep", "-f", "-P", str(proc.pid), "geneval"], capture_output=True, text=True)
            pids = [int(x) for x in workers.stdout.split()]
            if pids:
                os.kill(pids[-1], signal.SIGKILL)
                killed = True
                break
        time.sleep(0.2)
    t0 = time.time()
    try:
        proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("the job did not end within 180 s of a rank being killed")
    assert killed, "no shard appeared before the job ended"
    assert proc.returncode != 0
    assert time.time() - t0 < 180
    assert not (out / "killed").exists()  # no report from a dead job
    # Rerun with another world size: finished shards are reused, the result is the uninterrupted one.
    p = launch(3, _run_args(ckpt, out, "killed", 3), cache)
    assert p.returncode == 0, p.stderr[-3000:]
    ref = launch(1, _run_args(ckpt, tmp_path / "fresh", "fresh", 1), cache)
    assert ref.returncode == 0, ref.stderr[-3000:]
    got, want = _values(out / "killed"), _values(tmp_path / "fresh" / "fresh")
    for metric in want:
        assert got[metric] == pytest.approx(want[metric], rel=REL, abs=1e-12), metric
    rows = json.loads((out / "killed" / "results.json").read_text())["results"]
    assert rows[0]["extra"]["resumed_shards"] >= 1
    with np.load(out / "killed.npz") as a, np.load(tmp_path / "fresh" / "fresh.npz") as b:
        np.testing.assert_array_equal(a["arr_0"], b["arr_0"])


def test_sweep_under_torchrun_is_one_job_with_the_same_numbers(ckpt, tmp_path, cache):
    """`torchrun … geneval sweep`: one sweep folder written by rank 0, every point's numbers equal to a
    one-process sweep (it used to run a whole sweep per rank, racing on one shard store)."""
    values = {}
    for world in (1, 2):
        out = tmp_path / f"w{world}"
        args = ["sweep", "--model", str(ckpt), "--steps", "2,3", "--metrics", "fid,kid", "--ref", REF, "--num-samples", str(N)]
        args += ["--seed", "5", "--batch-size", "4", "--device", "cpu", "--out-dir", str(out), "--sweep-id", "s", "--progress", "never"]
        p = launch(world, args, cache)
        assert p.returncode == 0, p.stderr[-3000:]
        assert sorted(q.name for q in out.iterdir()) == ["s"]  # one folder, no partial left
        rows = json.loads((out / "s" / "results.json").read_text())["results"]
        values[world] = {(r["extra"]["sweep_value"], r["metric"]): r["value"] for r in rows}
        assert json.loads((out / "s" / "config.json").read_text())["world_size"] == world
    assert values[1].keys() == values[2].keys() and len(values[1]) == 4
    for k, v in values[1].items():
        assert values[2][k] == pytest.approx(v, rel=REL, abs=1e-12), k

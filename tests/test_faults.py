"""Faults lose nothing: a disk that fills up, and SIGKILL, while eval / run / ref build / sample write.

Every fault point runs the real CLI on tiny inputs with small shards (tests/faultkit.py: a
stand-in feature network, processes forked from one that imported torch already), injects the
fault, then reruns the same command and checks: the result equals an uninterrupted run's
(metric values equal, saved arrays bit-identical), no temporary file is left, and every cache
entry / shard on disk loads whole. A full disk must end the command with one `error: disk full
while writing …` line, never a traceback.

A few seeded points per command run by default; `--runslow` runs the campaigns
(benchmarks/fault_campaign.py runs the full ones and records the figures in the README).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import faultkit as fk
from geneval.errors import GenevalError
from geneval.runner.output import (
    DiskFullError,
    NpzStreamWriter,
    atomic_savez,
    atomic_write_text,
    disk_full_error,
    locked_temp,
    temp_pattern,
)

# --------------------------------------------------------------------------- in-process: the writers


@contextlib.contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE's soft limit for this process inside the block (Python ignores SIGXFSZ: writes raise EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_writers_turn_a_full_disk_into_one_error_and_keep_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old\n")
    with file_size_limit(1000), pytest.raises(DiskFullError) as e:
        atomic_write_text(target, "x" * 5000)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"disk full while writing {target} (file too large")
    assert isinstance(e.value, GenevalError)  # the CLI's one-line, exit-2 path
    assert target.read_text() == "old\n"  # untouched
    npz = tmp_path / "a.npz"
    with file_size_limit(1000), pytest.raises(DiskFullError, match="a.npz"):
        atomic_savez(npz, {"x": np.zeros(1000)})
    writer = NpzStreamWriter(tmp_path / "s.npz", 4)
    with file_size_limit(2000), pytest.raises(DiskFullError, match="s.npz"):
        writer.add(np.zeros((4, 32, 32, 3), np.uint8))
    writer.discard()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file, no partial npz


def test_disk_full_errnos_are_recognised_through_exception_chains():
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        err = OSError(code, os.strerror(code), "/x/y")
        assert disk_full_error(err) is not None and "/x/y" in str(disk_full_error(err))
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise ValueError("I/O operation on closed file") from inner
    except ValueError as outer:
        assert "no space left on device" in str(disk_full_error(outer, "out.npz"))
    assert disk_full_error(OSError(errno.EACCES, "Permission denied")) is None


def test_a_killed_writers_temp_file_is_swept_a_live_writers_is_kept(tmp_path):
    target = tmp_path / "out.json"
    code = (
        "import sys, time; from geneval.runner.output import locked_temp; "
        f"fd, p = locked_temp({str(tmp_path)!r}, '.out.json.', '.tmp'); print(p, flush=True); time.sleep(60)"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    dead = Path(p.stdout.readline().strip())
    live_fd, live = locked_temp(tmp_path, ".out.json.", ".tmp")  # a writer of this very file, still going
    try:
        atomic_write_text(target, "a\n")
        assert dead.exists()  # its writer is alive: not swept
        p.kill()
        p.wait()
        atomic_write_text(target, "b\n")  # the next write of the same target sweeps the dead writer's file
        assert not dead.exists() and Path(live).exists()
        assert sorted(x.name for x in tmp_path.glob(temp_pattern(target))) == [Path(live).name]
    finally:
        os.close(live_fd)
        p.kill()
        p.wait()


def test_private_scratch_of_a_killed_job_is_swept_a_live_ones_kept(tmp_path):
    from geneval.runner.shards import job_scratch

    base = tmp_path / "scratch"
    (base / "pid1").mkdir(parents=True)
    (base / "pid1" / ".owner").touch()  # a killed job: nobody holds its lock
    (base / "pid1" / "shard_000000.npz").write_bytes(b"x")
    (base / "live").mkdir()
    held = os.open(base / "live" / ".owner", os.O_CREAT | os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_SH)  # a running job
    try:
        with job_scratch(base, "mine") as d:
            assert d == base / "mine" and d.is_dir()
            assert not (base / "pid1").exists() and (base / "live").exists()
            (d / "x").write_text("y")
        assert not (base / "mine").exists()  # the last process of a job removes its folder
        with pytest.raises(RuntimeError), job_scratch(base, "failing"):
            raise RuntimeError("boom")
        assert not (base / "failing").exists()  # also when the job fails
    finally:
        os.close(held)


def test_a_store_removed_halfway_is_swept_by_the_next_store(tmp_path):
    from geneval.runner.shards import ShardStore

    a = ShardStore(tmp_path, {"k": 1}, n=4, shard_size=2).open()
    a.save(0, {"indices": np.arange(2)})
    assert a.remove()
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # only the users-lock files stay
    (tmp_path / ".trash-abc-123").mkdir()  # what a remover killed mid-rmtree leaves
    (tmp_path / ".trash-abc-123" / "shard_000001.npz").write_bytes(b"x")
    ShardStore(tmp_path, {"k": 2}, n=4, shard_size=2).open()
    assert not (tmp_path / ".trash-abc-123").exists()


# --------------------------------------------------------------------------- the CLI under faults


class Kit:
    def __init__(self, root: Path, weights: list[Path], ckpt: Path, limiters: list[fk.Limiter]) -> None:
        self.root, self.weights, self.ckpt, self.limiters = root, weights, ckpt, limiters
        self._baselines: dict[str, tuple] = {}
        self._n = 0

    def ws(self, label: str) -> fk.Workspace:
        self._n += 1
        return fk.Workspace(self.root / f"{label.replace(' ', '-')}-{self._n}", self.weights, self.ckpt).populate()

    def limited_ws(self, limiter: fk.Limiter, label: str):
        self._n += 1
        return limiter.workspace(self.root / f"{label.replace(' ', '-')}-{limiter.kind}-{self._n}", self.weights, self.ckpt)

    def baseline(self, name: str) -> tuple[dict, float, float]:
        if name not in self._baselines:
            self._baselines[name] = fk.baseline(fk.COMMANDS[name], self.ws(f"baseline-{name}"))
        return self._baselines[name]


@pytest.fixture(scope="module")
def kit(tmp_path_factory, session_cache):
    mp = pytest.MonkeyPatch()
    mp.setenv("GENEVAL_CACHE", str(session_cache))
    mp.setenv("GENEVAL_OFFLINE", "1")
    try:
        weights = fk.inception_files()
    finally:
        mp.undo()
    root = tmp_path_factory.mktemp("faults")
    ckpt = fk.make_checkpoint(root / "ckpt")
    env = dict(os.environ, OMP_NUM_THREADS="1", GENEVAL_OFFLINE="1", GENEVAL_CACHE=str(session_cache))
    server = fk.ForkServer(env)
    fk.use_spawner(server)
    try:
        yield Kit(root, weights, ckpt, fk.limiters(root / "mount-probe"))
    finally:
        fk.use_spawner(None)
        server.close()


LIMITERS = ["tmpfs", "rlimit-fsize"]


def _limiter(kit: Kit, kind: str) -> fk.Limiter:
    for lim in kit.limiters:
        if lim.kind == kind:
            return lim
    pytest.skip(f"{kind} is not available here (mounting a tmpfs needs root)")


def _assert_ok(r: fk.PointReport, must_fail: bool = True) -> None:
    assert r.fault_hit or not must_fail, f"the fault did not hit: {r.to_dict()}"
    assert r.ok, json.dumps(r.to_dict(), indent=1)[:4000]


def _md_values(path: Path) -> dict[str, str]:
    lines = [line.strip().strip("|").split("|") for line in path.read_text().splitlines() if line.startswith("|")]
    head = [c.strip() for c in lines[0]]
    return {row[head.index("metric")].strip(): row[head.index("value")].strip() for row in lines[2:]}


@pytest.mark.parametrize("fmt", ["json", "csv", "md"])
@pytest.mark.parametrize("kind", LIMITERS)
def test_disk_full_writing_eval_results(kit, kind, fmt):
    """The results file is the only write (warm cache): one error line naming it, no temp file, then the same numbers."""
    limiter = _limiter(kit, kind)
    want = kit.baseline("eval")[0]["values"]
    cmd = fk.COMMANDS["eval"]
    with kit.limited_ws(limiter, f"eval-{fmt}") as ws:
        assert fk.launch(ws, cmd.argv(ws)).returncode == 0  # fills the feature cache
        argv = fk._eval_argv(ws, out=f"again.{fmt}")
        first = limiter.run(ws, argv, 0)
        assert first.returncode == 2 and not first.traceback, first.stderr
        assert len(first.error_lines) == 1 and first.error_lines[0].startswith(f"error: {fk.DISK_FULL_MARK} {ws.out / f'again.{fmt}'}")
        assert not (ws.out / f"again.{fmt}").exists()
        assert fk.leftovers(ws) == [] and fk.torn(ws) == []
        assert fk.launch(ws, argv).returncode == 0  # the limit lifted: the same command
        got = ws.out / f"again.{fmt}"
        if fmt == "json":
            assert fk._rows(got) == want
        elif fmt == "csv":
            import pandas as pd

            frame = pd.read_csv(got)
            assert dict(zip(frame["metric"], frame["value"])) == {m: v[0] for m, v in want.items()}
        else:
            assert _md_values(got) == {m: f"{v[0]:.6g}" for m, v in want.items()}
        assert fk.leftovers(ws) == [] and fk.torn(ws) == []


@pytest.mark.parametrize("kind", LIMITERS)
def test_disk_full_writing_feature_cache_entries(kit, kind):
    """Room for nothing, then (tmpfs) for part of the entries: finished shards stay whole and are reused."""
    limiter = _limiter(kit, kind)
    want = kit.baseline("eval")[0]
    cmd = fk.COMMANDS["eval"]
    budgets = [0, 100_000] if kind == "tmpfs" else [0, 1500]
    for budget in budgets:
        with kit.limited_ws(limiter, "cache") as ws:
            r = fk.disk_full_point(cmd, ws, limiter, budget, want)
            _assert_ok(r)
            assert "/cache/features/" in r.at_fault["error"]
            if budget:
                assert r.at_fault["shards"] > 0 or kind != "tmpfs"  # some entries finished before the disk filled


@pytest.mark.parametrize("kind", LIMITERS)
def test_disk_full_writing_run_samples_and_report(kit, kind):
    """A run whose shards are done (kept from a first run): --save-samples, then the report folder, hit a full disk."""
    limiter = _limiter(kit, kind)
    want = kit.baseline("run")[0]
    cmd = fk.COMMANDS["run"]
    with kit.limited_ws(limiter, "run-out") as ws:
        warm = cmd.argv(ws)
        warm[warm.index("--run-id") + 1] = "warm"
        warm[warm.index("--save-samples") + 1] = str(ws.out / "warm.npz")
        assert fk.launch(ws, warm, env={"GENEVAL_KEEP_SHARDS": "1"}).returncode == 0
        samples_size = (ws.out / "warm.npz").stat().st_size
        budgets = [0, samples_size + 3 * 4096] if kind == "tmpfs" else [samples_size // 2]
        errors = []
        for budget in budgets:
            first = limiter.run(ws, cmd.argv(ws), budget)
            assert first.returncode == 2 and not first.traceback and len(first.error_lines) == 1, first.stderr
            errors.append(first.error_lines[0])
            assert fk.leftovers(ws) == [] and fk.torn(ws) == []
            assert not (ws.out / "reports" / "r").exists()
        assert "samples.npz" in errors[0]
        if kind == "tmpfs":
            assert "/reports/" in errors[1]  # the samples fitted; the report folder did not
        assert fk.launch(ws, cmd.argv(ws)).returncode == 0
        assert cmd.result(ws) == want
        assert fk.leftovers(ws) == [] and fk.torn(ws) == []


@pytest.mark.parametrize("kind", LIMITERS)
def test_disk_full_writing_sample_shards_and_batch(kit, kind):
    limiter = _limiter(kit, kind)
    want = kit.baseline("sample")[0]
    budgets = [0, 32768] if kind == "tmpfs" else [8000]  # file-size limit: the shards fit, the final batch does not
    for budget in budgets:
        with kit.limited_ws(limiter, "sample") as ws:
            r = fk.disk_full_point(fk.COMMANDS["sample"], ws, limiter, budget, want)
            _assert_ok(r)
            if kind != "tmpfs":
                assert r.at_fault["error"].startswith(f"error: {fk.DISK_FULL_MARK} {ws.out / 's.npz'} ")


@pytest.mark.parametrize("kind", LIMITERS)
def test_disk_full_writing_reference_build(kit, kind):
    limiter = _limiter(kit, kind)
    want = kit.baseline("ref build")[0]
    budgets = [0, 120_000] if kind == "tmpfs" else [20_000]  # file-size limit: shards fit, the image spool does not
    for budget in budgets:
        with kit.limited_ws(limiter, "ref") as ws:
            r = fk.disk_full_point(fk.COMMANDS["ref build"], ws, limiter, budget, want)
            _assert_ok(r)
            if kind != "tmpfs":
                assert "the image spool in" in r.at_fault["error"]


KILL_POINTS = {"eval": 3, "ref build": 3, "run": 2, "sample": 2}  # run and sample take seconds each


@pytest.mark.parametrize("name", list(KILL_POINTS))
def test_sigkill_at_random_points_loses_nothing(kit, name):
    """A few seeded SIGKILL moments over the command's writing phase (timed from its first write); each rerun gives the baseline's result."""
    import random

    want, first, total = kit.baseline(name)
    rng = random.Random(f"faults-{name}")
    for _ in range(KILL_POINTS[name]):
        delay = rng.uniform(0.0, (total - first) * 1.1)  # after the first write
        r = fk.kill_point(fk.COMMANDS[name], kit.ws(f"kill-{name}"), delay, want)
        _assert_ok(r, must_fail=False)


# Moments that are hard to hit at random: a kill while exactly this temporary state exists.
KILL_WHILE = {
    "eval results temp": ("eval", lambda ws: any(ws.out.glob(".eval.json.*.tmp"))),
    "eval --no-cache scratch": ("eval --no-cache", lambda ws: any((ws.cache / "scratch").glob("*/*/shard_*.npz"))),
    "ref build image spool": ("ref build", lambda ws: any(ws.out.glob(".geneval-images.*"))),
    "run --save-samples temp": ("run", lambda ws: any(ws.out.glob(".samples.npz.*.tmp"))),
    "run report folder": ("run", lambda ws: (ws.out / "reports" / ".r.partial").exists()),
    "sample batch temp": ("sample", lambda ws: any(ws.out.glob(".s.npz.*.tmp"))),
}


@pytest.mark.parametrize("case", list(KILL_WHILE))
def test_sigkill_while_a_temporary_file_exists_leaves_none_after_the_rerun(kit, case):
    name, seen = KILL_WHILE[case]
    cmd = fk.COMMANDS[name]
    want = kit.baseline("eval" if name == "eval --no-cache" else name)[0]
    ws = kit.ws(case)
    killed = fk.kill_when(ws, cmd.argv(ws), seen)
    assert killed.returncode is None, f"finished before the moment came: {killed.stderr[-2000:]}"
    assert fk.torn(ws) == []
    r = fk.PointReport(name, f"kill while {case}", fault_hit=True)
    r = fk._finish(cmd, ws, r, want)
    _assert_ok(r)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eval", "eval --no-cache", "run", "ref build", "sample"])
def test_kill_campaign(kit, tmp_path, name):
    summary = fk.kill_campaign(fk.COMMANDS[name], 12, 1, tmp_path, kit.weights, kit.ckpt)
    assert summary["failed"] == 0, json.dumps(summary["failures"], indent=1)[:4000]


@pytest.mark.slow
@pytest.mark.parametrize("kind", LIMITERS)
@pytest.mark.parametrize("name", ["eval", "run", "ref build", "sample"])
def test_disk_full_campaign(kit, tmp_path, kind, name):
    summary = fk.disk_full_campaign(fk.COMMANDS[name], _limiter(kit, kind), 8, tmp_path, kit.weights, kit.ckpt)
    assert summary["failed"] == 0, json.dumps(summary["failures"], indent=1)[:4000]
    assert summary["fault_hit"] >= 4

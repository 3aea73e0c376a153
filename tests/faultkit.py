"""Fault injection for geneval's commands: SIGKILL at chosen moments, a disk that fills up.

Shared by tests/test_faults.py (a few seeded fault points per command) and
benchmarks/fault_campaign.py (many). Each fault point runs a real `geneval` CLI process in its
own workspace (a private cache holding only links to the converted Inception weights, and an
output folder), injects the fault, reruns the same command unhindered, and checks:

- the rerun gives the result of an uninterrupted baseline (metric values equal, arrays bit-identical);
- no temporary file, partial report folder, trash or scratch folder is left;
- every cache entry and shard on disk is complete and loads (no torn file).

The processes run a stand-in feature network (a fixed projection of 8×8-pooled pixels) instead of
TF-Inception, so a command takes seconds and most of its time is spent in geneval's own
sampling, sharding, merging and writing, which is what the faults are aimed at. Run this file as
a script (`python tests/faultkit.py eval …`) to get geneval's CLI with that stand-in.

Disk full is simulated with a small tmpfs (ENOSPC; needs root to mount) or, where mounting is not
allowed, with a file-size limit (RLIMIT_FSIZE: EFBIG, SIGXFSZ is ignored by Python).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAUNCHER = Path(__file__).resolve()
TESTS = LAUNCHER.parent
DISK_FULL_MARK = "disk full while writing"


# --------------------------------------------------------------------------- the stand-in network


def install_standin() -> None:
    """Replace TF-Inception inside this process by a fast deterministic stand-in (pool3 16-d, spatial 8-d)."""
    import numpy as np
    import torch

    import geneval.features.extract as ex

    rng = np.random.default_rng(0)
    proj = {"pool3": rng.normal(size=(64, 16)) / 8.0, "spatial": rng.normal(size=(64, 8)) / 8.0}

    def extract(self: Any, images: Any) -> dict[str, torch.Tensor]:
        x = ex.to_nchw_uint8(images).float().mean(dim=1, keepdim=True) / 255.0
        x = torch.nn.functional.adaptive_avg_pool2d(x, 8).reshape(x.shape[0], -1).double().numpy()
        return {k: torch.from_numpy(np.tanh(x @ w).astype(np.float32)) for k, w in proj.items()}

    ex._model_for = lambda *a, **k: None  # no 84 MB weight load
    ex.FeatureExtractor.extract = extract


# --------------------------------------------------------------------------- workspaces


def inception_files() -> list[Path]:
    """The converted Inception weight file and its record in geneval's cache (built once if missing)."""
    from geneval.weights import WEIGHTS, cache_dir, resolve_inception

    resolve_inception()
    trunk = WEIGHTS["tf-inception-trunk"].filename
    return [cache_dir() / trunk, cache_dir() / (trunk + ".json")]


def make_checkpoint(folder: Path) -> Path:
    """The tiny class-conditional UNet of the pipeline tests (16 px, random weights)."""
    if str(TESTS) not in sys.path:
        sys.path.insert(0, str(TESTS))
    from test_pipeline import make_tiny_checkpoint

    if not (folder / "config.json").exists():
        make_tiny_checkpoint(folder)
    return folder


@dataclass
class Workspace:
    """One fault point's world: root/cache (GENEVAL_CACHE) and root/out."""

    root: Path
    weights: list[Path]
    ckpt: Path

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def populate(self) -> Workspace:
        for d in (self.cache / "features", self.cache / "runs", self.out):  # as in a cache in use
            d.mkdir(parents=True, exist_ok=True)
        weights, record = self.weights
        link = self.cache / weights.name
        if not link.exists():
            link.symlink_to(weights)
        if not (self.cache / record.name).exists():
            shutil.copyfile(record, self.cache / record.name)
        return self

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        for k in ("TORCHELASTIC_RUN_ID", "RANK", "WORLD_SIZE", "LOCAL_RANK", "GENEVAL_KEEP_SHARDS", "CUDA_VISIBLE_DEVICES"):
            env.pop(k, None)
        env.update(GENEVAL_CACHE=str(self.cache), GENEVAL_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
        env["CUDA_VISIBLE_DEVICES"] = ""
        return env


# --------------------------------------------------------------------------- commands


def _hash_npz(path: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        return {k: hashlib.sha256(z[k].tobytes() + str(z[k].dtype).encode() + str(z[k].shape).encode()).hexdigest() for k in z.files if k not in skip}


def _rows(path: Path) -> dict[str, list[Any]]:
    rows = json.loads(path.read_text())["results"]
    return {r["metric"]: [r["value"], r.get("std"), r.get("n")] for r in rows}


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass(frozen=True)
class Command:
    """A geneval command line on tiny inputs with many write points, and how to read its result."""

    name: str
    argv: Callable[[Workspace], list[str]]
    result: Callable[[Workspace], dict[str, Any]]
    done: Callable[[Workspace], bool]  # the result is fully in place (a rerun would refuse / is not needed)
    rerun_refuses_when_done: bool = False


def _eval_argv(ws: Workspace, out: str = "eval.json") -> list[str]:
    return [
        "eval",
        "fashion-mnist:test[0:24]",
        "--ref",
        "fashion-mnist:test[100:124]",
        "--metrics",
        "fid,sfid,kid,pr",
        "--kid-subsets",
        "5",
        "--kid-subset-size",
        "8",
        "--batch-size",
        "2",
        "--shard-size",
        "2",
        "--device",
        "cpu",
        "--seed",
        "3",
        "--quiet",
        "--out",
        str(ws.out / out),
    ]


def _eval_result(ws: Workspace, out: str = "eval.json") -> dict[str, Any]:
    return {"values": _rows(ws.out / out), "read": json.loads((ws.out / out).read_text())["config"]["samples_report"]["read"]}


def _run_argv(ws: Workspace) -> list[str]:
    return [
        "run",
        "--model",
        str(ws.ckpt),
        "--metrics",
        "fid,kid,pr",
        "--ref",
        "fashion-mnist:test[0:16]",
        "--num-samples",
        "24",
        "--steps",
        "3",
        "--guidance",
        "1",
        "--convention",
        "w",
        "--seed",
        "5",
        "--batch-size",
        "2",
        "--shard-size",
        "2",
        "--device",
        "cpu",
        "--save-samples",
        str(ws.out / "samples.npz"),
        "--out-dir",
        str(ws.out / "reports"),
        "--run-id",
        "r",
        "--progress",
        "never",
    ]


def _run_result(ws: Workspace) -> dict[str, Any]:
    report = ws.out / "reports" / "r"
    return {
        "values": _rows(report / "results.json"),
        "files": sorted(p.name for p in report.iterdir()),
        "grid": _file_sha(report / "grid.png"),
        "samples": _hash_npz(ws.out / "samples.npz"),
    }


def _ref_argv(ws: Workspace) -> list[str]:
    return [
        "ref",
        "build",
        "fashion-mnist:test[0:24]",
        "--out",
        str(ws.out / "ref.npz"),
        "--batch-size",
        "2",
        "--shard-size",
        "2",
        "--device",
        "cpu",
        "--quiet",
    ]


def _ref_result(ws: Workspace) -> dict[str, Any]:
    import numpy as np

    with np.load(ws.out / "ref.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["geneval_meta"]))
    for k in ("created_at", "wall_s"):
        meta.pop(k, None)
    return {"arrays": _hash_npz(ws.out / "ref.npz", skip=("geneval_meta",)), "meta": meta}


def _sample_argv(ws: Workspace) -> list[str]:
    return [
        "sample",
        "--model",
        str(ws.ckpt),
        "--num-samples",
        "24",
        "--steps",
        "3",
        "--seed",
        "5",
        "--batch-size",
        "2",
        "--shard-size",
        "2",
        "--device",
        "cpu",
        "--progress",
        "never",
        "--out",
        str(ws.out / "s.npz"),
    ]


def _sample_result(ws: Workspace) -> dict[str, Any]:
    record = json.loads((ws.out / "s.npz.json").read_text())
    for k in ("wall_s", "resumed_shards"):
        record.pop(k, None)
    return {"arrays": _hash_npz(ws.out / "s.npz"), "record": record}


COMMANDS: dict[str, Command] = {
    "eval": Command("eval", _eval_argv, _eval_result, lambda ws: (ws.out / "eval.json").exists()),
    "eval --no-cache": Command(
        "eval --no-cache", lambda ws: [*_eval_argv(ws), "--no-cache"], _eval_result, lambda ws: (ws.out / "eval.json").exists()
    ),
    "run": Command("run", _run_argv, _run_result, lambda ws: (ws.out / "reports" / "r").exists(), rerun_refuses_when_done=True),
    "ref build": Command("ref build", _ref_argv, _ref_result, lambda ws: (ws.out / "ref.npz").exists()),
    "sample": Command("sample", _sample_argv, _sample_result, lambda ws: (ws.out / "s.npz.json").exists()),
}


# --------------------------------------------------------------------------- running


@dataclass
class Outcome:
    returncode: int | None  # None: killed
    stderr: str
    seconds: float

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr


def _fsize_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead


class Spawner:
    """Starts geneval CLI processes: each one a fresh `python tests/faultkit.py ARGV` (slow start: torch's import).

    stderr comes back through a pipe (a file-size limit would cut a file short).
    """

    def __init__(self) -> None:
        self._procs: dict[int, tuple[subprocess.Popen, Path]] = {}

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, stderr: Path, fsize: int | None) -> int:
        def pre() -> None:
            os.setsid()  # its own process group: the kill reaches it and nothing else
            if fsize is not None:
                _fsize_limit(fsize)

        p = subprocess.Popen(
            [sys.executable, str(LAUNCHER), *argv], env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pre
        )
        self._procs[p.pid] = (p, stderr)
        return p.pid

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """Exit status (negative: killed by that signal), or None when still running after `timeout` seconds."""
        p, stderr = self._procs[pid]
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        stderr.write_bytes(err or b"")
        return p.returncode

    def kill(self, pid: int) -> None:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def close(self) -> None:
        pass


class ForkServer(Spawner):
    """Starts each command as a fork of one process that has imported torch and geneval already.

    A command's process is still its own OS process (its own session, files, memory) running
    geneval's CLI entry point from the start; only the seconds of `import torch` are paid once.
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(LAUNCHER), "--serve"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"fork server did not start: {ready!r}")

    def _ask(self, **req: Any) -> Any:
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("fork server died")
        return json.loads(line)["r"]

    def spawn(self, argv: list[str], env: dict[str, str], cwd: Path, stderr: Path, fsize: int | None) -> int:
        return self._ask(op="spawn", argv=argv, env=env, cwd=str(cwd), stderr=str(stderr), fsize=fsize)

    def wait(self, pid: int, timeout: float | None) -> int | None:
        return self._ask(op="wait", pid=pid, timeout=timeout)

    def kill(self, pid: int) -> None:
        self._ask(op="kill", pid=pid)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _serve() -> None:
    """The fork server's loop: JSON requests on stdin, one JSON answer line each on stdout."""
    import importlib

    install_standin()
    for mod in (
        "geneval.cli",
        "geneval.evaluation",
        "geneval.pipeline",
        "geneval.reference_build",
        "geneval.sampling.generate",
        "geneval.metrics.compute",
        "geneval.report.grid",
        "geneval.results",
        "pandas",
        "scipy.linalg",
        "tqdm.auto",
    ):
        importlib.import_module(mod)
    from geneval.cli import build_app

    build_app()  # imports every command module
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    pipes: dict[int, tuple[int, Any]] = {}  # pid -> (read end of its stderr, the file it goes to)
    for line in sys.stdin:
        req = json.loads(line)
        op = req["op"]
        r: Any = None
        if op == "spawn":
            out.flush()
            sys.stderr.flush()
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                _child(req, wfd)
            os.close(wfd)
            os.set_blocking(rfd, False)
            pipes[pid] = (rfd, open(req["stderr"], "wb"))
            r = pid
        elif op == "wait":
            r = _wait(req["pid"], req["timeout"], pipes)
        elif op == "kill":
            try:
                os.killpg(req["pid"], signal.SIGKILL)
            except ProcessLookupError:  # not its own session leader yet (a kill right after the fork)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(req["pid"], signal.SIGKILL)
        out.write(json.dumps({"r": r}) + "\n")
        out.flush()


def _drain(pid: int, pipes: dict[int, tuple[int, Any]], final: bool) -> None:
    rfd, f = pipes[pid]
    while True:
        try:
            chunk = os.read(rfd, 1 << 16)
        except BlockingIOError:
            if not final:
                return
            time.sleep(0.001)
            continue
        if not chunk:
            break
        f.write(chunk)
    os.close(rfd)
    f.close()
    del pipes[pid]


def _wait(pid: int, timeout: float | None, pipes: dict[int, tuple[int, Any]]) -> int | None:
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if pid in pipes:
            _drain(pid, pipes, final=False)
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if pid in pipes:
                _drain(pid, pipes, final=True)
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() >= deadline:
            return None
        time.sleep(0.005)


def _child(req: dict[str, Any], err: int) -> None:
    code = 1
    try:
        os.setsid()
        if req["fsize"] is not None:
            _fsize_limit(req["fsize"])
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(err, 2)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        sys.argv = [str(LAUNCHER), *req["argv"]]
        from geneval.cli import main

        try:
            main(req["argv"])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001  (a traceback, as the interpreter would print it)
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


_SPAWNER: Spawner | None = None


def use_spawner(spawner: Spawner | None) -> None:
    """Make `launch` start processes with `spawner` (None: a fresh interpreter each time)."""
    global _SPAWNER
    _SPAWNER = spawner


def launch(
    ws: Workspace,
    argv: list[str],
    *,
    kill_after: float | None = None,
    fsize: int | None = None,
    timeout: float = 300,
    env: dict[str, str] | None = None,
) -> Outcome:
    """Run `geneval ARGV` (stand-in network) in `ws`; SIGKILL it `kill_after` seconds after its start.

    Args:
        env: extra environment variables (GENEVAL_KEEP_SHARDS, ...).
    """
    spawner = _SPAWNER or Spawner()
    err = ws.root.parent / f".{ws.root.name}.stderr"  # outside the workspace: not a leftover of geneval's
    t0 = time.perf_counter()
    pid = spawner.spawn(argv, ws.env() | (env or {}), ws.root, err, fsize)
    status = spawner.wait(pid, kill_after if kill_after is not None else timeout)
    killed = False
    if status is None:
        spawner.kill(pid)
        status = spawner.wait(pid, None)
        killed = status == -signal.SIGKILL  # else it ended on its own just before the kill
        if kill_after is None:
            raise TimeoutError(f"geneval {' '.join(argv)} ran over {timeout} s")
    text = err.read_text(errors="replace")
    err.unlink()
    return Outcome(None if killed else status, text, time.perf_counter() - t0)


def kill_when(ws: Workspace, argv: list[str], seen: Callable[[Workspace], bool], timeout: float = 300) -> Outcome:
    """Run `geneval ARGV` and SIGKILL it the moment `seen(ws)` is true (polled); returncode None when killed."""
    spawner = _SPAWNER or Spawner()
    err = ws.root.parent / f".{ws.root.name}.stderr"
    t0 = time.perf_counter()
    pid = spawner.spawn(argv, ws.env(), ws.root, err, None)
    killed = False
    while (status := spawner.wait(pid, 0.0)) is None:
        if seen(ws) or time.perf_counter() - t0 > timeout:
            spawner.kill(pid)
            status = spawner.wait(pid, None)
            killed = status == -signal.SIGKILL
            break
    text = err.read_text(errors="replace")
    err.unlink()
    return Outcome(None if killed else status, text, time.perf_counter() - t0)


def _snapshot(ws: Workspace) -> list[str]:
    """What the first real write of any command changes: the names in the cache's and the output's folders.

    Preflight's writability probes (a file made and removed at once) do not count.
    """
    names = []
    for d in (ws.cache, ws.cache / "features", ws.cache / "runs", ws.cache / "scratch", ws.out):
        with contextlib.suppress(OSError):
            names += [f"{d.name}/{n}" for n in os.listdir(d) if not n.startswith(".geneval-probe.")]
    return sorted(names)


def first_write_time(ws: Workspace, argv: list[str], timeout: float = 300) -> tuple[float, float, Outcome]:
    """Run once, polling: (seconds until its first write showed in the workspace, total seconds, outcome)."""
    spawner = _SPAWNER or Spawner()
    err = ws.root.parent / f".{ws.root.name}.stderr"
    before = _snapshot(ws)
    t0 = time.perf_counter()
    pid = spawner.spawn(argv, ws.env(), ws.root, err, None)
    first = None
    while (status := spawner.wait(pid, 0.0)) is None:
        if first is None and _snapshot(ws) != before:
            first = time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            spawner.kill(pid)
            status = spawner.wait(pid, None)
            break
        time.sleep(0.002)
    total = time.perf_counter() - t0
    text = err.read_text(errors="replace")
    err.unlink()
    return (first if first is not None else total), total, Outcome(status, text, total)


def kill_into_writing(ws: Workspace, argv: list[str], delay: float, timeout: float = 300) -> Outcome:
    """Run `geneval ARGV`; SIGKILL it `delay` seconds after its first write showed (returncode None when killed).

    Timing from the first write, not from the start, keeps the kill inside the writing phase
    however long the start took (imports, model and dataset loading vary with the machine's load).
    """
    spawner = _SPAWNER or Spawner()
    err = ws.root.parent / f".{ws.root.name}.stderr"
    before = _snapshot(ws)
    t0 = time.perf_counter()
    pid = spawner.spawn(argv, ws.env(), ws.root, err, None)
    status = None
    while (status := spawner.wait(pid, 0.0)) is None and _snapshot(ws) == before:
        if time.perf_counter() - t0 > timeout:
            break
        time.sleep(0.001)
    killed = False
    if status is None:
        status = spawner.wait(pid, delay)
        if status is None:
            spawner.kill(pid)
            status = spawner.wait(pid, None)
            killed = status == -signal.SIGKILL
    text = err.read_text(errors="replace")
    err.unlink()
    return Outcome(None if killed else status, text, time.perf_counter() - t0)


def _all_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            yield Path(dirpath) / name
        for name in dirnames:
            yield Path(dirpath) / name


# --------------------------------------------------------------------------- checks


def leftovers(ws: Workspace, finished: bool = True) -> list[str]:
    """Temporary files, partial report folders, trash and scratch folders under the workspace.

    Args:
        finished: the command has completed, so its resumable state must be gone too (sample's
            `<out>.shards` folder); right after a failure that folder is what a rerun resumes from.
    """
    bad = []
    for p in _all_files(ws.root):
        n = p.name
        if (
            n.endswith(".tmp")
            or n.endswith(".partial")
            or n.startswith(".geneval-images.")
            or n.startswith(".geneval-probe.")
            or n.startswith(".trash-")
            or (finished and n.endswith(".shards"))  # sample's shard folder goes once the final file is written
        ):
            bad.append(str(p.relative_to(ws.root)))
    scratch = ws.cache / "scratch"
    if scratch.is_dir():
        bad += [str(p.relative_to(ws.root)) for p in scratch.iterdir()]
    return sorted(set(bad))


def torn(ws: Workspace) -> list[str]:
    """Every shard, manifest, completion record and output under the workspace must load whole."""
    import numpy as np

    problems = []
    for p in sorted(_all_files(ws.root)):
        if p.is_symlink() or not p.is_file() or p.name.endswith(".tmp"):
            continue
        rel = str(p.relative_to(ws.root))
        try:
            if p.suffix == ".npz":
                with np.load(p, allow_pickle=False) as z:
                    arrays = {k: z[k] for k in z.files}  # reads every member: CRC-checked
                with zipfile.ZipFile(p) as zf:
                    if zf.testzip() is not None:
                        raise ValueError("bad CRC")
                if p.name.startswith("shard_"):
                    meta = json.loads(str(arrays["__meta__"]))
                    idx = arrays["indices"]
                    lo = meta.get("lo", int(idx[0]) if len(idx) else 0)
                    hi = meta.get("hi", lo + len(idx))
                    if not np.array_equal(idx, np.arange(lo, hi)):
                        raise ValueError(f"indices of {lo}..{hi} wrong")
                    if any(len(v) != hi - lo for k, v in arrays.items() if k.startswith("feat_") or k in ("images", "labels")):
                        raise ValueError("arrays of different lengths")
            elif p.suffix == ".json" and p.name != "tf-inception-2015-12-05-trunk.safetensors.json":
                doc = json.loads(p.read_text())
                if p.name == "complete.json":
                    manifest = json.loads((p.parent / "manifest.json").read_text())
                    n, size = manifest["key"]["n"], manifest["key"]["shard_size"]
                    missing = [k for k in range((n + size - 1) // size) if not (p.parent / f"shard_{k:06d}.npz").is_file()]
                    if missing:
                        raise ValueError(f"marked complete but shards {missing} are missing")
                del doc
            elif p.suffix == ".csv":
                import pandas as pd

                pd.read_csv(p)
            elif p.suffix == ".png":
                from PIL import Image

                with Image.open(p) as im:
                    im.load()
        except Exception as e:  # noqa: BLE001  (any failure to load is a torn file)
            problems.append(f"{rel}: {type(e).__name__}: {e}")
    return problems


def disk_state(ws: Workspace) -> dict[str, Any]:
    """A summary of what a fault left: finished shards, temporary files, output files."""
    files = list(_all_files(ws.root))
    return {
        "shards": sum(1 for p in files if p.name.startswith("shard_") and p.suffix == ".npz"),
        "temps": sum(1 for p in files if p.name.endswith(".tmp") or p.name.startswith(".geneval-images.")),
        "outputs": sorted(p.name for p in ws.out.iterdir()) if ws.out.is_dir() else [],
    }


# --------------------------------------------------------------------------- disk-full limiters


class Limiter:
    """Gives a workspace a small disk: `limited(budget)` for one run, the full disk afterwards."""

    kind = "none"
    errno_name = ""

    def workspace(self, root: Path, weights: list[Path], ckpt: Path) -> contextlib.AbstractContextManager[Workspace]:
        raise NotImplementedError

    def run(self, ws: Workspace, argv: list[str], budget: int) -> Outcome:
        raise NotImplementedError


class FsizeLimiter(Limiter):
    """A file-size limit (ulimit -f): every file the command writes stops at `budget` bytes (EFBIG)."""

    kind = "rlimit-fsize"
    errno_name = "EFBIG"

    @contextlib.contextmanager
    def workspace(self, root: Path, weights: list[Path], ckpt: Path) -> Iterator[Workspace]:
        yield Workspace(root, weights, ckpt).populate()

    def run(self, ws: Workspace, argv: list[str], budget: int) -> Outcome:
        return launch(ws, argv, fsize=max(budget, 1))


class TmpfsLimiter(Limiter):
    """A tmpfs holding the whole workspace, shrunk to what is used plus `budget` bytes for one run (ENOSPC)."""

    kind = "tmpfs"
    errno_name = "ENOSPC"
    FULL = "256m"

    @contextlib.contextmanager
    def workspace(self, root: Path, weights: list[Path], ckpt: Path) -> Iterator[Workspace]:
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.FULL},mode=0755", "tmpfs", str(root)], check=True, capture_output=True)
        try:
            yield Workspace(root, weights, ckpt).populate()
        finally:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)

    def _used(self, ws: Workspace) -> int:
        st = os.statvfs(ws.root)
        return (st.f_blocks - st.f_bfree) * st.f_frsize

    def run(self, ws: Workspace, argv: list[str], budget: int) -> Outcome:
        page = os.sysconf("SC_PAGE_SIZE")
        size = self._used(ws) + max(budget, 0)
        size = max(page, (size // page) * page)
        subprocess.run(["mount", "-o", f"remount,size={size}", str(ws.root)], check=True, capture_output=True)
        try:
            return launch(ws, argv)
        finally:
            subprocess.run(["mount", "-o", f"remount,size={self.FULL}", str(ws.root)], check=True, capture_output=True)


def tmpfs_works(probe_dir: Path) -> bool:
    """Whether this process may mount a tmpfs (root, no container restriction)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    probe_dir.mkdir(parents=True, exist_ok=True)
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe_dir)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", "-l", str(probe_dir)], capture_output=True)
    return ok


def limiters(probe_dir: Path) -> list[Limiter]:
    """The disk-full simulations available here: tmpfs (when mounting works) and the file-size limit."""
    return ([TmpfsLimiter()] if tmpfs_works(probe_dir) else []) + [FsizeLimiter()]


# --------------------------------------------------------------------------- one fault point


@dataclass
class PointReport:
    """What one fault point found."""

    command: str
    fault: str  # "kill@1.234s" or "tmpfs+4096B" / "rlimit-fsize+4096B"
    fault_hit: bool  # killed before finishing / the limit made the command fail
    completed_before_fault: bool = False
    fault_output_ok: bool = True  # disk full: exit != 0 with one "error: disk full" line, no traceback
    identical: bool = False
    leftovers: list[str] = field(default_factory=list)
    torn: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    at_fault: dict[str, Any] = field(default_factory=dict)  # what was on disk right after the fault

    @property
    def lost(self) -> bool:
        return not self.identical

    @property
    def ok(self) -> bool:
        return self.identical and not self.leftovers and not self.torn and self.fault_output_ok

    def to_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "fault": self.fault,
            "fault_hit": self.fault_hit,
            "completed_before_fault": self.completed_before_fault,
            "fault_output_ok": self.fault_output_ok,
            "identical": self.identical,
            "leftovers": self.leftovers,
            "torn": self.torn,
            "notes": self.notes,
            "at_fault": self.at_fault,
        }


def _finish(cmd: Command, ws: Workspace, report: PointReport, baseline: dict[str, Any]) -> PointReport:
    """Rerun to completion (unless the result is already in place and the command refuses), then check."""
    if cmd.done(ws) and cmd.rerun_refuses_when_done:
        report.completed_before_fault = True
        again = launch(ws, cmd.argv(ws))
        if again.returncode == 0 or "already exists" not in again.stderr:
            report.notes.append(f"rerun of a finished {cmd.name}: rc={again.returncode} {again.stderr[-300:]}")
    else:
        again = launch(ws, cmd.argv(ws))
        if again.returncode != 0:
            report.notes.append(f"rerun failed rc={again.returncode}: {again.stderr[-600:]}")
    try:
        report.identical = cmd.result(ws) == baseline
        if not report.identical:
            report.notes.append("result differs from the uninterrupted baseline")
    except Exception as e:  # noqa: BLE001
        report.notes.append(f"result unreadable: {type(e).__name__}: {e}")
    report.leftovers = leftovers(ws)
    report.torn = torn(ws)
    return report


def kill_point(cmd: Command, ws: Workspace, delay: float, baseline: dict[str, Any]) -> PointReport:
    """SIGKILL `cmd` `delay` seconds after its first write, check nothing is torn, rerun, compare."""
    first = kill_into_writing(ws, cmd.argv(ws), delay)
    report = PointReport(cmd.name, f"kill@{delay:.3f}s", fault_hit=first.returncode is None)
    if first.returncode not in (None, 0):
        report.notes.append(f"the run to be killed failed on its own: rc={first.returncode} {first.stderr[-600:]}")
    report.at_fault = disk_state(ws)
    report.torn = torn(ws)  # right after the kill, before any rerun could sweep
    if report.torn:
        report.notes.append("torn right after the kill: " + "; ".join(report.torn))
    torn_after_kill = report.torn
    report = _finish(cmd, ws, report, baseline)
    report.torn = sorted(set(report.torn) | set(torn_after_kill))
    return report


def disk_full_point(
    cmd: Command, ws: Workspace, limiter: Limiter, budget: int, baseline: dict[str, Any], argv: list[str] | None = None
) -> PointReport:
    """Run `cmd` with `budget` bytes of room: it succeeds or fails with one clear line; then lift the limit, rerun, compare."""
    argv = argv or cmd.argv(ws)
    first = limiter.run(ws, argv, budget)
    report = PointReport(cmd.name, f"{limiter.kind}+{budget}B", fault_hit=first.returncode != 0)
    if first.returncode != 0:
        errors = first.error_lines
        report.fault_output_ok = len(errors) == 1 and DISK_FULL_MARK in errors[0] and not first.traceback
        if not report.fault_output_ok:
            report.notes.append(f"disk-full output rc={first.returncode}: {first.stderr[-1500:]}")
    report.at_fault = disk_state(ws) | {"error": first.error_lines[-1] if first.error_lines else None}
    report.torn = torn(ws)
    report.leftovers = leftovers(ws, finished=False)
    if report.leftovers:
        report.notes.append("left right after the disk-full failure: " + ", ".join(report.leftovers))
    early = (list(report.torn), list(report.leftovers))
    report = _finish(cmd, ws, report, baseline)
    report.torn = sorted(set(report.torn) | set(early[0]))
    report.leftovers = sorted(set(report.leftovers) | set(early[1]))
    return report


def baseline(cmd: Command, ws: Workspace) -> tuple[dict[str, Any], float, float]:
    """An uninterrupted run: (result, seconds until its first write, total seconds)."""
    first, total, out = first_write_time(ws, cmd.argv(ws))
    if out.returncode != 0:
        raise RuntimeError(f"baseline {cmd.name} failed: {out.stderr[-3000:]}")
    problems = leftovers(ws) + torn(ws)
    if problems:
        raise RuntimeError(f"baseline {cmd.name} left {problems}")
    return cmd.result(ws), first, total


# --------------------------------------------------------------------------- campaigns


def _slug(name: str) -> str:
    return name.replace(" ", "-")


def summarize(points: list[PointReport]) -> dict[str, Any]:
    """Counts over fault points: tried, fault hit, identical result, lost, torn, stale leftovers, bad error output."""
    return {
        "tried": len(points),
        "fault_hit": sum(p.fault_hit for p in points),
        "completed_before_fault": sum(p.completed_before_fault for p in points),
        "identical": sum(p.identical for p in points),
        "lost": sum(p.lost for p in points),
        "torn": sum(bool(p.torn) for p in points),
        "stale_leftovers": sum(bool(p.leftovers) for p in points),
        "bad_error_output": sum(not p.fault_output_ok for p in points),
        "failed": sum(not p.ok for p in points),
    }


def kill_campaign(
    cmd: Command, points: int, seed: int, workdir: Path, weights: list[Path], ckpt: Path, log: Callable[[str], None] = lambda s: None
) -> dict[str, Any]:
    """SIGKILL `cmd` at `points` seeded random moments spread over its baseline's write phase; rerun and check each."""
    import random

    timings = []
    for j in range(3):  # the writing phase's timing: the median of three runs (the first one is often slower)
        base = Workspace(workdir / f"{_slug(cmd.name)}-baseline{j}", weights, ckpt).populate()
        got, first, total = baseline(cmd, base)
        if j == 0:
            result = got
        elif got != result:
            raise RuntimeError(f"{cmd.name} is not deterministic: two uninterrupted runs differ")
        timings.append((first, total))
        shutil.rmtree(base.root, ignore_errors=True)
    first = sorted(t[0] for t in timings)[1]
    total = sorted(t[1] for t in timings)[1]
    rng = random.Random(f"{seed}-{cmd.name}")
    reports = []
    phase = total - first
    for i in range(points):
        # From the first write to a little past the end: every write, rename and cleanup is a candidate.
        delay = rng.uniform(0.0, phase * 1.1)
        ws = Workspace(workdir / f"{_slug(cmd.name)}-kill{i:03d}", weights, ckpt).populate()
        r = kill_point(cmd, ws, delay, result)
        reports.append(r)
        log(f"{cmd.name} kill {i + 1}/{points} at {delay:.3f}s: {'ok' if r.ok else 'FAILED'} {r.at_fault} {'; '.join(r.notes)[:300]}")
        if r.ok:
            shutil.rmtree(ws.root, ignore_errors=True)
    return {
        "command": cmd.name,
        "argv": ["geneval", *cmd.argv(Workspace(Path("WS"), weights, ckpt))],
        "baseline_s": round(total, 3),
        "first_write_s": round(first, 3),
        "delays_after_first_write_s": [round(float(r.fault.split("@")[1][:-1]), 3) for r in reports],
        "shards_at_kill": [r.at_fault.get("shards") for r in reports],
        **summarize(reports),
        "failures": [r.to_dict() for r in reports if not r.ok],
    }


def disk_full_campaign(
    cmd: Command,
    limiter: Limiter,
    points: int,
    workdir: Path,
    weights: list[Path],
    ckpt: Path,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Run `cmd` with `points` budgets spread from 0 to a little past what it needs; each fails cleanly or succeeds, then reruns identically."""
    with limiter.workspace(workdir / f"{_slug(cmd.name)}-{limiter.kind}-baseline", weights, ckpt) as base:
        need = _bytes_needed(limiter, base, cmd)
        result = cmd.result(base)
    reports = []
    page = os.sysconf("SC_PAGE_SIZE")
    budgets = [int(need * 1.5 * i / max(points - 1, 1)) for i in range(points)]
    if limiter.kind == "tmpfs":
        budgets = [b // page * page for b in budgets]
    for i, budget in enumerate(budgets):
        with limiter.workspace(workdir / f"{_slug(cmd.name)}-{limiter.kind}-{i:03d}", weights, ckpt) as ws:
            r = disk_full_point(cmd, ws, limiter, budget, result)
            reports.append(r)
            log(f"{cmd.name} {limiter.kind} {i + 1}/{points} budget {budget} B: {'ok' if r.ok else 'FAILED'} {r.at_fault} {'; '.join(r.notes)[:300]}")
        if r.ok:
            shutil.rmtree(ws.root, ignore_errors=True)
    return {
        "command": cmd.name,
        "limiter": limiter.kind,
        "errno": limiter.errno_name,
        "bytes_needed": need,
        "budgets_B": budgets,
        **summarize(reports),
        "failures": [r.to_dict() for r in reports if not r.ok],
    }


def _bytes_needed(limiter: Limiter, ws: Workspace, cmd: Command) -> int:
    """What the command needs: the largest file it writes (file-size limit) or its peak disk use (tmpfs)."""
    if limiter.kind == "tmpfs":
        used0 = limiter._used(ws)  # type: ignore[attr-defined]
        spawner = _SPAWNER or Spawner()
        err = ws.root.parent / f".{ws.root.name}.stderr"
        pid = spawner.spawn(cmd.argv(ws), ws.env(), ws.root, err, None)
        peak = 0
        while (status := spawner.wait(pid, 0.0)) is None:
            peak = max(peak, limiter._used(ws) - used0)  # type: ignore[attr-defined]
            time.sleep(0.002)
        err.unlink()
        if status != 0:
            raise RuntimeError(f"baseline {cmd.name} on tmpfs failed")
        return max(peak, limiter._used(ws) - used0)  # type: ignore[attr-defined]
    sizes: list[int] = []
    spawner = _SPAWNER or Spawner()
    err = ws.root.parent / f".{ws.root.name}.stderr"
    pid = spawner.spawn(cmd.argv(ws), ws.env(), ws.root, err, None)
    while (status := spawner.wait(pid, 0.0)) is None:
        sizes += _sizes(ws.root)
        time.sleep(0.002)
    err.unlink()
    if status != 0:
        raise RuntimeError(f"baseline {cmd.name} failed")
    sizes += _sizes(ws.root)
    return max(sizes)


def _sizes(root: Path) -> list[int]:
    sizes = []
    for p in _all_files(root):
        with contextlib.suppress(OSError):
            st = p.lstat()
            if p.is_file() and not p.is_symlink():
                sizes.append(st.st_size)
    return sizes


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        _serve()
    else:
        install_standin()
        from geneval.cli import main

        main()

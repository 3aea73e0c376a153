"""Peak host memory (RSS) of the execution core vs N, with a stand-in feature network on the CPU.

Each point runs in a fresh process: uint8 32×32×3 batches stream through geneval's execution
core (geneval.runner.execute.stream_features: shards on disk, float64 sums) with a fixed random
linear map to 2048-d standing in for TF-Inception (the network does not change what the core
holds). Two ways of serving a metric are measured at every N:

- "fid" (statistics only): the layer is summed, never held; peak RSS must be flat in N;
- "rows" (what KID/PR/DC need): the rows are gathered, so memory grows with N by design.

Verdict: FID-only peak RSS at the largest N is within `--tolerance` (default 1.15×) of the
smallest N's. The exit code follows it (0 pass, 1 fail).

Usage: python benchmarks/bench_memory.py --n 2000 10000 50000 --out benchmarks/results/memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DIM = 2048


def one(n: int, kind: str, batch: int, shard: int) -> dict:
    import numpy as np
    import torch

    from geneval.runner.distributed import SINGLE
    from geneval.runner.execute import Chunk, Needs, stream_features
    from geneval.runner.shards import ShardStore

    torch.set_num_threads(1)
    w = torch.from_numpy(np.random.default_rng(0).normal(size=(32 * 32 * 3, DIM)).astype(np.float32) / 55.0)

    def produce(lo: int, hi: int):
        for b0 in range(lo, hi, batch):
            idx = np.arange(b0, min(b0 + batch, hi))
            rng = np.random.default_rng(b0)
            yield Chunk(rng.integers(0, 256, size=(len(idx), 32, 32, 3), dtype=np.uint8), None, idx)

    def extract(images: np.ndarray) -> dict:
        x = torch.from_numpy(images.reshape(len(images), -1).astype(np.float32) / 255.0)
        return {"pool3": x @ w}

    needs = Needs(stats=frozenset({"pool3"})) if kind == "fid" else Needs(rows=frozenset({"pool3"}))
    with tempfile.TemporaryDirectory() as d:
        store = ShardStore(d, {"bench": kind}, n, shard).open()
        t0 = time.perf_counter()
        out = stream_features(store, produce, extract, needs, SINGLE)
        wall = time.perf_counter() - t0
    assert out.n == n
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": n, "kind": kind, "peak_rss_mib": round(rss_kib / 1024, 1), "wall_s": round(wall, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000, 50000])
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--shard-size", type=int, default=1000)
    ap.add_argument("--tolerance", type=float, default=1.15)
    ap.add_argument("--kinds", nargs="+", default=["fid", "rows"])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--child", nargs=2, metavar=("N", "KIND"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(one(int(a.child[0]), a.child[1], a.batch, a.shard_size)))
        return 0
    points = []
    for kind in a.kinds:
        for n in a.n:
            cmd = [sys.executable, __file__, "--child", str(n), kind, "--batch", str(a.batch), "--shard-size", str(a.shard_size)]
            p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=False)
            if p.returncode != 0:
                print(p.stderr[-2000:], file=sys.stderr)
                return 1
            points.append(json.loads(p.stdout.strip().splitlines()[-1]))
            print(json.dumps(points[-1]), file=sys.stderr)
    fid = sorted((p for p in points if p["kind"] == "fid"), key=lambda p: p["n"])
    ratio = fid[-1]["peak_rss_mib"] / fid[0]["peak_rss_mib"] if fid else float("nan")
    verdict = bool(fid) and ratio <= a.tolerance
    result = {
        "points": points,
        "fid_rss_ratio_max_over_min_n": round(ratio, 3),
        "tolerance": a.tolerance,
        "pass": verdict,
        "stand_in": f"random linear map 3072->{DIM}, float32",
        "uptime": os.getloadavg(),
    }
    text = json.dumps(result, indent=2)
    print(text)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text + "\n")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())

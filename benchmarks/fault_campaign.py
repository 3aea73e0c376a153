"""Fault campaign: SIGKILL at many moments and a disk full at many sizes, for eval, run, ref build and sample.

For each command (tiny inputs, 2-image shards, so there are dozens of write points) it runs an
uninterrupted baseline, then:

- kill points: SIGKILL a seeded random delay after the command's first write, drawn uniformly
  from 0 to 1.1 times the baseline's writing phase (its first write to its end; the median of
  three uninterrupted runs), then the same command again;
- disk-full points: the command with room for B bytes, B spread evenly from 0 to 1.5 times what
  it needs, on a small tmpfs (ENOSPC; needs root to mount) and under a file-size limit
  (RLIMIT_FSIZE: EFBIG), then the same command with the limit lifted.

Each point must end with the baseline's result (metric values equal, saved arrays bit-identical),
no temporary file or scratch folder left, every cache entry and shard loading whole, and (disk
full) one `error: disk full while writing …` line, no traceback. The commands run geneval's CLI
with a stand-in feature network (tests/faultkit.py), forked from one process that imported
torch already, so a point costs about a second or two.

Writes benchmarks/results/faults.json and exits 1 when any point lost, tore or left anything.

Usage:
    python benchmarks/fault_campaign.py [--kills 30] [--disk-points 12] [--seed 0] [--out benchmarks/results/faults.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import faultkit as fk  # noqa: E402

KILL_COMMANDS = ("eval", "eval --no-cache", "run", "ref build", "sample")
DISK_COMMANDS = ("eval", "run", "ref build", "sample")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=30, help="SIGKILL points per command")
    ap.add_argument("--disk-points", type=int, default=12, help="disk-full sizes per command and simulation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--commands", default=",".join(KILL_COMMANDS), help="comma list of commands")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "faults.json")
    ap.add_argument("--workdir", type=Path, default=None, help="where workspaces go (default: a temporary folder)")
    args = ap.parse_args()
    names = [c.strip() for c in args.commands.split(",") if c.strip()]

    os.environ.setdefault("GENEVAL_OFFLINE", "1")
    os.environ["OMP_NUM_THREADS"] = "1"
    started = time.perf_counter()
    weights = fk.inception_files()
    workdir = Path(tempfile.mkdtemp(prefix="geneval-faults-", dir=args.workdir))
    ckpt = fk.make_checkpoint(workdir / "ckpt")
    limiters = fk.limiters(workdir / "mount-probe")
    server = fk.ForkServer(dict(os.environ))
    fk.use_spawner(server)

    def log(line: str) -> None:
        print(line[:400], file=sys.stderr, flush=True)

    kills, disk = {}, {}
    try:
        for name in names:
            t0 = time.perf_counter()
            kills[name] = fk.kill_campaign(fk.COMMANDS[name], args.kills, args.seed, workdir, weights, ckpt, log=log)
            kills[name]["seconds"] = round(time.perf_counter() - t0, 1)
        for name in names:
            if name not in DISK_COMMANDS:
                continue
            for limiter in limiters:
                t0 = time.perf_counter()
                r = fk.disk_full_campaign(fk.COMMANDS[name], limiter, args.disk_points, workdir, weights, ckpt, log=log)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                disk[f"{name} / {limiter.kind}"] = r
    finally:
        fk.use_spawner(None)
        server.close()

    def total(table: dict, key: str) -> int:
        return sum(v[key] for v in table.values())

    summary = {
        "kill_points": total(kills, "tried"),
        "kill_points_killed_mid_run": total(kills, "fault_hit"),
        "kill_points_identical": total(kills, "identical"),
        "kill_points_lost": total(kills, "lost"),
        "kill_points_torn": total(kills, "torn"),
        "kill_points_stale_leftovers": total(kills, "stale_leftovers"),
        "disk_full_points": total(disk, "tried"),
        "disk_full_points_failed_on_the_limit": total(disk, "fault_hit"),
        "disk_full_points_identical_after_rerun": total(disk, "identical"),
        "disk_full_points_lost": total(disk, "lost"),
        "disk_full_points_torn": total(disk, "torn"),
        "disk_full_points_stale_leftovers": total(disk, "stale_leftovers"),
        "disk_full_points_bad_error_output": total(disk, "bad_error_output"),
    }
    bad = total(kills, "failed") + total(disk, "failed")
    doc = {
        "what": "SIGKILL and disk-full fault points per command; each rerun compared with an uninterrupted baseline",
        "verdict": "pass" if bad == 0 else "FAIL",
        "failed_points": bad,
        "summary": summary,
        "kill": kills,
        "disk_full": disk,
        "disk_full_simulations": [lim.kind for lim in limiters],
        "settings": {
            "kills_per_command": args.kills,
            "disk_points_per_command_and_simulation": args.disk_points,
            "seed": args.seed,
            "feature_network": "stand-in (tests/faultkit.py: tanh of a fixed projection of 8x8-pooled pixels)",
            "processes": "forked from one process with torch and geneval imported (tests/faultkit.py ForkServer)",
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    if bad == 0:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"verdict": doc["verdict"], **summary, "wall_s": doc["wall_s"]}, indent=2))
    print(f"wrote {args.out}" + ("" if bad == 0 else f"; failed points' workspaces kept under {workdir}"), file=sys.stderr)
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

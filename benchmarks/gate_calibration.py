"""Calibrate `geneval gate` on the demo: seed repeats must pass, a degraded model must fail.

Builds a baseline from demo runs at seeds 0,1,2, gates a run at seed 7 of the same model
(expected: pass, exit 0), then a run at seed 7 of a deliberately degraded copy of the demo UNet
(every weight tensor plus Gaussian noise of `--degrade` x its own std, seeded; expected: fail,
exit 1). Writes the exit codes, values and verdicts to a JSON file.

Usage: python benchmarks/gate_calibration.py --n 200 --steps 10 --out benchmarks/results/gate_calibration.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch


def degrade(src: str, dst: Path, scale: float, seed: int) -> None:
    """Copy the demo UNet with seeded Gaussian noise added to every floating weight tensor."""
    from geneval.models.formats import load_model, save_native

    lm = load_model(src)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.net.state_dict().values():
            if p.is_floating_point() and p.numel() > 1:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * scale)
    save_native(
        lm.net,
        lm.config,
        dst,
        diffusion=lm.diffusion,
        class_names=lm.class_names,
        null_class=lm.null_class,
        training={"degraded": f"demo UNet + N(0, ({scale} x tensor std)^2), seed {seed}"},
    )


def geneval(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "geneval", *args]
    print("$", " ".join(cmd), file=sys.stderr)
    return subprocess.run(cmd, capture_output=True, text=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--degrade", type=float, default=0.1)
    ap.add_argument("--out", default="benchmarks/results/gate_calibration.json")
    a = ap.parse_args()

    from geneval.zoo import demo_model_path

    work = Path(tempfile.mkdtemp(prefix="gate-cal-"))
    common = ["--n", str(a.n), "--steps", str(a.steps), "--metrics", "fid,pr", "--out-dir", str(work / "reports"), "--no-progress"]
    demo = str(demo_model_path())
    bad = work / "degraded-unet"
    degrade(demo, bad, a.degrade, seed=0)
    from geneval.zoo import demo_reference

    ref = str(demo_reference("tf"))
    out: dict = {"n": a.n, "steps": a.steps, "metrics": "fid,pr", "degrade": a.degrade, "runs": {}}
    for name, model, seed in [("base-0", demo, 0), ("base-1", demo, 1), ("base-2", demo, 2), ("seed-7", demo, 7), ("degraded-7", str(bad), 7)]:
        p = geneval("run", "--model", model, "--ref", ref, "--seed", str(seed), "--run-id", name, *common)
        if p.returncode != 0:
            sys.exit(f"run {name} failed ({p.returncode}): {p.stderr.strip().splitlines()[-1:]}")
        rs = json.loads((work / "reports" / name / "results.json").read_text())["results"]
        out["runs"][name] = {r["metric"]: r["value"] for r in rs}
    baseline = work / "baseline.json"
    p = geneval("gate", *(str(work / "reports" / f"base-{s}") for s in range(3)), "--baseline", str(baseline), "--update-baseline")
    out["update_baseline_exit"] = p.returncode
    for name in ("seed-7", "degraded-7"):
        p = geneval("gate", str(work / "reports" / name), "--baseline", str(baseline))
        out[f"gate_{name}"] = {"exit": p.returncode, "verdict": p.stdout}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if not k.startswith("gate_")}, indent=2))
    for name in ("seed-7", "degraded-7"):
        print(f"gate {name}: exit {out[f'gate_{name}']['exit']}")


if __name__ == "__main__":
    main()

"""Is the trained demo model any good? FID/precision/recall of the trained demo UNet, an untrained
UNet of the same architecture, pure noise images, and real Fashion-MNIST train images (the floor
at this N) — same N, same seed, same reference.

    python benchmarks/demo_baselines.py --n 1000 --out benchmarks/results/demo_baselines.json

Untrained = `UNetModel(DEMO_UNET)` with PyTorch's default initialisation under torch.manual_seed(0)
(ADM zero-initialises the output conv, so it predicts ε = 0). Noise = uniform uint8 gray images
from np.random.default_rng(seed), shaped like the samples (32×32×1). Real = the first N images of
the Fashion-MNIST train split (what the demo UNet was trained on), zero-padded to 32×32.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> dict:
    import numpy as np
    import torch

    from geneval import zoo
    from geneval.evaluation import evaluate
    from geneval.models.formats import save_native
    from geneval.models.unet import UNetModel
    from geneval.pipeline import run
    from geneval.zoo import train_demo as td

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--metrics", default="fid,pr")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default="trained,untrained,noise,real", help="which baselines to (re)compute; others are kept from --out")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    ref = str(zoo.demo_reference("tf"))
    out: dict = {
        "n": a.n,
        "steps": a.steps,
        "sampler": "ddim",
        "seed": a.seed,
        "mode": "tf",
        "ref": zoo.DEMO_REFERENCE,
        "ref_n": zoo.manifest()["files"][zoo.DEMO_REFERENCE]["n"],
        "results": {},
    }
    only = set(a.only.split(","))
    if a.out.exists():  # keep earlier baselines measured with the same settings
        old = json.loads(a.out.read_text())
        if all(old.get(k) == out[k] for k in ("n", "steps", "seed", "ref", "ref_n")):
            out["results"] = {k: v for k, v in old.get("results", {}).items() if k not in only}

    def record(name: str, rs, t0: float) -> None:
        out["results"][name] = {r.metric: r.value for r in rs.rows} | {"wall_s": round(time.time() - t0, 1)}
        print(name, out["results"][name], file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        if "trained" in only:
            record(
                "trained",
                run(
                    model=str(zoo.demo_model_path()),
                    metrics=a.metrics,
                    ref=ref,
                    n=a.n,
                    steps=a.steps,
                    seed=a.seed,
                    batch_size=a.batch_size,
                    device="cpu",
                    out_dir=tmp,
                    run_id="trained",
                    progress=False,
                ),
                t0,
            )
        if "untrained" in only:
            torch.manual_seed(0)
            untrained = Path(tmp) / "ckpt-untrained"
            save_native(UNetModel(td.DEMO_UNET), td.DEMO_UNET, untrained, td.DEMO_DIFFUSION, null_class=td.NUM_CLASSES)
            t0 = time.time()
            record(
                "untrained",
                run(
                    model=str(untrained),
                    metrics=a.metrics,
                    ref=ref,
                    n=a.n,
                    steps=a.steps,
                    seed=a.seed,
                    batch_size=a.batch_size,
                    device="cpu",
                    out_dir=tmp,
                    run_id="untrained",
                    progress=False,
                ),
                t0,
            )
        noise = np.random.default_rng(a.seed).integers(0, 256, size=(a.n, 32, 32, 1), dtype=np.uint8)
        t0 = time.time()
        if "noise" in only:
            record("noise", evaluate(noise, ref, metrics=a.metrics, device="cpu", batch_size=a.batch_size, progress=False, cache=False), t0)
        t0 = time.time()
        if "real" in only:
            record(
                "real", evaluate(f"fashion-mnist:train[0:{a.n}]", ref, metrics=a.metrics, device="cpu", batch_size=a.batch_size, progress=False), t0
            )
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()

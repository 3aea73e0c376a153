"""Is `geneval run` one streaming pass? Compare its wall time with sampling alone + features alone.

    python benchmarks/bench_run.py --n 50000 --batch-size 500 --device cuda --out benchmarks/results/bench_run_gpu.json
    python benchmarks/bench_run.py --n 64 --batch-size 32 --steps 5 --device cpu --out benchmarks/results/bench_run_cpu_tiny.json

Three timings on the same model, sampler, steps, seed and N:
  1. sampling alone: iterate geneval.sample() to the end (uint8 batches kept in memory);
  2. features alone: TF-Inception (mode tf) over those same uint8 batches;
  3. run: geneval.run(metrics="fid") against the demo reference (preflight, reference, stream,
     FID, report folder).
Target (issue 5): run ≤ 1.1 × (sampling + features) at N = 50,000 on a GPU.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    import torch

    import geneval
    from geneval import zoo
    from geneval.features.extract import FeatureExtractor
    from geneval.models.formats import load_model
    from geneval.pipeline import run
    from geneval.sampling.generate import sample

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="checkpoint (default: the demo UNet)")
    p.add_argument("--ref", default=None, help="reference (default: the shipped demo reference)")
    p.add_argument("--n", type=int, default=50_000)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--sampler", default="ddim")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", default="exact")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model_path = a.model or str(zoo.demo_model_path())
    ref = a.ref or str(zoo.demo_reference("tf"))
    model = load_model(model_path, device=a.device)
    kw = dict(sampler=a.sampler, steps=a.steps, guidance=a.guidance, seed=0, batch_size=a.batch_size, device=a.device)

    # Warm-up outside the timings (CUDA context, cuDNN autotune, weight conversion, reference expansion).
    ex = FeatureExtractor(mode="tf", device=a.device, precision=a.precision, batch_size=min(a.batch_size, 250))
    warm = next(iter(sample(model, min(a.batch_size, a.n), **kw)))
    ex.extract(warm.images)

    _sync(a.device)
    t0 = time.perf_counter()
    batches = [b.images for b in sample(model, a.n, **kw)]
    _sync(a.device)
    t_sample = time.perf_counter() - t0

    t0 = time.perf_counter()
    for images in batches:
        ex.extract(images)
    _sync(a.device)
    t_feat = time.perf_counter() - t0
    del batches

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rs = run(
            model=model_path,
            metrics="fid",
            ref=ref,
            n=a.n,
            sampler=a.sampler,
            steps=a.steps,
            guidance=a.guidance,
            seed=0,
            batch_size=a.batch_size,
            device=a.device,
            precision=a.precision,
            out_dir=tmp,
            run_id="bench",
            progress=False,
        )
        _sync(a.device)
        t_run = time.perf_counter() - t0
    ratio = t_run / (t_sample + t_feat)
    result = {
        "benchmark": "bench_run",
        "n": a.n,
        "steps": a.steps,
        "sampler": a.sampler,
        "guidance": a.guidance,
        "batch_size": a.batch_size,
        "device": a.device,
        "device_name": torch.cuda.get_device_name(0) if a.device.startswith("cuda") else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "geneval": geneval.__version__,
        "model": model_path,
        "sample_alone_s": round(t_sample, 3),
        "features_alone_s": round(t_feat, 3),
        "run_s": round(t_run, 3),
        "run_over_sum": round(ratio, 4),
        "target": "run_s <= 1.1 * (sample_alone_s + features_alone_s)",
        "passes": ratio <= 1.1,
        "fid": rs.value("fid"),
        "run_inner_timings_s": {k: rs["fid"].extra[k] for k in ("sample_s", "features_s")},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["passes"] else 1


if __name__ == "__main__":
    sys.exit(main())

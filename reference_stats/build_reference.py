"""Build the shipped Fashion-MNIST reference statistics (compact form) and update manifest.json.

    python reference_stats/build_reference.py --split test --work /tmp/gref [--limit N] [--pr-subset 1000]

Features are TF-Inception pool3 (mode tf, precision exact) of Fashion-MNIST zero-padded to
32×32, i.e. exactly what `geneval ref build fashion-mnist:test --mode tf` extracts (same
FeatureExtractor, same dataset loader). Extraction runs in resumable chunks of 500 images in
dataset order (`--work` keeps them), because on a shared 2-core CPU the 10k test images take
15–40 minutes. `--limit` builds the statistics from the first N images; the manifest records N.

Shipped (compact) vs rebuilt: see geneval/zoo/__init__.py — the shipped file holds mu (float64),
the covariance's upper triangle (float32) and a float16 pool3 subset for precision/recall; it is
expanded into a standard geneval reference .npz in the cache on first use.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CHUNK = 500


def extract_chunks(split: str, work: Path, limit: int | None, threads: int) -> tuple[np.ndarray, dict]:
    """pool3 features of the first `limit` images of the split, from/into resumable chunk files."""
    import torch

    from geneval.features.extract import FeatureExtractor
    from geneval.sources.datasets import load_fashion_mnist

    torch.set_num_threads(threads)
    ds = load_fashion_mnist(split, pad_to=32)
    n = len(ds.images) if limit is None else min(limit, len(ds.images))
    work.mkdir(parents=True, exist_ok=True)
    ex = None
    feats = []
    for start in range(0, n, CHUNK):
        path = work / f"chunk_{start:05d}.npz" if split == "test" else work / f"{split}_chunk_{start:05d}.npz"
        if not path.exists():
            if ex is None:
                ex = FeatureExtractor(mode="tf", device="cpu", precision="exact", batch_size=50)
            t0 = time.time()
            f = ex.extract(ds.images[start : start + CHUNK])
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, pool3=f["pool3"].numpy(), spatial=f["spatial"].numpy())
            os.replace(tmp, path)
            print(f"{split} {start}: {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
        with np.load(path) as z:
            feats.append(z["pool3"])
    pool3 = np.concatenate(feats)[:n]
    from geneval.weights import resolve_inception

    w = resolve_inception(None)
    return pool3, {"weights_sha256": w.sha256, "weights_source": w.source}


def main(argv: list[str] | None = None) -> None:
    from geneval.features.inception import FEATURES_NAME
    from geneval.metrics.stats import GaussianStats
    from geneval.zoo import pack_reference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--work", type=Path, required=True, help="folder for resumable feature chunks")
    p.add_argument("--limit", type=int, default=None, help="use the first N images only")
    p.add_argument("--pr-subset", type=int, default=1000, help="pool3 features kept (first M) for precision/recall")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    t0 = time.time()
    pool3, winfo = extract_chunks(args.split, args.work, args.limit, args.threads)
    stats = GaussianStats.from_features(pool3.astype(np.float64))
    n = len(pool3)
    name = f"fashion-mnist-{args.split}-32-tf.npz"
    meta = {
        "mode": "tf",
        "features": FEATURES_NAME,
        "precision": "exact",
        "n": n,
        **winfo,
        "source": f"fashion-mnist:{args.split} (Debian dataset-fashion-mnist), first {n} images in file order",
        "preprocessing": "28x28 uint8 zero-padded to 32x32, gray repeated to RGB, TF1 bilinear resize to 299 (mode tf)",
        "pr_subset": min(args.pr_subset, n),
    }
    out = pack_reference(HERE / name, stats.mu, stats.sigma, pool3[: args.pr_subset], meta)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    man_path = HERE / "manifest.json"
    man = json.loads(man_path.read_text()) if man_path.exists() else {"files": {}}
    man["files"][name] = {
        **{k: meta[k] for k in ("source", "n", "mode", "features", "precision", "preprocessing", "weights_sha256", "pr_subset")},
        "sha256": digest,
        "bytes": out.stat().st_size,
        "stored": "mu float64; sigma upper triangle float32 (symmetric, N-1 normalised); pool3_subset float16 (first pr_subset rows)",
        "expanded_on_first_use": "geneval.zoo.demo_reference() writes a standard reference .npz (mu, sigma float64, geneval_pool3) to the cache",
        "build_command": "python reference_stats/build_reference.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "build_wall_s_this_invocation": round(time.time() - t0, 1),
    }
    man_path.write_text(json.dumps(man, indent=2, sort_keys=True) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, N={n})", file=sys.stderr)


if __name__ == "__main__":
    main()

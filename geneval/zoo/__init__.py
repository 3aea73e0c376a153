"""The demo zoo: small Fashion-MNIST models trained by this project, and the shipped reference.

- `demo_model_path()`: class-conditional ADM UNet (CFG null class), native format.
- `demo_classifier_path()`: ADM noisy classifier for classifier guidance, native format.
- `demo_reference(mode)`: the Fashion-MNIST test reference in geneval's reference format. The
  repository ships a compact file (`reference_stats/`: mean in float64, the covariance's upper
  triangle in float32, a subset of pool3 features in float16 for precision/recall); on first use
  it is expanded into a standard reference `.npz` in the geneval cache (≈1 s, no Inception run).

Training: `python -m geneval.zoo.train_demo --help` (see train_demo.py).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from geneval.errors import GenevalError

CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
DEMO_UNET = "demo-unet-fmnist"
DEMO_CLASSIFIER = "demo-classifier-fmnist"
DEMO_VQD = "demo-vqd"  # `--model demo-vqd`: VQ-Diffusion on the VQ demo autoencoder's tokens (train_vqd_demo.py)
DEMO_LDM = "demo-ldm"  # `--model demo-ldm`: tiny DiT on the KL demo autoencoder's latents (train_latent_demo.py)


def _reference_dir() -> Path:
    """Where the shipped reference statistics are: $GENEVAL_REFERENCE_STATS, else reference_stats/
    at the repository root (checkouts, editable installs), else <prefix>/share/geneval/reference_stats
    (where a wheel installs them, see pyproject's data-files)."""
    env = os.environ.get("GENEVAL_REFERENCE_STATS")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2] / "reference_stats"
    if (repo / "manifest.json").exists():
        return repo
    installed = Path(sys.prefix) / "share" / "geneval" / "reference_stats"
    return installed if (installed / "manifest.json").exists() else repo


REFERENCE_DIR = _reference_dir()
DEMO_REFERENCE = "fashion-mnist-test-32-tf.npz"
EXPANDED_VERSION = 1


def _checkpoint(name: str) -> Path:
    p = CHECKPOINT_DIR / name
    if not (p / "model.safetensors").exists():
        raise GenevalError(f"demo checkpoint {name} is missing from {CHECKPOINT_DIR}; train it with python -m geneval.zoo.train_demo")
    return p


def demo_model_path() -> Path:
    """Folder of the shipped demo UNet (native format)."""
    return _checkpoint(DEMO_UNET)


def demo_classifier_path() -> Path:
    """Folder of the shipped demo noisy classifier (native format)."""
    return _checkpoint(DEMO_CLASSIFIER)


def demo_ldm_path() -> Path:
    """Folder of the shipped latent demo (tiny DiT + the ae-kl-fmnist decoder; load with
    geneval.sampling.latent.load_demo_ldm)."""
    p = CHECKPOINT_DIR / DEMO_LDM
    if not (p / "model.safetensors").exists():
        raise GenevalError(f"demo checkpoint {DEMO_LDM} is missing from {CHECKPOINT_DIR}; train it with python -m geneval.zoo.train_latent_demo")
    return p


def demo_vqd_path() -> Path:
    """Folder of the shipped discrete demo (VQ-Diffusion transformer over ae-vq-fmnist tokens; load with
    geneval.models.discrete_generator.load_vqdiffusion("demo-vqd"))."""
    p = CHECKPOINT_DIR / DEMO_VQD
    if not (p / "model.safetensors").exists():
        raise GenevalError(f"demo checkpoint {DEMO_VQD} is missing from {CHECKPOINT_DIR}; train it with python -m geneval.zoo.train_vqd_demo")
    return p


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def manifest() -> dict[str, Any]:
    """reference_stats/manifest.json (file → source, N, preprocessing, weights hash, sha256)."""
    p = REFERENCE_DIR / "manifest.json"
    if not p.exists():
        raise GenevalError(f"reference manifest not found: {p}")
    return json.loads(p.read_text(encoding="utf-8"))


def pack_reference(out: Path, mu: np.ndarray, sigma: np.ndarray, pool3_subset: np.ndarray | None, meta: dict[str, Any]) -> Path:
    """Write the compact shipped form of a pool3 reference (see module docstring).

    Args:
        out: destination .npz.
        mu: (d,) mean, stored float64.
        sigma: (d, d) covariance; its upper triangle is stored float32.
        pool3_subset: (m, d) features for precision/recall, stored float16 (or None).
        meta: provenance (mode, features, weights_sha256, n, source, preprocessing).
    """
    iu = np.triu_indices(sigma.shape[0])
    arrays = {
        "mu": np.asarray(mu, np.float64),
        "sigma_triu": np.asarray(sigma, np.float64)[iu].astype(np.float32),
        "meta": np.asarray(json.dumps(meta, sort_keys=True)),
    }
    if pool3_subset is not None:
        arrays["pool3_subset"] = np.asarray(pool3_subset).astype(np.float16)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, out)
    return out


def unpack_reference(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(mu float64, sigma float64 symmetric, pool3 subset float32 or None, meta) of a compact file."""
    with np.load(path, allow_pickle=False) as z:
        mu = z["mu"].astype(np.float64)
        tri = z["sigma_triu"].astype(np.float64)
        feats = z["pool3_subset"].astype(np.float32) if "pool3_subset" in z.files else None
        meta = json.loads(str(z["meta"]))
    d = mu.shape[0]
    if tri.shape != (d * (d + 1) // 2,):
        raise GenevalError(f"{path}: sigma_triu has {tri.shape} entries, expected {d * (d + 1) // 2}")
    sigma = np.zeros((d, d), np.float64)
    sigma[np.triu_indices(d)] = tri
    sigma = sigma + np.triu(sigma, 1).T
    return mu, sigma, feats, meta


def demo_reference(mode: str = "tf", name: str = DEMO_REFERENCE) -> Path:
    """A standard reference .npz for the shipped Fashion-MNIST statistics, expanded into the cache.

    Args:
        mode: the run's preprocessing mode; the shipped statistics are mode tf only.
        name: file in reference_stats/.
    """
    from geneval.sources.reference import write_reference
    from geneval.weights import cache_dir

    src = REFERENCE_DIR / name
    if not src.exists():
        try:
            want = f" (sha256 {manifest()['files'][name]['sha256']})"
        except (GenevalError, KeyError):
            want = ""
        raise GenevalError(
            f"shipped reference {name}{want} not found in {REFERENCE_DIR}: copy reference_stats/ from the geneval "
            f"repository there (or set GENEVAL_REFERENCE_STATS), or build one with "
            f"`geneval ref build fashion-mnist:test --out ref.npz` and pass --ref"
        )
    entry = manifest().get("files", {}).get(name)
    if entry is None:
        raise GenevalError(f"{name} is not listed in {REFERENCE_DIR / 'manifest.json'}")
    if entry.get("mode") != mode:
        raise GenevalError(
            f"the shipped demo reference was built in mode {entry.get('mode')!r}, this run uses {mode!r}: "
            f"build one with `geneval ref build fashion-mnist:test --mode {mode} --out ref.npz` and pass --ref"
        )
    digest = _sha256(src)
    if digest != entry["sha256"]:
        raise GenevalError(f"{src} does not match its manifest sha256 ({digest[:12]}… != {entry['sha256'][:12]}…); restore it from git")
    out = cache_dir(create=True) / "reference_stats" / f"{Path(name).stem}-{digest[:16]}-v{EXPANDED_VERSION}.npz"
    if out.exists():
        return out
    mu, sigma, feats, meta = unpack_reference(src)
    meta = {**meta, "expanded_from": str(src), "expanded_from_sha256": digest}
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_reference(out, {"pool3": (mu, sigma)}, meta, pool3=feats)


def export_checkpoint(kind: str, work: Path, out: Path, fp16: bool = False) -> Path:
    """Save the EMA weights of a training run (train_demo) in geneval's native format.

    Args:
        kind: "unet" or "classifier".
        work: the training folder (state.pt, train_meta.json).
        out: destination checkpoint folder.
        fp16: store the weights as float16.
    """
    import torch

    from geneval.models.classifier import EncoderUNet
    from geneval.models.formats import save_native
    from geneval.models.unet import UNetModel
    from geneval.sources.datasets import FASHION_MNIST_CLASSES
    from geneval.zoo import train_demo as td

    state = torch.load(work / "state.pt", map_location="cpu", weights_only=True)
    meta = json.loads((work / "train_meta.json").read_text())
    meta["exported_dtype"] = "float16" if fp16 else "float32"
    if kind == "unet":
        net: torch.nn.Module = UNetModel(td.DEMO_UNET)
        cfg, diffusion, extra = td.DEMO_UNET, td.DEMO_DIFFUSION, {"null_class": td.NUM_CLASSES}
    else:
        net = EncoderUNet(td.DEMO_CLASSIFIER)
        cfg, diffusion, extra = td.DEMO_CLASSIFIER, None, {}
    net.load_state_dict(state["ema"])
    if fp16:
        net = net.half()
    return save_native(net, cfg, out, diffusion, class_names=list(FASHION_MNIST_CLASSES), training=meta, **extra)


# `geneval run` without --model: N=500 at 10 DDIM steps. On 2 free CPU cores TF-Inception runs at ~5 img/s
# and dominates; the whole demo took 2 min 50 s from a fresh clone (README, "What the demo prints").
DEMO_RUN_DEFAULTS: dict[str, Any] = {"metrics": "fid,pr", "n": 500, "steps": 10, "batch_size": 100}

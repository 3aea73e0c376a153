"""Train the demo autoencoders `geneval recon` uses when no `--ae` is given.

Two tiny LDM-layout autoencoders (f4: 32×32×3 → 8×8×4), trained on CPU in minutes:
  - ``kl``: AutoencoderKL, loss = L1 + kl_weight · KL(q(z|x) ‖ N(0, I)) (sum over latent
    dims, mean over the batch, LDM's form) — no LPIPS and no GAN term, so reconstructions are
    blurrier than LDM's; that is what a few CPU minutes buy.
  - ``vq``: VQ autoencoder with a 128-code VQGAN quantizer, loss = L1 + codebook + 0.25·commitment,
    codebook initialised from encoder outputs and dead codes restarted from encoder outputs
    every `--restart-every` steps (both only during training).

Data: Fashion-MNIST train zero-padded to 32×32 and repeated to RGB, mixed 3:1 with random
32×32 RGB patches of scikit-image's colour sample images (at scales 1/1, 1/2, 1/4).

Usage (what produced the shipped checkpoints is recorded in their config.json):
    python -m geneval.zoo.train_autoencoders kl --minutes 8 --out geneval/zoo/checkpoints/ae-kl-fmnist
    python -m geneval.zoo.train_autoencoders vq --minutes 8 --out geneval/zoo/checkpoints/ae-vq-fmnist
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geneval.models.ae_formats import save_native_autoencoder
from geneval.models.autoencoder import AEConfig, build_autoencoder, count_parameters
from geneval.zoo.training import WallClock, optimizer_step

# The demo trunk: ~0.24M parameters (about 1 MB as float32 safetensors).
DEMO_TRUNK = dict(
    ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), in_channels=3, out_ch=3, resolution=32, z_channels=4, embed_dim=4, num_groups=8
)
DEMO_KL = AEConfig(kind="kl", **DEMO_TRUNK)
DEMO_VQ = AEConfig(kind="vq", n_embed=128, **DEMO_TRUNK)
SKIMAGE_SHARE = 0.25


def skimage_patches(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """n random size×size RGB crops (uint8 NHWC) of scikit-image's colour images at scales 1, 1/2, 1/4."""
    from geneval.sources.datasets import load_skimage

    pyramids = []
    for img in load_skimage():
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float()
        for s in (1, 2, 4):
            scaled = F.avg_pool2d(t, s) if s > 1 else t
            pyramids.append(scaled[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy())
    out = np.empty((n, size, size, 3), np.uint8)
    which = rng.integers(0, len(pyramids), n)
    for i, k in enumerate(which):  # setup only, n small: a loop is fine here
        img = pyramids[k]
        y = rng.integers(0, img.shape[0] - size + 1)
        x = rng.integers(0, img.shape[1] - size + 1)
        out[i] = img[y : y + size, x : x + size]
    return out


def training_data(seed: int, n_patches: int = 20000) -> tuple[torch.Tensor, torch.Tensor]:
    """(Fashion-MNIST train as RGB, skimage patches), both uint8 NCHW."""
    from geneval.sources.datasets import load_fashion_mnist

    fm = torch.from_numpy(load_fashion_mnist("train", pad_to=32).images).permute(0, 3, 1, 2).repeat(1, 3, 1, 1)
    patches = torch.from_numpy(skimage_patches(n_patches, 32, np.random.default_rng(seed))).permute(0, 3, 1, 2)
    return fm.contiguous(), patches.contiguous()


def _batch(fm: torch.Tensor, patches: torch.Tensor, bs: int, g: torch.Generator) -> torch.Tensor:
    n_sk = int(round(bs * SKIMAGE_SHARE))
    a = fm[torch.randint(0, fm.shape[0], (bs - n_sk,), generator=g)]
    b = patches[torch.randint(0, patches.shape[0], (n_sk,), generator=g)]
    return torch.cat([a, b]).float() / 127.5 - 1.0


def train(
    kind: str,
    minutes: float,
    max_steps: int,
    batch_size: int,
    lr: float,
    kl_weight: float,
    restart_every: int,
    seed: int,
    threads: int,
    log_every: int = 50,
):
    """Train one demo autoencoder; returns (model, training record)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = DEMO_KL if kind == "kl" else DEMO_VQ
    model = build_autoencoder(cfg)
    fm, patches = training_data(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    if kind == "vq":  # data-dependent codebook init: codes start where the encoder puts its outputs
        with torch.no_grad():
            h = model.encode(_batch(fm, patches, 256, g)).permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
            model.quantize.embedding.weight.copy_(h[torch.randperm(h.shape[0], generator=g)[: cfg.n_embed]])
    usage = torch.zeros(cfg.n_embed or 1)
    losses: list[float] = []
    restarts = 0
    clock = WallClock(minutes)
    step = 0
    while step < max_steps and clock.left():
        x = _batch(fm, patches, batch_size, g)
        if kind == "kl":
            rec, post = model(x, generator=g)
            rec_loss = (rec - x).abs().mean()
            loss = rec_loss + kl_weight * post.kl().mean()
        else:
            rec, qloss, idx = model(x)
            rec_loss = (rec - x).abs().mean()
            loss = rec_loss + qloss
            usage += torch.bincount(idx.flatten(), minlength=cfg.n_embed).float()
        optimizer_step(opt, loss)
        losses.append(rec_loss.item())
        step += 1
        if kind == "vq" and step % restart_every == 0:
            dead = (usage == 0).nonzero().flatten()
            if len(dead):
                with torch.no_grad():
                    h = model.encode(x).permute(0, 2, 3, 1).reshape(-1, cfg.embed_dim)
                    pick = torch.randint(0, h.shape[0], (len(dead),), generator=g)
                    model.quantize.embedding.weight[dead] = h[pick]
                restarts += len(dead)
            usage.zero_()
        if step % log_every == 0:
            print(f"[{kind}] step {step} l1 {np.mean(losses[-log_every:]):.4f} {clock.wall_s():.0f}s", file=sys.stderr, flush=True)
    wall = clock.wall_s()
    record = {
        "command": "python -m geneval.zoo.train_autoencoders " + " ".join(sys.argv[1:]),
        "steps": step,
        "batch_size": batch_size,
        "images_seen": step * batch_size,
        "lr": lr,
        "loss": "L1 + %g*KL" % kl_weight if kind == "kl" else "L1 + codebook + 0.25*commitment",
        "gan": False,
        "perceptual_loss": False,
        "final_l1_last100": float(np.mean(losses[-100:])) if losses else None,
        "wall_s": round(wall, 1),
        "threads": threads,
        "seed": seed,
        "device": "cpu",
        "data": f"fashion-mnist:train padded to 32x32, repeated to RGB ({1 - SKIMAGE_SHARE:.0%}) + "
        f"skimage colour images cropped to 32x32 patches at scales 1,1/2,1/4 ({SKIMAGE_SHARE:.0%})",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "parameters": count_parameters(model),
    }
    if kind == "vq":
        record["dead_code_restarts"] = restarts
        record["restart_every"] = restart_every
    return model.eval(), record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("kl", "vq"))
    p.add_argument("--out", required=True, type=Path, help="output folder (config.json + model.safetensors)")
    p.add_argument("--minutes", type=float, default=8.0, help="wall-clock budget")
    p.add_argument("--max-steps", type=int, default=100000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--restart-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    model, record = train(a.kind, a.minutes, a.max_steps, a.batch_size, a.lr, a.kl_weight, a.restart_every, a.seed, a.threads)
    save_native_autoencoder(model, a.out, training=record)
    print(f"saved {a.out}: {record['steps']} steps in {record['wall_s']} s, final L1 {record['final_l1_last100']:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()

"""Train the demo zoo: a small class-conditional ADM UNet (with CFG label dropout) and an ADM
noisy classifier on Fashion-MNIST padded to 32×32, on whatever device is available.

Usage (what produced the shipped checkpoints is recorded in their config.json):
    python -m geneval.zoo.train_demo unet --minutes 35 --work /tmp/zoo-unet
    python -m geneval.zoo.train_demo classifier --minutes 10 --work /tmp/zoo-clf
    python -m geneval.zoo.train_demo export-unet --work /tmp/zoo-unet --out geneval/zoo/checkpoints/demo-unet-fmnist

Training is bounded by wall-clock time (`--minutes`) as well as `--max-steps`, checkpoints the
state every `--save-every` seconds into `--work` (resumable), and logs the loss to stderr and to
`--work/log.jsonl`. Sampling uses the EMA weights.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geneval.models.classifier import ClassifierConfig, EncoderUNet
from geneval.models.unet import UNetConfig, UNetModel, count_parameters
from geneval.sampling.schedules import DiffusionConfig
from geneval.sources.datasets import FASHION_MNIST_CLASSES, load_fashion_mnist
from geneval.zoo import training

NUM_CLASSES = len(FASHION_MNIST_CLASSES)  # 10 real classes; index 10 is the CFG null class

# The demo UNet: ~1.2M parameters, cheap enough to sample 1000 images on 2 CPU cores in minutes.
DEMO_UNET = UNetConfig(
    image_size=32,
    in_channels=1,
    out_channels=1,
    model_channels=32,
    num_res_blocks=1,
    attention_resolutions=(8,),
    channel_mult=(1, 2, 2),
    num_classes=NUM_CLASSES + 1,
    num_head_channels=32,
    use_scale_shift_norm=True,
)
# The demo noisy classifier: ADM's EncoderUNet (attention pooling), same widths.
DEMO_CLASSIFIER = ClassifierConfig(
    image_size=32,
    in_channels=1,
    model_channels=32,
    out_channels=NUM_CLASSES,
    num_res_blocks=1,
    attention_resolutions=(8,),
    channel_mult=(1, 2, 2),
    num_head_channels=32,
    use_scale_shift_norm=True,
    resblock_updown=True,
)
DEMO_DIFFUSION = DiffusionConfig(num_timesteps=1000, beta_schedule="cosine", prediction_type="eps", variance_type="fixed_small")


def _data(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_fashion_mnist("train", pad_to=32)
    x = torch.from_numpy(ds.images).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # [-1, 1]
    return x.to(device), torch.from_numpy(ds.labels).to(device)


def _alphas_cumprod(device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.cumprod(1.0 - DEMO_DIFFUSION.betas())).float().to(device)


def _train(args: argparse.Namespace, kind: str) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    x_all, y_all = _data(device)
    abar = _alphas_cumprod(device)
    if kind == "unet":
        net = UNetModel(DEMO_UNET).to(device)
    else:
        net = EncoderUNet(DEMO_CLASSIFIER).to(device)
    ema = training.ema_init(net)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0 if kind == "unet" else 0.05)
    step, wall_done = 0, 0.0
    ckpt = work / "state.pt"
    st = training.resume_state(ckpt, net, opt, map_location=device)
    if st is not None:
        ema = st["ema"]
        step, wall_done = int(st["step"]), float(st["wall_s"])
    gen = torch.Generator(device=device).manual_seed(args.seed + step)
    clock, losses = training.WallClock(args.minutes, wall_done, args.save_every), []
    net.train()

    def save() -> None:
        training.save_state(ckpt, training.training_state(net, ema, opt, step, clock.wall_s()))

    while step < args.max_steps and clock.left():
        idx = torch.randint(0, len(x_all), (args.batch,), device=device, generator=gen)
        x0, y = x_all[idx], y_all[idx]
        t = torch.randint(0, DEMO_DIFFUSION.num_timesteps, (args.batch,), device=device, generator=gen)
        noise = torch.randn(x0.shape, device=device, generator=gen)
        a = abar[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if kind == "unet":
            drop = torch.rand(args.batch, device=device, generator=gen) < args.label_dropout
            y_in = torch.where(drop, torch.full_like(y, NUM_CLASSES), y)  # null class for CFG
            loss = F.mse_loss(net(xt, t, y_in), noise)
        else:
            # ADM trains its noisy classifier on the full range of t (here capped so t ~ U[0, T)).
            loss = F.cross_entropy(net(xt, t), y)
        lr = training.train_step(net, opt, ema, loss, step, args.lr, args.warmup, args.ema)
        step += 1
        losses.append(float(loss.detach()))
        if step % args.log_every == 0:
            training.log_record(work, {"step": step, "loss": float(np.mean(losses[-args.log_every :])), "lr": lr, "wall_s": round(clock.wall_s(), 1)})
        clock.save_if_due(save)
    wall = clock.wall_s()
    training.save_state(ckpt, training.training_state(net, ema, opt, step, wall))
    final = float(np.mean(losses[-200:])) if losses else math.nan
    meta = {
        "kind": kind,
        **training.run_record("geneval.zoo.train_demo", step, args.batch, wall),
        "final_loss_mean_last200": final,
        "lr": args.lr,
        "warmup": args.warmup,
        "ema_decay": args.ema,
        "label_dropout": args.label_dropout if kind == "unet" else None,
        "seed": args.seed,
        "device": str(device),
        "threads": args.threads,
        "torch": torch.__version__,
        "host": platform.machine(),
        "params": count_parameters(net),
        "data": "Debian dataset-fashion-mnist train split (60000), zero-padded 28->32, scaled to [-1, 1]",
    }
    (work / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    training.log_record(work, {"done": True, **meta})


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m geneval.zoo.train_demo", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["unet", "classifier", "export-unet", "export-classifier"])
    p.add_argument("--work", required=True, help="folder for the resumable training state and log")
    p.add_argument("--out", help="export: destination checkpoint folder")
    training.add_loop_options(p, minutes=35.0, batch=64, lr=5e-4, ema=0.998, threads=2, save_every=300.0, log_every=50)
    p.add_argument("--label-dropout", type=float, default=0.15)
    p.add_argument("--device", default=None)
    p.add_argument("--fp16", action="store_true", help="export: store weights as float16")
    args = p.parse_args(argv)
    if args.what in ("unet", "classifier"):
        _train(args, args.what)
    else:
        from geneval.zoo import export_checkpoint

        export_checkpoint(args.what.split("-")[1], Path(args.work), Path(args.out), fp16=args.fp16)


if __name__ == "__main__":
    main()

"""Train the demo VQ-Diffusion model: a small class-conditional token transformer over the 8×8 token
grids (128 codes) that the shipped VQ autoencoder (ae-vq-fmnist) gives Fashion-MNIST train images.

Usage (what produced the shipped checkpoint is recorded in its config.json):
    python -m geneval.zoo.train_vqd_demo train --work /tmp/vqd --minutes 25 --threads 1
    python -m geneval.zoo.train_vqd_demo export --work /tmp/vqd --out geneval/zoo/checkpoints/demo-vqd

Loss (VQ-Diffusion, x0 parametrisation): t ~ U{0..T−1}; x_t ~ q(x_t|x0) by Gumbel sampling;
KL(q(x_{t−1}|x_t,x0) ‖ p_θ(x_{t−1}|x_t)) (the decoder NLL at t = 0) plus the auxiliary x0 loss
KL(x0 ‖ p_θ(x0|x_t)) weighted by aux·(2 − t/T) (official `adaptive_auxiliary_loss`). Labels are
replaced by the null class (10, a learned row as in imagenet_learnable) with probability
--label-dropout, for classifier-free guidance. Training is bounded by --minutes and --max-steps,
resumable from --work/state.pt; the EMA weights are exported.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geneval.models.vqdiffusion import VQDiffusionConfig, VQDiffusionTransformer, count_parameters
from geneval.sampling import discrete as D
from geneval.zoo import training

NUM_CLASSES = 10  # Fashion-MNIST; label 10 is the learned null class
TOKENIZER = "demo-vq"  # geneval.models.ae_formats demo name of ae-vq-fmnist
DEMO_T = 100

DEMO_VQD = VQDiffusionConfig(
    num_tokens=128,
    content_hw=(8, 8),
    pos_hw=(8, 8),
    n_embd=96,
    n_head=4,
    n_layer=4,
    mlp_hidden_times=4,
    mlp_type="fc",
    activation="GELU2",
    attn_type="selfcondition",
    class_number=NUM_CLASSES + 1,
    num_classes=NUM_CLASSES,
    diffusion_step=DEMO_T,
)


@torch.no_grad()
def tokenize_fashion_mnist(split: str = "train", batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (N, 64) int64, labels (N,)) of Fashion-MNIST through the shipped VQ demo autoencoder."""
    from geneval.models.ae_formats import load_autoencoder
    from geneval.sources.datasets import load_fashion_mnist

    ae = load_autoencoder(TOKENIZER).model
    ds = load_fashion_mnist(split, pad_to=32)
    out = []
    for i in range(0, len(ds.images), batch):
        x = torch.from_numpy(ds.images[i : i + batch]).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        out.append(ae.quantize.codes(ae.encode(x.repeat(1, 3, 1, 1))).flatten(1))
    return torch.cat(out), torch.from_numpy(ds.labels)


def vb_loss(
    net: torch.nn.Module, sched: D.MaskSchedule, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, gen: torch.Generator, aux: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """VQ-Diffusion's training loss per token (see module docstring)."""
    n = sched.num_classes + 1
    log_x0 = D.index_to_log_onehot(x0, n)
    x_t = D.gumbel_sample(D.q_pred(sched, log_x0, t), torch.rand(log_x0.shape, generator=gen))
    log_pred = D.log_x0_from_logits(net(x_t, t, y))
    log_model = D.q_posterior(sched, log_pred, x_t, t)
    log_true = D.q_posterior(sched, log_x0, x_t, t)
    kl = (log_true.exp() * (log_true - log_model)).sum(1)
    nll = -(log_x0.exp() * log_model).sum(1)
    first = (t == 0).float()[:, None]
    main = first * nll + (1 - first) * kl
    kl_aux = (log_x0[:, :-1].exp() * (log_x0[:, :-1] - log_pred[:, :-1])).sum(1)
    aux_term = first * nll + (1 - first) * kl_aux
    weight = (2.0 - t.float() / sched.num_timesteps)[:, None]
    loss = (main + aux * weight * aux_term).mean()
    return loss, {"kl": float(main.mean()), "x0_ce": float(kl_aux.mean())}


def _train(args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tok_file = work / "tokens.pt"
    if tok_file.exists():
        st = torch.load(tok_file, weights_only=True)
        tokens, labels = st["tokens"], st["labels"]
    else:
        t0 = time.time()
        tokens, labels = tokenize_fashion_mnist("train")
        torch.save({"tokens": tokens, "labels": labels}, tok_file)
        training.log_record(work, {"tokenized": len(tokens), "wall_s": round(time.time() - t0, 1)})
    sched = D.mask_schedule(DEMO_T, DEMO_VQD.num_tokens)
    net = VQDiffusionTransformer(DEMO_VQD)
    ema = training.ema_init(net)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, betas=(0.9, 0.96), weight_decay=0.01)
    step, wall_done, curve = 0, 0.0, []
    ckpt = work / "state.pt"
    st = training.resume_state(ckpt, net, opt)
    if st is not None:
        ema, step, wall_done, curve = st["ema"], int(st["step"]), float(st["wall_s"]), list(st["curve"].tolist())
    gen = torch.Generator().manual_seed(args.seed + step)
    clock, window = training.WallClock(args.minutes, wall_done, args.save_every), []

    def save() -> None:
        training.save_state(ckpt, training.training_state(net, ema, opt, step, clock.wall_s(), curve=torch.tensor(curve, dtype=torch.float64)))

    net.train()
    while step < args.max_steps and clock.left():
        idx = torch.randint(0, len(tokens), (args.batch,), generator=gen)
        x0, y = tokens[idx], labels[idx]
        y = torch.where(torch.rand(args.batch, generator=gen) < args.label_dropout, torch.full_like(y, NUM_CLASSES), y)
        t = torch.randint(0, DEMO_T, (args.batch,), generator=gen)
        loss, parts = vb_loss(net, sched, x0, y, t, gen, args.aux)
        lr = training.train_step(net, opt, ema, loss, step, args.lr, args.warmup, args.ema)
        step += 1
        window.append([float(loss.detach()), parts["kl"], parts["x0_ce"]])
        if step % args.log_every == 0:
            m = np.mean(window, axis=0)
            window = []
            curve.append([step, *m.tolist()])
            training.log_record(
                work,
                {
                    "step": step,
                    "loss": round(m[0], 5),
                    "kl": round(m[1], 5),
                    "x0_ce": round(m[2], 5),
                    "lr": lr,
                    "wall_s": round(clock.wall_s(), 1),
                },
            )
        clock.save_if_due(save)
    save()
    wall = clock.wall_s()
    meta = {
        **training.run_record("geneval.zoo.train_vqd_demo", step, args.batch, wall),
        "lr": args.lr,
        "warmup": args.warmup,
        "betas": [0.9, 0.96],
        "weight_decay": 0.01,
        "ema_decay": args.ema,
        "label_dropout": args.label_dropout,
        "aux_weight": args.aux,
        "loss": "VQ-Diffusion vb (KL of posteriors; NLL at t=0) + aux*(2-t/T)*KL(x0||p(x0|x_t))",
        "seed": args.seed,
        "threads": args.threads,
        "device": "cpu",
        "torch": torch.__version__,
        "host": platform.machine(),
        "params": count_parameters(net),
        "tokenizer": TOKENIZER,
        "data": "Debian dataset-fashion-mnist train split (60000), zero-padded 28->32, repeated to RGB, [-1,1], "
        "tokenised by ae-vq-fmnist (8x8 grid of 128 codes)",
        "loss_curve_every": args.log_every,
        "loss_curve": [[int(c[0]), *(round(v, 5) for v in c[1:])] for c in curve],
        "loss_curve_columns": ["step", "loss", "kl", "x0_ce"],
    }
    (work / "train_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    training.log_record(work, {"done": True, "steps": step, "wall_s": meta["wall_s"]})


def export(work: Path, out: Path, sampling_defaults: dict[str, Any] | None = None) -> Path:
    """Write the EMA weights of a training run as the native demo-vqd folder."""
    from geneval.models.discrete_generator import save_native_vqdiffusion
    from geneval.sources.datasets import FASHION_MNIST_CLASSES

    st = torch.load(work / "state.pt", weights_only=True)
    net = VQDiffusionTransformer(DEMO_VQD)
    net.load_state_dict(st["ema"])
    meta = json.loads((work / "train_meta.json").read_text())
    return save_native_vqdiffusion(
        net,
        D.mask_schedule(DEMO_T, DEMO_VQD.num_tokens),
        out,
        tokenizer=TOKENIZER,
        class_names=list(FASHION_MNIST_CLASSES),
        training=meta,
        sampling_defaults=sampling_defaults,
    )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m geneval.zoo.train_vqd_demo", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["train", "export"])
    p.add_argument("--work", required=True, help="folder for tokens, the resumable state and the log")
    p.add_argument("--out", help="export: destination checkpoint folder")
    training.add_loop_options(p, minutes=25.0, batch=64, lr=1e-3, ema=0.995, threads=1, save_every=120.0, log_every=50)
    p.add_argument("--aux", type=float, default=1.0, help="weight of the auxiliary x0 loss")
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--truncation-rate", type=float, default=None, help="export: default truncation rate recorded")
    p.add_argument("--skip", type=int, default=None, help="export: default fast-skip recorded")
    p.add_argument("--guidance-s", type=float, default=None, help="export: default guidance (s convention) recorded")
    args = p.parse_args(argv)
    if args.what == "train":
        _train(args)
    else:
        if not args.out:
            p.error("export needs --out")
        defaults = {
            k: v for k, v in {"truncation_rate": args.truncation_rate, "skip": args.skip, "guidance_s": args.guidance_s}.items() if v is not None
        }
        export(Path(args.work), Path(args.out), defaults)


if __name__ == "__main__":
    main()

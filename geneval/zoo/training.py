"""The loop pieces the demo training scripts share (train_demo, train_latent_demo, train_vqd_demo,
train_autoencoders): linear learning-rate warmup, one (clipped) optimiser step, the EMA of the weights
with its warmup decay, the JSON-lines log, the resumable training state written atomically, and the
wall-clock budget that counts the time of earlier, resumed runs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch


def warmup_lr(opt: torch.optim.Optimizer, base_lr: float, step: int, warmup: int) -> float:
    """Set every parameter group's learning rate to base_lr · min(1, (step + 1) / warmup); returns it.

    Args:
        opt: the optimiser.
        base_lr: the learning rate after warmup.
        step: optimiser steps taken so far (0 before the first).
        warmup: steps of the linear warmup.
    """
    lr = base_lr * min(1.0, (step + 1) / warmup)
    for g in opt.param_groups:
        g["lr"] = lr
    return lr


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, clip: Iterable[torch.Tensor] | None = None, max_norm: float = 1.0) -> None:
    """zero_grad, backward, clip the gradients of `clip` to total norm `max_norm` (when given), step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(clip, max_norm)
    opt.step()


def ema_init(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The EMA state at the start: a detached copy of the network's state dict."""
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@torch.no_grad()
def ema_update(ema: dict[str, torch.Tensor], net: torch.nn.Module, max_decay: float, step: int) -> None:
    """ema ← decay·ema + (1 − decay)·weights in place, decay = min(max_decay, (1 + step) / (10 + step)).

    Floating-point entries are averaged; others (integer buffers) are copied.

    Args:
        ema: the EMA state (see ema_init), updated in place.
        net: the network after its optimiser step.
        max_decay: the decay once warmed up.
        step: optimiser steps taken, this one included.
    """
    decay = min(max_decay, (1 + step) / (10 + step))
    for k, v in net.state_dict().items():
        if v.dtype.is_floating_point:
            ema[k].mul_(decay).add_(v.detach(), alpha=1 - decay)
        else:
            ema[k].copy_(v)


def train_step(
    net: torch.nn.Module,
    opt: torch.optim.Optimizer,
    ema: dict[str, torch.Tensor],
    loss: torch.Tensor,
    step: int,
    lr: float,
    warmup: int,
    ema_decay: float,
) -> float:
    """One step of the demo loop: warmup learning rate, optimiser step with the gradients clipped to norm 1,
    EMA update; returns the learning rate used.

    Args:
        step: optimiser steps taken before this one (the caller counts this one afterwards).
        lr: the learning rate after warmup; warmup: its warmup steps (see warmup_lr).
        ema_decay: the EMA's decay once warmed up (see ema_update).
    """
    used = warmup_lr(opt, lr, step, warmup)
    optimizer_step(opt, loss, clip=net.parameters())
    ema_update(ema, net, ema_decay, step + 1)
    return used


def log_record(work: Path, rec: dict[str, Any]) -> None:
    """Print a record as one JSON line to stderr and append it to work/log.jsonl."""
    print(json.dumps(rec), file=sys.stderr, flush=True)
    with open(work / "log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(rec) + "\n")


def run_record(module: str, steps: int, batch_size: int, wall_s: float) -> dict[str, Any]:
    """The head of a training record (train_meta.json): the command line, steps, batch size, wall-clock seconds."""
    return {"command": f"python -m {module} " + " ".join(sys.argv[1:]), "steps": steps, "batch_size": batch_size, "wall_s": round(wall_s, 1)}


def training_state(
    net: torch.nn.Module, ema: dict[str, torch.Tensor], opt: torch.optim.Optimizer, step: int, wall_s: float, **extra: Any
) -> dict[str, Any]:
    """The resumable state: model, ema, opt, step, wall_s (and any extra entries)."""
    return {"model": net.state_dict(), "ema": ema, "opt": opt.state_dict(), "step": step, "wall_s": wall_s, **extra}


def save_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save the state atomically: to path with the suffix .tmp, then renamed over path."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def resume_state(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, map_location: Any = None) -> dict[str, Any] | None:
    """Load a saved training state's model and optimiser into net and opt; the whole state, or None when path does not exist."""
    if not path.exists():
        return None
    st = torch.load(path, map_location=map_location, weights_only=True)
    net.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    return st


class WallClock:
    """The wall-clock budget of a resumable run and its periodic-save timer.

    Args:
        minutes: the budget of the whole training, earlier runs included.
        done_s: seconds spent by earlier runs (0 on a fresh start).
        save_every: seconds between periodic state saves.
    """

    def __init__(self, minutes: float, done_s: float = 0.0, save_every: float = float("inf")) -> None:
        self.start = time.time()
        self.last_save = time.time()
        self.done_s = done_s
        self.budget = minutes * 60.0 - done_s
        self.save_every = save_every

    def left(self) -> bool:
        """Whether this run's share of the budget is not spent yet."""
        return time.time() - self.start < self.budget

    def wall_s(self) -> float:
        """Seconds of training so far, earlier runs included."""
        return self.done_s + time.time() - self.start

    def save_if_due(self, save: Callable[[], None]) -> None:
        """Call save() when more than save_every seconds passed since the last such save (or the start)."""
        if time.time() - self.last_save > self.save_every:
            save()
            self.last_save = time.time()


def add_loop_options(
    p: argparse.ArgumentParser, *, minutes: float, batch: int, lr: float, ema: float, threads: int, save_every: float, log_every: int
) -> None:
    """The training-loop options every demo script has, with that script's defaults: --minutes, --max-steps,
    --batch, --lr, --warmup, --ema, --seed, --threads, --save-every, --log-every."""
    p.add_argument("--minutes", type=float, default=minutes, help="wall-clock budget (including earlier resumed time)")
    p.add_argument("--max-steps", type=int, default=10**9)
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=ema)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--save-every", type=float, default=save_every, help="seconds between state checkpoints")
    p.add_argument("--log-every", type=int, default=log_every)

"""Mask-and-replace discrete diffusion (VQ-Diffusion, Gu et al. CVPR 2022), all in log space.

Tokens take K content classes plus one [MASK] class, the last index K. One forward step keeps a
token with probability α_t + β_t, replaces it by any content class with β_t each and masks it
with γ_t; the cumulative ᾱ_t and γ̄_t fall/rise linearly (VQ-Diffusion's "alpha1" schedule).
The reverse step is p(x_{t−1}|x_t) = Σ_{x0} q(x_{t−1}|x_t, x0) p_θ(x0|x_t), evaluated by
`q_posterior` exactly as microsoft/VQ-Diffusion does (diffusion_transformer.py), and sampled with
Gumbel noise drawn from each sample's own generator (sample i: seed + i).

Conventions kept from the official code (REFERENCE.md §7): log one-hots use log(1e−30); the
network's log p(x0) gets a −70 mask row and is clamped to [−70, 0]; the cumulative arrays carry a
(T+1)-th entry (ᾱ = 1, γ̄ = 0) so `q_pred` at t = −1 is the identity; truncation keeps the sorted
classes until the cumulative probability reaches r (the crossing class and the top-1 kept), sets
the rest to −70 and does not renormalise; guidance is applied before truncation; "fast" sampling
with skip s visits t = T−1, T−1−(s+1), …, then 0, evaluating `q_posterior` at t − s while t > s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from geneval.errors import GenevalError

LOG_EPS = 1e-30  # log one-hots: log(1e-30) ≈ −69.08 for the zeros
LOG_FLOOR = -70.0  # the clamp floor of VQ-Diffusion's log-probabilities

# p(x0 | x_t, t) as log-probabilities (B, K+1, L), mask row included; x_t is (B, L) long.
LogX0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class MaskSchedule:
    """Log transition coefficients of mask-and-replace diffusion (float32, like the official buffers).

    Per-step arrays have T entries; cumulative ones T+1 (the last is the identity: ᾱ = 1, β̄ = γ̄ = 0).

    Args:
        num_timesteps: T.
        num_classes: K content classes (the mask class is index K).
    """

    num_timesteps: int
    num_classes: int
    log_at: torch.Tensor
    log_bt: torch.Tensor
    log_ct: torch.Tensor
    log_1_min_ct: torch.Tensor
    log_cumprod_at: torch.Tensor
    log_cumprod_bt: torch.Tensor
    log_cumprod_ct: torch.Tensor
    log_1_min_cumprod_ct: torch.Tensor
    params: tuple[float, float, float, float]

    @property
    def mask_class(self) -> int:
        return self.num_classes

    def to(self, device: torch.device | str) -> "MaskSchedule":
        """The same schedule with its tensors on `device`."""
        moved = {k: getattr(self, k).to(device) for k in self.__dataclass_fields__ if k.startswith("log_")}
        return MaskSchedule(self.num_timesteps, self.num_classes, params=self.params, **moved)

    def describe(self) -> dict:
        a1, aT, c1, cT = self.params
        return {
            "kind": "vq-diffusion mask-and-replace (alpha1)",
            "num_timesteps": self.num_timesteps,
            "num_classes": self.num_classes,
            "att_1": a1,
            "att_T": aT,
            "ctt_1": c1,
            "ctt_T": cT,
        }


def cumulative_schedule(
    num_timesteps: int, att_1: float = 0.99999, att_T: float = 0.000009, ctt_1: float = 0.000009, ctt_T: float = 0.99999
) -> tuple[np.ndarray, np.ndarray]:
    """Closed form of the cumulative schedules: ᾱ_t, γ̄_t linear in t from (att_1, ctt_1) to (att_T, ctt_T), float64."""
    frac = np.arange(num_timesteps, dtype=np.float64) / (num_timesteps - 1)
    return att_1 + frac * (att_T - att_1), ctt_1 + frac * (ctt_T - ctt_1)


def _log1mexp(log_a: torch.Tensor) -> torch.Tensor:
    return torch.log(1 - log_a.exp() + 1e-40)


def mask_schedule(
    num_timesteps: int, num_classes: int, att_1: float = 0.99999, att_T: float = 0.000009, ctt_1: float = 0.000009, ctt_T: float = 0.99999
) -> MaskSchedule:
    """VQ-Diffusion's "alpha1" schedule for K = num_classes content classes (computed in float64, stored float32).

    Args:
        num_timesteps: T (100 in the released models).
        num_classes: K, the number of content classes (the mask class is extra).
        att_1, att_T: ᾱ at t = 1 and t = T; ctt_1, ctt_T: γ̄ at t = 1 and t = T.
    """
    if num_timesteps < 2:
        raise GenevalError(f"a mask-and-replace schedule needs at least 2 timesteps, got {num_timesteps}")
    if num_classes < 1:
        raise GenevalError(f"a mask-and-replace schedule needs at least 1 content class, got {num_classes}")
    att, ctt = cumulative_schedule(num_timesteps, att_1, att_T, ctt_1, ctt_T)
    # Per-step α_t = ᾱ_t/ᾱ_{t−1}, 1 − γ_t = (1 − γ̄_t)/(1 − γ̄_{t−1}), with ᾱ_0 = 1, γ̄_0 = 0.
    at = att / np.concatenate(([1.0], att[:-1]))
    one_minus_ctt = 1 - np.concatenate(([0.0], ctt))
    ct = 1 - one_minus_ctt[1:] / one_minus_ctt[:-1]
    bt = (1 - at - ct) / num_classes
    att_ext = np.concatenate((att, [1.0]))
    ctt_ext = np.concatenate((ctt, [0.0]))
    btt_ext = (1 - att_ext - ctt_ext) / num_classes
    with np.errstate(divide="ignore"):
        logs = {
            k: torch.from_numpy(np.log(v))
            for k, v in dict(log_at=at, log_bt=bt, log_ct=ct, log_cumprod_at=att_ext, log_cumprod_bt=btt_ext, log_cumprod_ct=ctt_ext).items()
        }
    logs["log_1_min_ct"] = _log1mexp(logs["log_ct"])
    logs["log_1_min_cumprod_ct"] = _log1mexp(logs["log_cumprod_ct"])
    return MaskSchedule(num_timesteps, num_classes, params=(att_1, att_T, ctt_1, ctt_T), **{k: v.float() for k, v in logs.items()})


# ---------------------------------------------------------------- log-space helpers


def index_to_log_onehot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Tokens (B, L) → log one-hots (B, num_classes, L) with log(1e−30) for the zeros."""
    onehot = F.one_hot(x, num_classes).permute(0, 2, 1)
    return torch.log(onehot.float().clamp(min=LOG_EPS))


def _log_add_exp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    m = torch.max(a, b)
    return m + torch.log(torch.exp(a - m) + torch.exp(b - m))


def _at(arr: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return arr.to(t.device).gather(-1, t).view(-1, 1, 1)


def q_pred(s: MaskSchedule, log_x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log q(x_t | x0) for log-probabilities log_x0 (B, K+1, L); t = −1 is the identity."""
    t = (t + (s.num_timesteps + 1)) % (s.num_timesteps + 1)
    return torch.cat(
        [
            _log_add_exp(log_x0[:, :-1] + _at(s.log_cumprod_at, t), _at(s.log_cumprod_bt, t)),
            _log_add_exp(log_x0[:, -1:] + _at(s.log_1_min_cumprod_ct, t), _at(s.log_cumprod_ct, t)),
        ],
        dim=1,
    )


def q_pred_one_timestep(s: MaskSchedule, log_x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log q(x_t | x_{t−1}) as a function of x_{t−1}, for the tokens in log_x_t (B, K+1, L)."""
    return torch.cat(
        [
            _log_add_exp(log_x_t[:, :-1] + _at(s.log_at, t), _at(s.log_bt, t)),
            _log_add_exp(log_x_t[:, -1:] + _at(s.log_1_min_ct, t), _at(s.log_ct, t)),
        ],
        dim=1,
    )


def q_posterior(s: MaskSchedule, log_x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """log p(x_{t−1} | x_t) = log Σ_{x0} q(x_{t−1} | x_t, x0) p(x0), clamped to [−70, 0].

    Args:
        s: the schedule.
        log_x0: log p(x0 | x_t) (B, K+1, L) (mask row −70).
        x_t: current tokens (B, L).
        t: timesteps (B,) in [0, T).
    """
    if int(t.min()) < 0 or int(t.max()) >= s.num_timesteps:
        raise ValueError(f"q_posterior needs t in [0, {s.num_timesteps}), got {int(t.min())}..{int(t.max())}")
    n = s.num_classes + 1
    log_x_t = index_to_log_onehot(x_t, n)
    masked = (x_t == s.mask_class).unsqueeze(1)
    b, _, length = log_x0.shape
    log_zero = torch.full((b, 1, length), math.log(LOG_EPS), dtype=log_x0.dtype, device=log_x0.device)
    # q(x_t | x0) for x0 in the content classes; a masked x_t has probability γ̄_t from any x0.
    log_qt = q_pred(s, log_x_t, t)[:, :-1]
    log_qt = torch.where(masked, _at(s.log_cumprod_ct, t).expand_as(log_qt), log_qt)
    # q(x_t | x_{t−1}); from a masked x_{t−1} only a masked x_t is reachable.
    one = q_pred_one_timestep(s, log_x_t, t)
    one = torch.cat([one[:, :-1], log_zero], dim=1)
    ct_col = torch.cat([_at(s.log_ct, t).expand(b, n - 1, length), torch.zeros(b, 1, length, device=one.device)], dim=1)
    one = torch.where(masked, ct_col, one)
    q = torch.cat([log_x0[:, :-1] - log_qt, log_zero], dim=1)
    q_lse = torch.logsumexp(q, dim=1, keepdim=True)
    out = q_pred(s, q - q_lse, t - 1) + one + q_lse
    return out.clamp(LOG_FLOOR, 0)


def log_x0_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Network logits (B, K, L) → log p(x0) (B, K+1, L): log-softmax in float64, a −70 mask row, clamp [−70, 0]."""
    log_pred = F.log_softmax(logits.double(), dim=1).float()
    mask_row = torch.full_like(log_pred[:, :1], LOG_FLOOR)
    return torch.cat([log_pred, mask_row], dim=1).clamp(LOG_FLOOR, 0)


def guide(log_cond: torch.Tensor, log_uncond: torch.Tensor, scale_s: float) -> torch.Tensor:
    """VQ-Diffusion's classifier-free guidance on log p(x0) (B, K+1, L): u + s(c − u) over the content
    rows, renormalised with logsumexp, clamped to [−70, 0], mask row −70 (s = 1 is the conditional model)."""
    c, u = log_cond[:, :-1], log_uncond[:, :-1]
    g = u + scale_s * (c - u)
    g = (g - torch.logsumexp(g, dim=1, keepdim=True)).clamp(LOG_FLOOR, 0)
    return torch.cat([g, torch.full_like(g[:, :1], LOG_FLOOR)], dim=1)


def truncate(log_p: torch.Tensor, rate: float) -> torch.Tensor:
    """Keep, per position, the most probable classes until their cumulative probability reaches `rate`
    (the crossing class and the top-1 always kept); the rest become −70; no renormalisation."""
    sorted_lp, order = torch.sort(log_p, dim=1, descending=True)
    below = sorted_lp.exp().cumsum(dim=1) < rate
    keep_sorted = torch.cat([torch.ones_like(below[:, :1]), below[:, :-1]], dim=1)
    keep = keep_sorted.gather(1, order.argsort(1))
    return torch.where(keep, log_p, torch.full_like(log_p, LOG_FLOOR))


def truncated(fn: LogX0Fn, rate: float | None) -> LogX0Fn:
    """Wrap a log p(x0) function with the truncation trick (None or rate >= 1: unchanged)."""
    if rate is None or rate >= 1.0:
        return fn
    if rate <= 0:
        raise GenevalError(f"truncation rate must lie in (0, 1], got {rate}")
    return lambda x_t, t: truncate(fn(x_t, t), rate)


def gumbel_sample(log_p: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """argmax(log_p + Gumbel(uniform)) over dim 1, with VQ-Diffusion's −log(−log(u + 1e−30) + 1e−30)."""
    gumbel = -torch.log(-torch.log(uniform + LOG_EPS) + LOG_EPS)
    return (gumbel + log_p).argmax(dim=1)


# ---------------------------------------------------------------- the sampling loop


def fast_timesteps(num_timesteps: int, skip: int = 0) -> list[tuple[int, int]]:
    """(network t, posterior t) pairs: t = T−1, T−2−skip, …, then 0; the posterior is evaluated at
    t − skip while t > skip (as the official `sample_fast`); skip 0 is the full chain."""
    if skip < 0:
        raise GenevalError(f"skip must be >= 0, got {skip}")
    ts = list(range(num_timesteps - 1, -1, -1 - skip))
    if ts[-1] != 0:
        ts.append(0)
    return [(t, t - skip if t > skip else t) for t in ts]


def skip_for_steps(num_timesteps: int, steps: int) -> int:
    """The smallest skip whose chain makes at most `steps` network evaluations (steps >= T: 0)."""
    if steps < 1:
        raise GenevalError(f"steps must be >= 1, got {steps}")
    skip = 0
    while len(fast_timesteps(num_timesteps, skip)) > steps and skip < num_timesteps:
        skip += 1
    return skip


def sample_tokens(
    log_x0_fn: LogX0Fn,
    schedule: MaskSchedule,
    uniform: Callable[[Sequence[int]], torch.Tensor],
    batch: int,
    length: int,
    skip: int = 0,
    device: torch.device | str = "cpu",
    x_T: torch.Tensor | None = None,
) -> torch.Tensor:
    """Run the reverse chain from all-[MASK] tokens; returns content tokens (B, L).

    Args:
        log_x0_fn: (x_t, t) -> log p(x0 | x_t) (B, K+1, L), guidance/truncation already wrapped in.
        schedule: the MaskSchedule the network was trained with.
        uniform: shape -> U[0,1) draws (B, *shape), one row per sample stream (NoiseSource.rand).
        batch, length: B and the number of tokens L.
        skip: 0 for the full chain, s for the official fast skipping (see `fast_timesteps`).
        device: where the tokens live.
        x_T: start tokens (default: all masks).
    """
    n = schedule.num_classes + 1
    x = torch.full((batch, length), schedule.mask_class, dtype=torch.long, device=device) if x_T is None else x_T
    sched = schedule.to(device)
    for t_net, t_post in fast_timesteps(schedule.num_timesteps, skip):
        t = torch.full((batch,), t_net, dtype=torch.long, device=device)
        log_x0 = log_x0_fn(x, t)
        log_p = q_posterior(sched, log_x0, x, torch.full_like(t, t_post))
        x = gumbel_sample(log_p, uniform((n, length)).to(log_p.device))
    return x

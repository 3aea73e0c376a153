"""Guidance as wrappers around the model call (not branches inside samplers).

- Classifier-free guidance (Ho & Salimans 2022) wraps the conditional network: one batched 2N
  forward [conditional | null class], then ε̃ = ε_u + s(ε_c − ε_u). Two conventions are in use
  and every result records which: "w" (Ho & Salimans, ε̃ = (1+w)ε_c − wε_u, w = 0 unguided)
  and "s" (LDM/diffusers/DiT, s = 1 unguided); s = 1 + w. Both are evaluated through the same
  s-form, so `w` and `s = 1 + w` give bit-identical samples.
- Classifier guidance (Dhariwal & Nichol 2021) is a `cond_fn(x_t, t) -> s·∇ log p(y|x_t)` that
  the ddpm sampler adds as Σ·g to the mean and the ddim sampler folds into ε.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from geneval.errors import GenevalError
from geneval.vocab import CONVENTIONS

NetCall = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def cfg_scale(guidance: float, convention: str) -> float:
    """The s-convention scale for a guidance value given in `convention` ("w" or "s")."""
    if convention not in CONVENTIONS:
        raise GenevalError(f"unknown guidance convention {convention!r}; use 'w' (Ho & Salimans, 0 = unguided) or 's' (diffusers/LDM, 1 = unguided)")
    return 1.0 + float(guidance) if convention == "w" else float(guidance)


def cfg_model_fn(
    net_call: NetCall, y: torch.Tensor, null_class: int, scale_s: float, channels: int
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A model_fn applying classifier-free guidance with s-scale `scale_s`.

    Args:
        net_call: net_call(x, t, y) -> raw output of a conditional network.
        y: class labels of the batch (N,).
        null_class: label index of the unconditional ("null") embedding.
        scale_s: guidance in the s convention (1 = plain conditional model).
        channels: image channels C; extra output channels (learned σ) come from the conditional half.
    """
    if scale_s == 1.0:
        # Unguided: the conditional model alone (no wasted unconditional pass).
        return lambda x, t: net_call(x, t, y)
    y_null = torch.full_like(y, null_class)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = net_call(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null])).float()
        cond, uncond = out.chunk(2)
        eps = uncond[:, :channels] + scale_s * (cond[:, :channels] - uncond[:, :channels])
        return torch.cat([eps, cond[:, channels:]], dim=1)

    return model_fn


def classifier_cond_fn(
    classifier_call: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor, scale: float
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """cond_fn(x_t, t) = scale · ∇_x log softmax(classifier(x_t, t))[y], computed in float32.

    Args:
        classifier_call: classifier_call(x_t, t) -> logits; receives the same network timestep as the UNet.
        y: target class per sample.
        scale: the classifier scale s (ADM's --classifier_scale).
    """

    def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x.detach().float().requires_grad_(True)
            log_probs = F.log_softmax(classifier_call(x_in, t).float(), dim=-1)
            selected = log_probs[torch.arange(len(y), device=log_probs.device), y]
            (grad,) = torch.autograd.grad(selected.sum(), x_in)
        return grad * scale

    return cond_fn

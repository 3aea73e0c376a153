"""Residual quantisation (RQ-VAE, Lee et al. CVPR 2022): D codes per latent position.

Depth d quantises what depths 1..d−1 left over: r_0 = z, k_d = argmin_k ‖r_{d−1} − e_k^{(d)}‖,
r_d = r_{d−1} − e_{k_d}^{(d)}, and the code of a position is the partial sum ẑ^{(D)} = Σ_d e_{k_d}.
RQ-VAE shares one codebook across depths; `shared=False` gives one codebook per depth. Partial sums
ẑ^{(d)} decode to the reconstruction "after depth d", which geneval.metrics.codebook scores.

`RQAutoencoder` wraps any encoder/decoder pair (e.g. the trunk of a geneval VQ/KL autoencoder) around
a `ResidualQuantizer`; `fit_residual_codebooks` fits codebooks by k-means on residuals, depth by depth,
so an RQ bottleneck can be put on a trained encoder without training (reconstruction checks).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def _nearest(flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    # ‖r−e‖² = ‖r‖² + ‖e‖² − 2 r·e; ties go to the lowest index (argmin), like VectorQuantizer.
    dist = flat.pow(2).sum(1, keepdim=True) + codebook.pow(2).sum(1) - 2.0 * flat @ codebook.T
    return dist.argmin(dim=1)


class ResidualQuantizer(nn.Module):
    """D-depth residual quantiser over channel vectors of z (B, C, h, w).

    Args:
        n_embed: codes per codebook K.
        embed_dim: code dimension C.
        depth: D, codes per position.
        shared: one codebook for all depths (RQ-VAE) instead of one per depth.
        beta: commitment weight of the training loss.
    """

    def __init__(self, n_embed: int, embed_dim: int, depth: int, shared: bool = True, beta: float = 0.25):
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.n_embed, self.embed_dim, self.depth, self.shared, self.beta = n_embed, embed_dim, depth, shared, beta
        self.codebooks = nn.ModuleList(nn.Embedding(n_embed, embed_dim) for _ in range(1 if shared else depth))
        for cb in self.codebooks:
            nn.init.uniform_(cb.weight, -1.0 / n_embed, 1.0 / n_embed)

    def codebook(self, d: int) -> torch.Tensor:
        """The (K, C) codebook of depth d (0-based)."""
        return self.codebooks[0 if self.shared else d].weight

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (B, D, h, w) of z (B, C, h, w), depth by depth on the residuals."""
        b, c, h, w = z.shape
        r = z.permute(0, 2, 3, 1).reshape(-1, c)
        out = []
        for d in range(self.depth):
            idx = _nearest(r, self.codebook(d))
            r = r - self.codebook(d)[idx]
            out.append(idx.view(b, h, w))
        return torch.stack(out, dim=1)

    def partial_sums(self, indices: torch.Tensor) -> list[torch.Tensor]:
        """ẑ^{(1)}, …, ẑ^{(D)} as (B, C, h, w) for indices (B, D, h, w)."""
        acc = torch.zeros(())
        out = []
        for d in range(indices.shape[1]):
            acc = acc + self.codebook(d)[indices[:, d]].permute(0, 3, 1, 2)
            out.append(acc)
        return out

    def lookup(self, indices: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """The quantised latent after `depth` codes (default: all), (B, C, h, w)."""
        return self.partial_sums(indices[:, : depth or indices.shape[1]])[-1].contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through ẑ^{(D)}, codebook + commitment loss over all partial sums, indices)."""
        idx = self.codes(z)
        sums = self.partial_sums(idx)
        loss = sum(F.mse_loss(s, z.detach()) + self.beta * F.mse_loss(z, s.detach()) for s in sums) / len(sums)
        zq = sums[-1]
        return z + (zq - z).detach(), loss, idx


class RQAutoencoder(nn.Module):
    """encode → residual quantiser → decode, around any encoder/decoder pair.

    Args:
        encode: images (B, C, H, W) in [−1, 1] → latents (B, embed_dim, h, w) (pre-quantisation).
        decode: latents → images.
        quantizer: the ResidualQuantizer.
    """

    def __init__(self, encode: Callable[[torch.Tensor], torch.Tensor], decode: Callable[[torch.Tensor], torch.Tensor], quantizer: ResidualQuantizer):
        super().__init__()
        self._encode, self._decode = encode, decode
        self.quantize = quantizer
        for fn in (encode, decode):  # register wrapped modules so .to()/.eval() reach them
            owner = getattr(fn, "__self__", None)
            if isinstance(owner, nn.Module) and owner not in self.modules():
                self.add_module(f"wrapped_{len(list(self.children()))}", owner)

    @property
    def depth(self) -> int:
        return self.quantize.depth

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x)

    def decode_codes(self, indices: torch.Tensor, depth: int | None = None) -> torch.Tensor:
        """Images from the codes of the first `depth` depths (default: all)."""
        return self._decode(self.quantize.lookup(indices, depth))

    @torch.no_grad()
    def reconstruct_by_depth(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """([reconstruction after depth 1, …, after depth D], indices (B, D, h, w))."""
        idx = self.quantize.codes(self.encode(x))
        return [self._decode(s) for s in self.quantize.partial_sums(idx)], idx


@torch.no_grad()
def fit_residual_codebooks(
    quantizer: ResidualQuantizer, latents: torch.Tensor, iters: int = 20, generator: torch.Generator | None = None
) -> list[float]:
    """Fit the quantiser's codebooks by k-means on the residuals of `latents` (N, C), depth by depth.

    A shared quantiser gets one codebook fitted on the pooled residuals of all depths, refined in turn.
    Returns the mean squared residual after each depth.

    Args:
        quantizer: the ResidualQuantizer to fill (its codebooks are overwritten).
        latents: (N, C) latent vectors (e.g. encoder outputs, positions flattened).
        iters: Lloyd iterations per codebook.
        generator: for the initial centroids (drawn from the data).
    """
    z = latents.detach().float()
    k = quantizer.n_embed

    def init_from(data: torch.Tensor) -> torch.Tensor:
        init = data[torch.randperm(len(data), generator=generator)[:k]]
        return torch.cat([init, torch.zeros(k - len(init), data.shape[1])]) if len(init) < k else init

    def lloyd(data: torch.Tensor, cent: torch.Tensor) -> torch.Tensor:
        assign = _nearest(data, cent)
        sums = torch.zeros_like(cent).index_add_(0, assign, data)
        counts = torch.bincount(assign, minlength=k).float()
        filled = counts > 0
        cent = cent.clone()
        cent[filled] = sums[filled] / counts[filled, None]
        return cent

    def residual_inputs(cbs: list[torch.Tensor]) -> list[torch.Tensor]:
        r, out = z, []
        for cb in cbs:
            out.append(r)
            r = r - cb[_nearest(r, cb)]
        out.append(r)
        return out

    if quantizer.shared:
        # One codebook for every depth: Lloyd steps on the pooled inputs of all depths.
        cent = init_from(z)
        for _ in range(iters):
            cent = lloyd(torch.cat(residual_inputs([cent] * quantizer.depth)[:-1]), cent)
        quantizer.codebook(0).copy_(cent)
    else:
        r = z
        for d in range(quantizer.depth):
            cent = init_from(r)
            for _ in range(iters):
                cent = lloyd(r, cent)
            quantizer.codebook(d).copy_(cent)
            r = r - cent[_nearest(r, cent)]
    rs = residual_inputs([quantizer.codebook(d) for d in range(quantizer.depth)])[1:]
    return [float(r.pow(2).sum(1).mean()) for r in rs]

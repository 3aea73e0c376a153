"""VQ autoencoder (taming VQGAN / LDM VQModel): trunk + quant_conv + nearest-code quantizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from geneval.models.autoencoder import AEConfig, Decoder, Encoder
from geneval.models.autoencoder_kl import AEOutput


class VectorQuantizer(nn.Module):
    """Nearest codebook vector by L2 distance, straight-through gradients, VQ-VAE loss.

    Parameter name `embedding.weight` matches taming's VectorQuantizer (LDM `quantize.embedding.weight`).

    Args:
        n_embed: number of codes K.
        embed_dim: code dimension.
        beta: commitment weight.
    """

    def __init__(self, n_embed: int, embed_dim: int, beta: float = 0.25):
        super().__init__()
        self.n_embed = n_embed
        self.embed_dim = embed_dim
        self.beta = beta
        self.embedding = nn.Embedding(n_embed, embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_embed, 1.0 / n_embed)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """Indices (B, h, w) of the nearest codes to z (B, D, h, w); ties go to the lowest index."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)
        e = self.embedding.weight
        # ‖z−e‖² = ‖z‖² + ‖e‖² − 2 z·e, without materialising differences.
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2.0 * flat @ e.T
        return dist.argmin(dim=1).reshape(b, h, w)

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """Code vectors for indices (B, h, w) as (B, D, h, w)."""
        return self.embedding(indices).permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(straight-through quantised z, codebook + commitment loss, indices)."""
        idx = self.codes(z)
        zq = self.lookup(idx)
        loss = F.mse_loss(zq, z.detach()) + self.beta * F.mse_loss(z, zq.detach())
        return z + (zq - z).detach(), loss, idx


class VQAutoencoder(nn.Module):
    """encoder → quant_conv → quantize → post_quant_conv → decoder (LDM's VQModel layout).

    Args:
        cfg: an AEConfig with kind ``vq`` and n_embed set.
    """

    def __init__(self, cfg: AEConfig):
        super().__init__()
        if cfg.kind != "vq":
            raise ValueError(f"VQAutoencoder needs kind 'vq', got {cfg.kind!r}")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(int(cfg.n_embed), cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] → the pre-quantisation map (B, embed_dim, h, w)."""
        return self.quant_conv(self.encoder(x))

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """Quantised latents → images in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(zq))

    def decode_codes(self, indices: torch.Tensor) -> torch.Tensor:
        return self.decode(self.quantize.lookup(indices))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction, quantizer loss, indices) — the training pass."""
        zq, qloss, idx = self.quantize(self.encode(x))
        return self.decode(zq), qloss, idx

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> AEOutput:
        """Quantise and decode; the latents reported are the pre-quantisation map."""
        h = self.encode(x)
        idx = self.quantize.codes(h)
        return AEOutput(self.decode(self.quantize.lookup(idx)), h, idx, "VQ pre-quantisation map")

"""AutoencoderKL (LDM / Stable Diffusion first stage): trunk + quant_conv + diagonal Gaussian posterior."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from geneval.models.autoencoder import AEConfig, Decoder, Encoder


@dataclass
class AEOutput:
    """One autoencoder pass over a batch.

    Args:
        recon: decoded images, nominally in [-1, 1] (not clamped).
        latents: what a latent diffusion model would be trained on, before scaling: the KL
            posterior sample (what LDM's scale_by_std measures) or the VQ pre-quantisation map
            (what LDM's VQModelInterface.encode returns).
        indices: VQ code indices (B, h, w); None for KL.
        latent_kind: a short description of `latents` for reports.
    """

    recon: torch.Tensor
    latents: torch.Tensor
    indices: torch.Tensor | None
    latent_kind: str


class DiagonalGaussian:
    """LDM's DiagonalGaussianDistribution: moments split into mean and log-variance (clamped to [-30, 20])."""

    def __init__(self, moments: torch.Tensor):
        self.mean, logvar = torch.chunk(moments, 2, dim=1)
        self.logvar = logvar.clamp(-30.0, 20.0)
        self.std = torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * noise

    def mode(self) -> torch.Tensor:
        return self.mean

    def kl(self) -> torch.Tensor:
        """KL(q || N(0, I)) per item, summed over latent dims."""
        return 0.5 * (self.mean.pow(2) + self.std.pow(2) - 1.0 - self.logvar).flatten(1).sum(1)


class AutoencoderKL(nn.Module):
    """LDM's AutoencoderKL: encoder → quant_conv → N(mean, exp(logvar)) → post_quant_conv → decoder.

    Args:
        cfg: an AEConfig with kind ``kl``.
    """

    def __init__(self, cfg: AEConfig):
        super().__init__()
        if cfg.kind != "kl":
            raise ValueError(f"AutoencoderKL needs kind 'kl', got {cfg.kind!r}")
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.quant_conv = nn.Conv2d(2 * cfg.z_channels, 2 * cfg.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Images in [-1, 1] (B, C, H, W) → the latent posterior."""
        return DiagonalGaussian(self.quant_conv(self.encoder(x)))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents (B, embed_dim, h, w), unscaled → images in about [-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

    def forward(
        self, x: torch.Tensor, sample_posterior: bool = True, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        post = self.encode(x)
        z = post.sample(generator) if sample_posterior else post.mode()
        return self.decode(z), post

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None) -> AEOutput:
        """Decode the posterior mode (deterministic); report a posterior sample as the latents."""
        post = self.encode(x)
        return AEOutput(self.decode(post.mode()), post.sample(generator), None, "KL posterior sample")

"""Reconstruction metrics: PSNR, SSIM, latent statistics and codebook usage (pure functions).

PSNR and SSIM come from torchmetrics' functional metrics on float64 images in [0, 1]
(data_range 1.0), one value per image, then mean ± std over images.

SSIM convention: Gaussian window σ = 1.5 (11 taps), k1 = 0.01, k2 = 0.03, and the mean taken
over the pixels whose window lies inside the image — scikit-image's `structural_similarity`
(gaussian_weights=True, use_sample_covariance=False) and Wang et al.'s reference code. torchmetrics
≥ 1.x averages the whole map including border pixels computed from reflect padding, which gives
another number; we take its full SSIM map and crop the border ourselves.

PSNR of two identical images is +inf. It is kept as inf (the mean over images is then inf too)
and reported as such, with the count of identical pairs and the mean over the other pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.registry import MetricSpec, register

SSIM_SIGMA = 1.5
SSIM_WIN = 11  # 2 * int(3.5 * sigma + 0.5) + 1: the Gaussian window both libraries build


def _pair(x: Any, y: Any, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two NCHW float64 tensors of equal shape, values in [0, 1]."""
    a = torch.as_tensor(x).to(torch.float64)
    b = torch.as_tensor(y).to(torch.float64)
    if a.shape != b.shape:
        raise GenevalError(f"{what}: originals {tuple(a.shape)} and reconstructions {tuple(b.shape)} differ in size")
    if a.ndim != 4:
        raise GenevalError(f"{what}: expected N x C x H x W images, got shape {tuple(a.shape)}")
    return a, b


def psnr_per_image(originals: Any, recons: Any, data_range: float = 1.0) -> np.ndarray:
    """PSNR in dB of each pair (N,), float64; +inf where a pair is identical.

    Args:
        originals: (N, C, H, W) images in [0, data_range].
        recons: reconstructions, same shape.
        data_range: the peak value (1.0 for [0, 1] images).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = _pair(originals, recons, "PSNR")
    out = peak_signal_noise_ratio(b, a, data_range=data_range, reduction="none", dim=(1, 2, 3))
    return out.cpu().numpy().astype(np.float64)


def ssim_per_image(originals: Any, recons: Any, data_range: float = 1.0) -> np.ndarray:
    """SSIM of each pair (N,), float64, over the window-valid region (see module docstring).

    Args:
        originals: (N, C, H, W) images in [0, data_range]; H, W ≥ 11.
        recons: reconstructions, same shape.
        data_range: the value range (1.0 for [0, 1] images).
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    a, b = _pair(originals, recons, "SSIM")
    if min(a.shape[-2:]) < SSIM_WIN:
        raise GenevalError(f"SSIM needs images of at least {SSIM_WIN}x{SSIM_WIN} pixels, got {tuple(a.shape[-2:])}")
    _, full = structural_similarity_index_measure(
        b, a, gaussian_kernel=True, sigma=SSIM_SIGMA, data_range=data_range, reduction="none", return_full_image=True
    )
    pad = (SSIM_WIN - 1) // 2
    return full[..., pad:-pad, pad:-pad].flatten(1).mean(1).cpu().numpy().astype(np.float64)


@dataclass(frozen=True)
class Summary:
    """Mean ± std (ddof 0 across images) of per-image values, with inf handled explicitly.

    Args:
        mean: mean over all values (inf if any value is inf).
        std: std over the finite values (None if fewer than 2).
        n: number of values.
        n_inf: how many values are +inf (identical pairs, for PSNR).
        finite_mean: mean over the finite values (None if none).
    """

    mean: float
    std: float | None
    n: int
    n_inf: int
    finite_mean: float | None


def summarize(values: np.ndarray) -> Summary:
    """Summarise per-image values; +inf (identical images) is counted, not hidden."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        raise GenevalError("no values to summarise (0 images)")
    if np.isnan(v).any():
        raise GenevalError(f"{int(np.isnan(v).sum())} of {v.size} per-image values are NaN")
    fin = v[np.isfinite(v)]
    n_inf = int(v.size - fin.size)
    mean = float("inf") if n_inf else float(v.mean())
    return Summary(mean, float(fin.std()) if fin.size >= 2 else None, int(v.size), n_inf, float(fin.mean()) if fin.size else None)


class ChannelMoments:
    """Streaming per-channel count, Σz and Σz² of latents in float64 (merge by adding).

    Args:
        channels: number of latent channels.
    """

    def __init__(self, channels: int):
        self.channels = channels
        self.count = 0
        self.sum = np.zeros(channels, np.float64)
        self.sumsq = np.zeros(channels, np.float64)

    def update(self, z: torch.Tensor) -> ChannelMoments:
        """Add latents (B, C, h, w)."""
        if z.ndim != 4 or z.shape[1] != self.channels:
            raise GenevalError(f"latents must be (B, {self.channels}, h, w), got {tuple(z.shape)}")
        z64 = z.detach().to(torch.float64)
        self.count += int(z.shape[0] * z.shape[2] * z.shape[3])
        self.sum += z64.sum(dim=(0, 2, 3)).cpu().numpy()
        self.sumsq += z64.pow(2).sum(dim=(0, 2, 3)).cpu().numpy()
        return self

    def channel_mean(self) -> np.ndarray:
        return self.sum / self.count

    def channel_std(self) -> np.ndarray:
        """Per-channel std with the N−1 normalisation (torch.std's default, as LDM uses)."""
        m = self.channel_mean()
        return np.sqrt(np.maximum(self.sumsq - self.count * m * m, 0.0) / (self.count - 1))

    def overall(self) -> tuple[float, float]:
        """(mean, std with N−1) of all latent values pooled over channels — what z.flatten().std() sees."""
        n = self.count * self.channels
        s, ss = self.sum.sum(), self.sumsq.sum()
        mean = s / n
        return float(mean), float(np.sqrt(max(ss - n * mean * mean, 0.0) / (n - 1)))


def scale_by_std(z: torch.Tensor) -> float:
    """LDM's scale_by_std factor for one batch of latents: 1 / z.flatten().std() (unbiased, float64 here)."""
    return float(1.0 / z.detach().to(torch.float64).flatten().std())


@dataclass(frozen=True)
class CodebookUsage:
    """How a VQ codebook is used over a data set.

    Args:
        perplexity: exp(entropy) of the code histogram; K for uniform use, 1 for a collapsed codebook.
        usage: share of the K codes used at least once.
        dead: number of codes never used.
        size: K.
        tokens: number of latent positions counted.
    """

    perplexity: float
    usage: float
    dead: int
    size: int
    tokens: int


def codebook_usage(counts: Any) -> CodebookUsage:
    """Perplexity, share of codes used and dead-code count from a (K,) histogram of code indices.

    Args:
        counts: how often each of the K codes was chosen (e.g. torch.bincount(indices, minlength=K)).
    """
    c = np.asarray(counts.cpu() if isinstance(counts, torch.Tensor) else counts, dtype=np.float64).reshape(-1)
    total = c.sum()
    if c.size == 0 or total <= 0:
        raise GenevalError("codebook histogram is empty: no codes were counted")
    p = c[c > 0] / total
    entropy = float(-(p * np.log(p)).sum())
    used = int((c > 0).sum())
    return CodebookUsage(float(np.exp(entropy)), used / c.size, int(c.size - used), int(c.size), int(total))


RECON_METRICS = (
    MetricSpec("psnr", True, (), True, "psnr", "Peak signal-to-noise ratio (dB) of reconstructions, per image, mean"),
    MetricSpec("ssim", True, (), True, "ssim", "Structural similarity (Gaussian 11x11, sigma 1.5, valid region), per image, mean"),
    MetricSpec("rfid", False, ("pool3",), True, "rfid", "FID between originals and their reconstructions (pool3)"),
    MetricSpec("rsfid", False, ("spatial",), True, "rsfid", "sFID between originals and their reconstructions (spatial)"),
    # Latent statistics describe the latent space; they have no better direction (None).
    MetricSpec("latent_scale", None, (), False, "latent", "1/std of all latent values: the scale factor LDM's scale_by_std would pick"),
    MetricSpec("latent_std", None, (), False, "latent", "std of all latent values (per-channel values in extra)"),
    MetricSpec("latent_mean", None, (), False, "latent", "mean of all latent values (per-channel values in extra)"),
    MetricSpec("codebook_perplexity", True, (), False, "codebook", "exp(entropy) of VQ code use; K is uniform, 1 collapsed"),
    MetricSpec("codebook_usage", True, (), False, "codebook", "Share of VQ codes used at least once"),
    MetricSpec("dead_codes", False, (), False, "codebook", "Number of VQ codes never used"),
    # Residual quantisation (`recon --rq-depth D`): each yields one row per depth, named <metric>_d<k>.
    MetricSpec("rq_mse", False, (), False, "rq", "MSE (pixels in [0, 1]) of the image decoded from the first d residual codes, per depth"),
    MetricSpec("rq_psnr", True, (), False, "rq", "PSNR (dB) of the image decoded from the first d residual codes, per depth"),
    MetricSpec("rq_perplexity", True, (), False, "rq", "exp(entropy) of the depth-d residual codes, per depth"),
    MetricSpec("rq_usage", True, (), False, "rq", "Share of codes used at least once at depth d, per depth"),
    MetricSpec("rq_dead_codes", False, (), False, "rq", "Codes never used at depth d, per depth"),
)
for _spec in RECON_METRICS:
    register(_spec)
del _spec

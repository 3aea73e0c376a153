"""Metric math on features and statistics: pure functions, mergeable float64 accumulators, registry.

Nothing here imports models, sampling, cli or report: a metric is math on features.
"""

# Register the pixel- and code-space metrics (psnr, ssim, lpips, lpips_div, rfid, latent_*, codebook_*)
# with the registry whenever geneval.metrics is imported; both modules import only numpy/torch eagerly.
from geneval.metrics import lpips as _lpips  # noqa: E402,F401
from geneval.metrics import recon as _recon  # noqa: E402,F401

"""`geneval.recon`: how good is an autoencoder? Reconstruct a data set and score the reconstructions.

One streaming pass: uint8 originals → [-1, 1] → autoencoder → reconstruction rounded back to
uint8 (what a saved image would hold) → per-image PSNR / SSIM / LPIPS, TF-Inception features of
both sides for rFID / rsFID, latent moments (float64) and VQ code counts. Alternatively
`reconstructions=` scores a stored set of reconstructions against the originals, in order.

Conventions recorded in every row: KL reconstructions decode the posterior mode
(deterministic); latent statistics use a seeded posterior sample, as LDM's scale_by_std does
(`1 / z.flatten().std()` on the first training batch; we report that first-batch value and the
value over all N); VQ latents are the pre-quantisation map (LDM's VQModelInterface.encode).
Grayscale data fed to an RGB autoencoder is repeated to three channels, and all metrics
compare the three-channel images.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from geneval.errors import GenevalError
from geneval.metrics.fid import frechet_distance
from geneval.metrics.lpips import build_lpips, lpips_distance
from geneval.metrics.recon import ChannelMoments, codebook_usage, psnr_per_image, scale_by_std, ssim_per_image, summarize
from geneval.metrics.registry import expand_metrics, get_metric
from geneval.metrics.stats import GaussianAccumulator
from geneval.progress import Progress, progress_mode
from geneval.results import ResultRow, ResultSet, new_run_id
from geneval.sources import Source, open_source

log = logging.getLogger(__name__)

DEFAULT_DATA = "fashion-mnist:test"
DEFAULT_N = 500
PIXEL_METRICS = ("psnr", "ssim", "lpips")
FEATURE_METRICS = {"rfid": "pool3", "rsfid": "spatial"}
LATENT_METRICS = ("latent_scale", "latent_std", "latent_mean")
CODEBOOK_METRICS = ("codebook_perplexity", "codebook_usage", "dead_codes")
# Residual quantisation per depth (RQ-VAE): metric → DepthTally.report key; rows are named <metric>_d<k>.
RQ_METRICS = {"rq_mse": "mse", "rq_psnr": "psnr", "rq_perplexity": "perplexity", "rq_usage": "usage", "rq_dead_codes": "dead_codes"}
RECON_METRICS = PIXEL_METRICS + tuple(FEATURE_METRICS) + LATENT_METRICS + CODEBOOK_METRICS + tuple(RQ_METRICS)
RQ_FIT_ITERS = 20
QUANTISATION = "round((x + 1) * 127.5) clipped to 0..255"


@dataclass(frozen=True)
class ReconConfig:
    """Everything that shapes a recon run; written into the results' config.

    Args:
        ae: autoencoder spec (demo, demo-vq, file or folder); None with `reconstructions` given.
        ae_config: shape override for LDM files (preset, LDM YAML, JSON).
        data: originals (any `open_source` spec).
        reconstructions: stored reconstructions to score instead of running an autoencoder.
        metrics: metric names (after group expansion).
        n: images to use (None: all).
        batch_size: images per batch.
        device: torch device (None: CUDA when available).
        seed: seed of the KL posterior sample.
        lpips_net / lpips_weights: LPIPS backbone and an explicit weight file.
        lpips_random_backbone: seeded random LPIPS trunk — mechanics tests only.
        mode: TF-Inception preprocessing for rFID (tf, pytorch, clean).
        inception_weights: explicit TF-Inception weight file.
        rq_depth / rq_codes / rq_fit / rq_codebooks: the residual-quantisation check (see `recon`).
    """

    ae: str | None
    ae_config: str | None
    data: str
    reconstructions: str | None
    metrics: tuple[str, ...]
    n: int | None
    batch_size: int
    device: str
    seed: int
    lpips_net: str
    lpips_weights: str | None
    lpips_random_backbone: bool
    mode: str
    inception_weights: str | None
    rq_depth: int | None = None
    rq_codes: int | None = None
    rq_fit: int | None = None
    rq_codebooks: str | None = None


def default_metrics(kind: str | None) -> tuple[str, ...]:
    """What runs offline by default: PSNR, SSIM, rFID, latent statistics, and codebook use for VQ."""
    base = ("psnr", "ssim", "rfid")
    if kind is None:
        return base
    return base + LATENT_METRICS + (CODEBOOK_METRICS if kind == "vq" else ())


def _check_metrics(names: list[str], kind: str | None, rq: bool = False) -> None:
    for m in names:
        if m not in RECON_METRICS:
            raise GenevalError(f"{m!r} is not a reconstruction metric; recon computes: {', '.join(RECON_METRICS)}")
    if not rq and any(m in RQ_METRICS for m in names):
        raise GenevalError(f"{', '.join(m for m in names if m in RQ_METRICS)} need a residual quantiser: give --rq-depth D")
    if kind is None:
        bad = [m for m in names if m in LATENT_METRICS + CODEBOOK_METRICS]
        if bad:
            raise GenevalError(f"{', '.join(bad)} need an autoencoder (--ae), not stored reconstructions")
        if rq:
            raise GenevalError("--rq-depth needs an autoencoder (--ae), not stored reconstructions")
    elif kind != "vq":
        bad = [m for m in names if m in CODEBOOK_METRICS]
        if bad:
            raise GenevalError(f"{', '.join(bad)} need a VQ autoencoder; this one is {kind}")


def _to_pm1(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x)).to(device).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _fit_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """Make uint8 NHWC data fit the autoencoder's input channels (gray → RGB repeat, RGBA → RGB)."""
    c = x.shape[-1]
    if c == channels:
        return x
    if c == 4 and channels == 3:
        return x[..., :3]
    if c == 1 and channels == 3:
        return np.repeat(x, 3, axis=-1)
    raise GenevalError(f"the data has {c} channels but the autoencoder takes {channels}")


def _paired(a: Source, b: Source, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Equal-length batches of two sources in order (their own batch sizes may differ)."""
    ia, ib = a.batches(batch_size), b.batches(batch_size)
    buf_a: list[np.ndarray] = []
    buf_b: list[np.ndarray] = []
    while True:
        xa = next(ia, None)
        xb = next(ib, None)
        if xa is not None:
            buf_a.append(xa[0])
        if xb is not None:
            buf_b.append(xb[0])
        if xa is None and xb is None:
            break
        na, nb = sum(len(x) for x in buf_a), sum(len(x) for x in buf_b)
        k = min(na, nb)
        if k:
            ca, cb = np.concatenate(buf_a), np.concatenate(buf_b)
            if ca.shape[1:] != cb.shape[1:]:
                raise GenevalError(
                    f"originals {ca.shape[1:3]} and reconstructions {cb.shape[1:3]} differ in size (or channels {ca.shape[3]} vs {cb.shape[3]})"
                )
            yield ca[:k], cb[:k]
            buf_a, buf_b = [ca[k:]] if na > k else [], [cb[k:]] if nb > k else []
    left_a, left_b = sum(len(x) for x in buf_a), sum(len(x) for x in buf_b)
    if left_a or left_b:
        raise GenevalError(
            f"originals and reconstructions differ in count: {left_a or left_b} more in {'the originals' if left_a else 'the reconstructions'}"
        )


class _Tally:
    """Everything accumulated over the stream."""

    def __init__(self):
        self.per_image: dict[str, list[np.ndarray]] = {"psnr": [], "ssim": [], "lpips": []}
        self.acc: dict[str, tuple[GaussianAccumulator, GaussianAccumulator]] = {}
        self.moments: ChannelMoments | None = None
        self.first_scale: tuple[float, int] | None = None
        self.codes: torch.Tensor | None = None
        self.rq: Any = None  # geneval.metrics.codebook.DepthTally when a residual quantiser runs
        self.n = 0


def recon(
    ae: str | None = None,
    data: Any = DEFAULT_DATA,
    metrics: str | list[str] | None = None,
    n: int | None = DEFAULT_N,
    batch_size: int = 50,
    device: str | None = None,
    seed: int = 0,
    lpips_net: str = "alex",
    lpips_weights: str | None = None,
    ae_config: str | None = None,
    reconstructions: Any = None,
    mode: str = "tf",
    inception_weights: str | None = None,
    lpips_random_backbone: bool = False,
    progress: bool = False,
    rq_depth: int | None = None,
    rq_codes: int | None = None,
    rq_fit: int = 256,
    rq_codebooks: str | None = None,
    rq_per_depth: bool = False,
) -> ResultSet:
    """Score an autoencoder's reconstructions (or stored reconstructions) of a data set.

    Args:
        ae: autoencoder: ``demo`` (the shipped KL demo, default), ``demo-vq``, a native folder,
            LDM ckpt, standalone/SD VAE file or a diffusers folder.
        data: originals: a dataset name (``fashion-mnist:test``), folder, zip, npz, npy or array.
        metrics: comma list or names (groups ``latent``, ``codebook`` expand); None runs the
            offline defaults (psnr, ssim, rfid, latent stats, codebook for VQ).
        n: number of images (None: all). rFID at small N is biased upward: compare only at equal N.
        batch_size: images per batch.
        device: torch device; None picks CUDA when available.
        seed: seed of the KL posterior sample behind the latent statistics.
        lpips_net: alex | vgg | squeeze; lpips_weights: explicit backbone file.
        ae_config: shape for LDM files (preset name, LDM YAML or JSON); default: read off the tensors.
        reconstructions: stored reconstructions (same order and size as `data`) instead of `ae`.
        mode: TF-Inception preprocessing for rFID/rsFID.
        inception_weights: explicit TF-Inception weight file.
        lpips_random_backbone: random LPIPS trunk, for tests of mechanics only (marked in results).
        progress: auto | always | never (geneval.progress; True/False = auto/never).
        rq_depth: put a D-depth residual quantiser (RQ-VAE, one codebook shared by all depths) on the
            autoencoder's latents (VQ: the pre-quantisation map; KL: the posterior mode) and report,
            per depth d, code usage, perplexity, dead codes and the error of the image decoded from
            the first d codes (rows ``rq_psnr_d1`` …). Adds the ``rq`` metrics.
        rq_codes: codes K of that codebook (default: the VQ codebook size, 256 for KL).
        rq_per_depth: fit one codebook per depth instead of RQ-VAE's one shared codebook.
        rq_fit: without `rq_codebooks`, fit the codebook by k-means (20 Lloyd iterations, seeded)
            on the latents of the first `rq_fit` images of `data`: an in-sample fit that measures
            what residual quantisation of this encoder can reach, not a trained RQ-VAE.
        rq_codebooks: trained codebooks instead: a safetensors file with ``codebooks`` of shape
            (1, K, C) (shared across depths) or (D, K, C) (one per depth).
    """
    from geneval.preflight import check_device

    t0 = time.time()
    check_device(device)
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if n is not None and n < 1:
        raise GenevalError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise GenevalError(f"batch size must be >= 1, got {batch_size}")
    if reconstructions is not None and ae is not None:
        raise GenevalError("give either an autoencoder or stored reconstructions, not both")
    if reconstructions is not None and ae_config is not None:
        raise GenevalError("--ae-config applies to an autoencoder (--ae); stored reconstructions (--reconstructions) have none")
    progress = progress_mode(progress)

    # ---- preflight: everything that can fail cheaply fails before the first batch
    loaded = None
    if reconstructions is None:
        from geneval.models.ae_formats import load_autoencoder

        loaded = load_autoencoder(ae, config=ae_config, device=dev)
    kind = loaded.config.kind if loaded else None
    rq_on = rq_depth is not None or rq_codebooks is not None
    names = expand_metrics(metrics) if metrics else list(default_metrics(kind))
    if rq_on and not any(m in RQ_METRICS for m in names):
        names += list(RQ_METRICS)  # --rq-depth asks for the per-depth rows; --metrics may pick some of them
    _check_metrics(names, kind, rq=rq_on)
    rq_plan = _rq_plan(loaded, rq_depth, rq_codes, rq_fit, rq_codebooks, dev, rq_per_depth) if rq_on else None
    if any(m in FEATURE_METRICS for m in names) and n is not None and n < 2:
        raise GenevalError("rFID needs at least 2 images")
    lp = None
    if "lpips" in names:
        lp = build_lpips(lpips_net, lpips_weights, random_backbone=lpips_random_backbone, device=dev, seed=seed)
    extractor = None
    if any(m in FEATURE_METRICS for m in names):
        from geneval.features.extract import FeatureExtractor

        extractor = FeatureExtractor(mode=mode, device=dev, weights=inception_weights, batch_size=batch_size)
    src = open_source(data)
    src.check_nonempty()
    rec_src = None
    if reconstructions is not None:
        rec_src = open_source(reconstructions)
        rec_src.check_nonempty()
        if n is None and src.n is not None and rec_src.n is not None and src.n != rec_src.n:
            raise GenevalError(f"originals have {src.n} images but reconstructions {rec_src.n}")
    cfg = ReconConfig(
        ae=None if loaded is None else (ae or "demo"),
        ae_config=ae_config,
        data=data if isinstance(data, str) else src.describe(),
        reconstructions=None if rec_src is None else (reconstructions if isinstance(reconstructions, str) else rec_src.describe()),
        metrics=tuple(names),
        n=n,
        batch_size=batch_size,
        device=str(dev),
        seed=seed,
        lpips_net=lpips_net,
        lpips_weights=lpips_weights,
        lpips_random_backbone=lpips_random_backbone,
        mode=mode,
        inception_weights=inception_weights,
        rq_depth=rq_plan.quantizer.depth if rq_plan else None,
        rq_codes=rq_plan.quantizer.n_embed if rq_plan else None,
        rq_fit=rq_fit if rq_plan and rq_plan.fitted else None,
        rq_codebooks=rq_codebooks,
    )

    tally = _Tally()
    if rq_plan is not None:
        from geneval.metrics.codebook import DepthTally

        if rq_plan.fitted:
            _fit_rq(rq_plan, src, loaded, batch_size, min(rq_fit, n) if n else rq_fit, dev, seed)
        tally.rq = DepthTally(rq_plan.quantizer.n_embed, rq_plan.quantizer.depth)
    stream = _stream(src, rec_src, loaded, batch_size, n, dev, seed, names, tally, rq_plan)
    with Progress(n or src.n, "recon", "img", progress) as bar:
        for orig, rec in stream:
            _score_batch(orig, rec, names, lp, extractor, tally)
            bar.update(len(orig))
    if tally.n == 0:
        raise GenevalError(f"{cfg.data}: no images were read")
    if n is not None and tally.n < n:
        log.warning("asked for n=%d but the data holds %d images: using %d", n, tally.n, tally.n)
    return _rows(cfg, names, tally, loaded, src, extractor, lp, time.time() - t0, rq_plan)


@dataclass
class _RQPlan:
    """A residual quantiser around a loaded autoencoder's latents, and how its codebooks came to be."""

    model: Any  # geneval.models.autoencoder_rq.RQAutoencoder
    quantizer: Any  # geneval.models.autoencoder_rq.ResidualQuantizer
    latents: str
    fitted: bool
    source: str
    codebooks_sha256: str | None = None
    fit_images: int = 0
    fit_residual_mse: list[float] | None = None


def _rq_plan(loaded, depth: int | None, codes: int | None, fit: int, codebooks: str | None, dev: torch.device, per_depth: bool = False) -> _RQPlan:
    """Preflight of the RQ check: build the quantiser (loading trained codebooks when given), fit nothing yet."""
    from geneval.models.autoencoder_rq import ResidualQuantizer, RQAutoencoder

    if loaded is None:
        raise GenevalError("--rq-depth needs an autoencoder (--ae), not stored reconstructions")
    if depth is not None and depth < 1:
        raise GenevalError(f"--rq-depth must be >= 1, got {depth}")
    if codes is not None and codes < 2:
        raise GenevalError(f"--rq-codes must be >= 2, got {codes}")
    if fit < 1:
        raise GenevalError(f"--rq-fit must be >= 1 image, got {fit}")
    c = int(loaded.config.embed_dim)
    model = loaded.model
    if loaded.config.kind == "kl":
        encode, latents = (lambda x: model.encode(x).mode()), "KL posterior mode"
    else:
        encode, latents = model.encode, "VQ pre-quantisation map"
    sha = None
    if codebooks is not None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from geneval.runner.output import sha256_file

        try:
            table = load_file(codebooks)
        except (OSError, SafetensorError) as e:
            raise GenevalError(f"--rq-codebooks {codebooks}: not a readable safetensors file ({str(e).splitlines()[0][:120]})") from None
        cb = table.get("codebooks")
        if cb is None or cb.ndim != 3 or not cb.is_floating_point():
            raise GenevalError(f"--rq-codebooks {codebooks}: needs a float tensor 'codebooks' of shape (1 or D, K, C); found {sorted(table)}")
        d_file, k, c_file = cb.shape
        if c_file != c:
            raise GenevalError(f"--rq-codebooks {codebooks}: code dimension {c_file} but the autoencoder's latents have {c} channels")
        if codes is not None and codes != k:
            raise GenevalError(f"--rq-codes {codes} disagrees with the {k} codes in {codebooks}")
        if not torch.isfinite(cb).all():
            raise GenevalError(f"--rq-codebooks {codebooks}: the codebooks hold non-finite values")
        if d_file == 1 and per_depth:
            raise GenevalError(f"--rq-per-depth, but {codebooks} holds one shared codebook")
        if d_file == 1 and depth is None:
            raise GenevalError(f"{codebooks} holds one shared codebook: give --rq-depth D")
        if d_file > 1 and depth is not None and depth != d_file:
            raise GenevalError(f"--rq-depth {depth} disagrees with the {d_file} per-depth codebooks in {codebooks}")
        q = ResidualQuantizer(k, c, depth or d_file, shared=d_file == 1)
        with torch.no_grad():
            for d in range(d_file):
                q.codebooks[d].weight.copy_(cb[d])
        sha = sha256_file(codebooks)
        source = f"trained codebooks from {codebooks}"
    else:
        if depth is None:
            raise GenevalError("give --rq-depth D for the residual-quantisation check")
        k = codes or (int(loaded.config.n_embed) if loaded.config.kind == "vq" else 256)
        q = ResidualQuantizer(k, c, depth, shared=not per_depth)
        source = "fitted: k-means on the data's first latents"
    rq = RQAutoencoder(encode, model.decode, q.to(dev)).eval()
    return _RQPlan(rq, q, latents, codebooks is None, source, sha)


def _fit_rq(plan: _RQPlan, src: Source, loaded, batch_size: int, fit_n: int, dev: torch.device, seed: int) -> None:
    """Fit the shared codebook by k-means on the latents of the first `fit_n` images of `src`."""
    from geneval.models.autoencoder_rq import fit_residual_codebooks

    vecs, seen = [], 0
    for batch, _ in src.batches(batch_size):
        batch = _fit_channels(batch[: fit_n - seen], loaded.config.in_channels)
        with torch.inference_mode():
            z = plan.model.encode(_to_pm1(batch, dev))
        vecs.append(z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).float())
        seen += len(batch)
        if seen >= fit_n:
            break
    if not vecs:
        raise GenevalError("no images to fit the residual codebook on")
    latents = torch.cat(vecs)
    if len(latents) < plan.quantizer.n_embed:
        raise GenevalError(
            f"--rq-fit {fit_n}: {len(latents)} latent vectors cannot fit {plan.quantizer.n_embed} codes; fit on more images or lower --rq-codes"
        )
    plan.fit_residual_mse = fit_residual_codebooks(plan.quantizer, latents, iters=RQ_FIT_ITERS, generator=torch.Generator().manual_seed(seed))
    plan.fit_images = seen


def _stream(src, rec_src, loaded, batch_size, n, dev, seed, names, tally, rq_plan=None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(original, reconstruction) uint8 NHWC batches; runs the autoencoder and collects latents/codes."""
    want_latents = any(m in LATENT_METRICS for m in names)
    want_codes = any(m in CODEBOOK_METRICS for m in names)
    gen = torch.Generator(device=dev).manual_seed(seed)
    pairs = _paired(src, rec_src, batch_size) if rec_src is not None else ((b, None) for b, _ in src.batches(batch_size))
    for orig, rec in pairs:
        if n is not None:
            orig = orig[: n - tally.n]
            rec = None if rec is None else rec[: n - tally.n]
        if len(orig) == 0:
            break
        if loaded is not None:
            cfg = loaded.config
            orig = _fit_channels(orig, cfg.in_channels)
            h, w = orig.shape[1:3]
            f = cfg.downsample_factor
            if h % f or w % f:
                raise GenevalError(
                    f"images of {h}x{w} do not divide by the autoencoder's downsampling factor {f}: pad or crop them to a multiple of {f}"
                )
            with torch.inference_mode():
                out = loaded.model.reconstruct(_to_pm1(orig, dev), generator=gen)
            if tuple(out.recon.shape[2:]) != (h, w) or out.recon.shape[1] != orig.shape[-1]:
                raise GenevalError(
                    f"reconstructions {tuple(out.recon.shape[1:])} differ in size from the originals {(orig.shape[3], h, w)} (C, H, W)"
                )
            rec = _to_uint8(out.recon)
            if rq_plan is not None:
                with torch.inference_mode():
                    by_depth, idx = rq_plan.model.reconstruct_by_depth(_to_pm1(orig, dev))
                # Scored like the psnr row: uint8-rounded reconstructions against the originals, in [0, 1].
                tally.rq.update(idx, orig / 255.0, [_to_uint8(r) / 255.0 for r in by_depth])
            if want_latents:
                if tally.moments is None:
                    tally.moments = ChannelMoments(out.latents.shape[1])
                    tally.first_scale = (scale_by_std(out.latents), int(out.latents.shape[0]))
                tally.moments.update(out.latents)
            if want_codes and out.indices is not None:
                k = int(cfg.n_embed)
                counts = torch.bincount(out.indices.flatten().cpu(), minlength=k)
                tally.codes = counts if tally.codes is None else tally.codes + counts
        elif orig.shape != rec.shape:
            raise GenevalError(f"originals {orig.shape[1:]} and reconstructions {rec.shape[1:]} differ in size")
        tally.n += len(orig)
        yield orig, rec


def _score_batch(orig: np.ndarray, rec: np.ndarray, names: list[str], lp, extractor, tally: _Tally) -> None:
    if "psnr" in names or "ssim" in names:
        a = torch.from_numpy(orig).permute(0, 3, 1, 2).double() / 255.0
        b = torch.from_numpy(rec).permute(0, 3, 1, 2).double() / 255.0
        if "psnr" in names:
            tally.per_image["psnr"].append(psnr_per_image(a, b))
        if "ssim" in names:
            tally.per_image["ssim"].append(ssim_per_image(a, b))
    if lp is not None:
        tally.per_image["lpips"].append(lpips_distance(lp, orig, rec))
    if extractor is not None:
        fo, fr = extractor.extract(orig), extractor.extract(rec)
        for metric, layer in FEATURE_METRICS.items():
            if metric in names:
                if layer not in tally.acc:
                    d = fo[layer].shape[1]
                    tally.acc[layer] = (GaussianAccumulator(d), GaussianAccumulator(d))
                tally.acc[layer][0].update(fo[layer])
                tally.acc[layer][1].update(fr[layer])


def _rows(cfg: ReconConfig, names, tally: _Tally, loaded, src, extractor, lp, wall: float, rq_plan: _RQPlan | None = None) -> ResultSet:
    run_id = new_run_id("recon")
    model_name = loaded.name if loaded else "stored reconstructions"
    common_extra: dict[str, Any] = {"data": cfg.data, "quantisation": QUANTISATION}
    if loaded:
        common_extra.update(
            ae_format=loaded.format,
            ae_path=loaded.path,
            ae_sha256=loaded.sha256,
            ae_kind=loaded.config.kind,
            recon_from="posterior mode" if loaded.config.kind == "kl" else "quantised codes",
        )
    else:
        common_extra["reconstructions"] = cfg.reconstructions
    ref_hash = src.content_hash()
    rows: list[ResultRow] = []

    def add(metric: str, value: float, std: float | None = None, **kw: Any) -> None:
        extra = {**common_extra, **kw.pop("extra", {})}
        spec = kw.pop("spec", metric)
        rows.append(
            ResultRow(
                run_id=run_id,
                metric=metric,
                value=float(value),
                std=std,
                n=tally.n,
                higher_is_better=get_metric(spec).higher_is_better,
                model=model_name,
                seed=cfg.seed,
                ref_sha256=ref_hash,
                wall_s=round(wall, 3),
                extra=extra,
                **kw,
            )
        )

    for m in ("psnr", "ssim", "lpips"):
        if m in names:
            s = summarize(np.concatenate(tally.per_image[m]))
            extra: dict[str, Any] = {"reduction": "mean over images", "std": "over images, ddof 0"}
            if m == "psnr":
                extra.update(n_identical=s.n_inf, psnr_over_non_identical=s.finite_mean, data_range=1.0)
                if s.n_inf:
                    extra["note"] = f"inf (identical): {s.n_inf} of {s.n} pairs are identical"
            if m == "lpips":
                extra.update(lpips_net=cfg.lpips_net, lpips_version="0.1")
                if cfg.lpips_random_backbone:
                    extra["lpips_backbone"] = "random (mechanics only, not a perceptual number)"
            add(m, s.mean, s.std, extra=extra)
    for m, layer in FEATURE_METRICS.items():
        if m in names:
            a, b = tally.acc[layer]
            if tally.n < 2:
                raise GenevalError("rFID needs at least 2 images")
            value = frechet_distance(a.mean(), a.cov(), b.mean(), b.cov())
            dims = a.dim
            note = (
                (
                    f"N={tally.n} < {dims} feature dims: the covariances are singular and r{'s' if m == 'rsfid' else ''}FID "
                    f"is biased upward; compare only at equal N"
                )
                if tally.n < dims
                else "compare only at equal N"
            )
            add(
                m,
                value,
                mode=extractor.mode,
                features=extractor.info["features"],
                weights_sha256=extractor.info["weights_sha256"],
                extra={"layer": layer, "note": note},
            )
    if tally.moments is not None:
        mean, std = tally.moments.overall()
        lat_extra = {
            "latents": "KL posterior sample (seeded)" if loaded.config.kind == "kl" else "VQ pre-quantisation map",
            "channel_mean": tally.moments.channel_mean().tolist(),
            "channel_std": tally.moments.channel_std().tolist(),
            "latent_shape_channels": tally.moments.channels,
            "values_per_channel": tally.moments.count,
        }
        first, first_n = tally.first_scale
        if "latent_scale" in names:
            add(
                "latent_scale",
                1.0 / std,
                extra={
                    **lat_extra,
                    "first_batch_scale": first,
                    "first_batch_size": first_n,
                    "ldm_recipe": "scale_by_std: 1 / z.flatten().std() on the first batch",
                    "configured_scale_factor": loaded.config.scale_factor,
                },
            )
        if "latent_std" in names:
            add("latent_std", std, extra=lat_extra)
        if "latent_mean" in names:
            add("latent_mean", mean, extra=lat_extra)
    if tally.codes is not None:
        u = codebook_usage(tally.codes)
        cb = {"codebook_size": u.size, "tokens": u.tokens, "collapsed": u.perplexity < 1.5}
        values = {"codebook_perplexity": u.perplexity, "codebook_usage": u.usage, "dead_codes": float(u.dead)}
        for m in CODEBOOK_METRICS:
            if m in names:
                add(m, values[m], extra=cb)
    if tally.rq is not None:
        q = rq_plan.quantizer
        rq_extra = {
            "rq_depth": q.depth,
            "rq_codes": q.n_embed,
            "rq_shared_codebook": q.shared,
            "rq_latents": rq_plan.latents,
            "rq_codebooks": rq_plan.source,
            "rq_codebooks_sha256": rq_plan.codebooks_sha256,
            "quantisation": QUANTISATION + "; error on [0, 1] pixels, like psnr",
        }
        if rq_plan.fitted:
            rq_extra.update(
                rq_fit_images=rq_plan.fit_images, rq_fit_iters=RQ_FIT_ITERS, rq_fit_seed=cfg.seed, rq_fit_residual_mse=rq_plan.fit_residual_mse
            )
        for row in tally.rq.report(data_range=1.0):
            d = row["depth"]
            for m, key in RQ_METRICS.items():
                if m in names:
                    add(f"{m}_d{d}", row[key], spec=m, extra={**rq_extra, "depth": d, "tokens": row["tokens"]})
    config = {
        "command": "recon",
        **asdict(cfg),
        "n_read": tally.n,
        "ae_info": _jsonable(loaded.info) if loaded else None,
        "ae_config_resolved": loaded.config.to_dict() if loaded else None,
    }
    return ResultSet(rows, config)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    import json

    return json.loads(json.dumps(d, default=str))

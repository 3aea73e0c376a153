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
import sys
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
from geneval.results import ResultRow, ResultSet, new_run_id
from geneval.sources import Source, open_source

log = logging.getLogger(__name__)

DEFAULT_DATA = "fashion-mnist:test"
DEFAULT_N = 500
PIXEL_METRICS = ("psnr", "ssim", "lpips")
FEATURE_METRICS = {"rfid": "pool3", "rsfid": "spatial"}
LATENT_METRICS = ("latent_scale", "latent_std", "latent_mean")
CODEBOOK_METRICS = ("codebook_perplexity", "codebook_usage", "dead_codes")
RECON_METRICS = PIXEL_METRICS + tuple(FEATURE_METRICS) + LATENT_METRICS + CODEBOOK_METRICS
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


def default_metrics(kind: str | None) -> tuple[str, ...]:
    """What runs offline by default: PSNR, SSIM, rFID, latent statistics, and codebook use for VQ."""
    base = ("psnr", "ssim", "rfid")
    if kind is None:
        return base
    return base + LATENT_METRICS + (CODEBOOK_METRICS if kind == "vq" else ())


def _check_metrics(names: list[str], kind: str | None) -> None:
    for m in names:
        if m not in RECON_METRICS:
            raise GenevalError(f"{m!r} is not a reconstruction metric; recon computes: {', '.join(RECON_METRICS)}")
    if kind is None:
        bad = [m for m in names if m in LATENT_METRICS + CODEBOOK_METRICS]
        if bad:
            raise GenevalError(f"{', '.join(bad)} need an autoencoder (--ae), not stored reconstructions")
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
        progress: show a progress bar on stderr.
    """
    t0 = time.time()
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if n is not None and n < 1:
        raise GenevalError(f"n must be >= 1, got {n}")
    if batch_size < 1:
        raise GenevalError(f"batch size must be >= 1, got {batch_size}")
    if reconstructions is not None and ae is not None:
        raise GenevalError("give either an autoencoder or stored reconstructions, not both")

    # ---- preflight: everything that can fail cheaply fails before the first batch
    loaded = None
    if reconstructions is None:
        from geneval.models.ae_formats import load_autoencoder

        loaded = load_autoencoder(ae, config=ae_config, device=dev)
    kind = loaded.config.kind if loaded else None
    names = expand_metrics(metrics) if metrics else list(default_metrics(kind))
    _check_metrics(names, kind)
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
    )

    tally = _Tally()
    stream = _stream(src, rec_src, loaded, batch_size, n, dev, seed, names, tally)
    from tqdm.auto import tqdm

    with tqdm(total=n or src.n, unit="img", desc="recon", file=sys.stderr, disable=not progress) as bar:
        for orig, rec in stream:
            _score_batch(orig, rec, names, lp, extractor, tally)
            bar.update(len(orig))
    if tally.n == 0:
        raise GenevalError(f"{cfg.data}: no images were read")
    if n is not None and tally.n < n:
        log.warning("asked for n=%d but the data holds %d images: using %d", n, tally.n, tally.n)
    return _rows(cfg, names, tally, loaded, src, extractor, lp, time.time() - t0)


def _stream(src, rec_src, loaded, batch_size, n, dev, seed, names, tally) -> Iterator[tuple[np.ndarray, np.ndarray]]:
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


def _rows(cfg: ReconConfig, names, tally: _Tally, loaded, src, extractor, lp, wall: float) -> ResultSet:
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
        rows.append(
            ResultRow(
                run_id=run_id,
                metric=metric,
                value=float(value),
                std=std,
                n=tally.n,
                higher_is_better=get_metric(metric).higher_is_better,
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

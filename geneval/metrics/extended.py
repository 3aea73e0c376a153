"""Metrics beyond the ADM recipe, registered in the compute table on TF-Inception pool3 features:
FID∞ (Chong & Forsyth), Vendi (dgm-eval's q = 1, linear kernel on L2-normalised rows), per-class
FID (labelled samples vs a labelled reference) and bootstrap confidence intervals (`--ci`).

The math lives in fd_inf.py, vendi.py, per_class.py and bootstrap.py; this module only adapts a
compute context to them, so each metric is one more consumer of the same streamed features.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from geneval.errors import GenevalError
from geneval.metrics import bootstrap, fd_inf, per_class, vendi
from geneval.metrics.compute import frechet_spec
from geneval.metrics.registry import MetricSpec, register

_INCEPTION = ("inception",)


def _rows(ctx: Any, which: str, metric: str) -> np.ndarray:
    side = ctx.side(which)
    arr = None if side is None else side.features("pool3")
    if arr is None:
        raise GenevalError(f"{metric} needs per-image pool3 features of the {which}; pass images (or a reference with stored features)")
    return np.asarray(arr)


def _labels(ctx: Any, which: str, metric: str) -> np.ndarray:
    side = ctx.side(which)
    lab = None if side is None else side.labels
    if lab is None:
        where = "a class-conditional model's samples" if which == "samples" else "a labelled reference (a dataset name, or an ADM batch with arr_1)"
        raise GenevalError(f"{metric} needs class labels of the {which}: use {where}")
    return np.asarray(lab)


def _fid_inf(ctx: Any) -> Any:
    from geneval.metrics.compute import MetricValue

    x = _rows(ctx, "samples", "fid_inf")
    ref = ctx.stats("fid_inf", "reference", "pool3")
    out = fd_inf.fd_inf(x, ref, seed=ctx.options.kid_seed, device=ctx.options.device)
    extra = {k: out[k] for k in ("slope", "residual_rms", "r2") if k in out}
    extra.update(
        n_points=len(out["n"]),
        subset_n=[int(v) for v in out["n"]],
        fd_n=[float(v) for v in out["fd_n"]],
        seed=ctx.options.kid_seed,
        n_ref=ref.n,
        fit="least squares FID_N = FID_inf + slope/N",
    )
    return MetricValue("fid_inf", float(out["fd_inf"]), out.get("residual_rms"), len(x), extra)


def _vendi(ctx: Any) -> Any:
    from geneval.metrics.compute import MetricValue

    x = _rows(ctx, "samples", "vendi")
    extra: dict[str, Any] = {"kernel": "linear on L2-normalised pool3 rows", "q": 1}
    labels = ctx.samples.labels
    if labels is not None:
        pc = vendi.vendi_per_class(x, labels)
        extra["per_class"] = {str(k): float(v) for k, v in pc.get("per_class", {}).items()}
        extra["per_class_mean"] = pc.get("mean_per_class")
    return MetricValue("vendi", float(vendi.vendi(x)), None, len(x), extra)


def _fid_per_class(ctx: Any) -> Any:
    from geneval.metrics.compute import MetricValue

    x, y = _rows(ctx, "samples", "fid_per_class"), _labels(ctx, "samples", "fid_per_class")
    r, ry = _rows(ctx, "reference", "fid_per_class"), _labels(ctx, "reference", "fid_per_class")
    out = per_class.fid_per_class(x, y, r, ry)
    extra = {
        "per_class": {str(row["class"]): float(row["fd"]) for row in out["rows"]},
        "worst_class": out["worst_class"],
        "worst": out["worst"],
        "missing_in_ref": out["missing_in_ref"],
        "missing_in_sample": out["missing_in_sample"],
        "value_is": "mean over classes",
    }
    return MetricValue("fid_per_class", float(out["mean"]), None, len(x), extra)


for _spec in (
    MetricSpec(
        "fid_inf",
        False,
        ("pool3",),
        True,
        "fid_inf",
        "FID extrapolated to N=inf: intercept of FID_N vs 1/N over 15 seeded subsets (Chong & Forsyth 2020)",
        compute=_fid_inf,
        min_n=fd_inf.MIN_N,
        weights=_INCEPTION,
    ),
    MetricSpec(
        "vendi",
        True,
        ("pool3",),
        False,
        "vendi",
        "Vendi diversity score: exp entropy of the eigenvalues of K/n, linear kernel on L2-normalised features",
        compute=_vendi,
        min_n=1,
        weights=_INCEPTION,
    ),
    MetricSpec(
        "fid_per_class",
        False,
        ("pool3",),
        True,
        "fid_per_class",
        "FID of each class's samples vs that class's reference images; value = mean, extra = rows and worst",
        compute=_fid_per_class,
        min_n=2 * per_class.MIN_PER_CLASS,
        weights=_INCEPTION,
    ),
):
    register(_spec)
del _spec


def _cmmd(ctx: Any) -> Any:
    from geneval.metrics import cmmd
    from geneval.metrics.compute import MetricValue

    x, y = ctx.arrays("cmmd", "clip_embed")
    value = cmmd.cmmd(x, y, device=ctx.options.device)
    extra = {
        "sigma": cmmd.SIGMA,
        "scale": cmmd.SCALE,
        "estimator": "biased MMD^2, Gaussian RBF (google-research/cmmd)",
        "n_ref": len(y),
        "features": "clip_embed (CLIP ViT-L/14@336, L2-normalised)",
    }
    return MetricValue("cmmd", value, None, len(x), extra)


# Other feature spaces (issue 14): one FD per registered network, and CMMD on CLIP embeddings.
# `weights` names the feature network each needs; the run/eval preflight checks its weight file.
for _spec in (
    frechet_spec("fd_dinov2", "dinov2_cls", "Frechet distance of DINOv2 ViT-L/14 CLS features (dgm-eval / EDM2 FD-DINOv2)", ("dinov2",)),
    frechet_spec("fd_dinov2_b14", "dinov2_b14_cls", "Frechet distance of DINOv2 ViT-B/14 CLS features", ("dinov2-b14",)),
    frechet_spec("fd_clip", "clip_embed", "Frechet distance of CLIP ViT-L/14@336 image embeddings", ("clip",)),
    MetricSpec(
        "cmmd",
        False,
        ("clip_embed",),
        True,
        "cmmd",
        "CMMD: 1000 x biased MMD^2 with a Gaussian RBF (sigma 10) on CLIP ViT-L/14@336 embeddings (Jayasumana et al. 2024)",
        compute=_cmmd,
        min_n=2,
        weights=("clip",),
    ),
):
    register(_spec)
del _spec

CI_METRICS = ("fid", "precision", "recall", "density", "coverage")


def attach_intervals(values: list[Any], ctx: Any, ci: float, n_boot: int, seed: int) -> None:
    """Add bootstrap intervals (seeded, resampling sample rows) to the FID/PR/DC values in place.

    Args:
        values: the computed MetricValues.
        ctx: the compute context (its samples need pool3 rows; the reference rows or stats).
        ci: coverage, e.g. 0.95.
        n_boot: resamples.
        seed: resampling seed (recorded).
    """
    wanted = [v for v in values if v.name in CI_METRICS]
    if not wanted:
        return
    x = _rows(ctx, "samples", "--ci")
    ref_rows = ctx.ref.features("pool3") if ctx.ref is not None else None
    names = tuple(("fd" if v.name == "fid" else v.name) for v in wanted)
    needs_rows = any(n != "fd" for n in names)
    ref: Any = ref_rows if (needs_rows or ctx.ref.given_stats("pool3") is None) else ctx.stats("fid", "reference", "pool3")
    if ref is None:
        raise GenevalError("--ci for precision/recall/density/coverage needs per-image reference features")
    o = ctx.options
    out = bootstrap.bootstrap_ci(x, ref, metrics=names, n_boot=n_boot, ci=ci, seed=seed, k_pr=o.pr_k, k_dc=o.dc_k, device=o.device)
    for v, name in zip(wanted, names):
        r = out[name]
        v.extra.update(
            ci=ci,
            ci_lo=float(r["lo"]),
            ci_hi=float(r["hi"]),
            ci_std=float(r["std"]),
            ci_n_boot=n_boot,
            ci_seed=seed,
            ci_method="percentile bootstrap over sample rows (reference held fixed)",
        )

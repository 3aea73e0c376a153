"""Batched generation: `sample` streams uint8 batches; `sample_to_npz` writes a resumable ADM npz.

Sample i is a function of (model, SamplingConfig, i) only: its noise comes from seed + i, its
label from a prefix-stable stream of `seed`, and (with `align`) its network arithmetic from a
fixed chunk layout, so outputs are bit-identical for any batch size on CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geneval import vocab
from geneval.errors import GenevalError
from geneval.progress import Progress
from geneval.sampling.aligned import aligned_call
from geneval.sampling.guidance import (
    CONVENTIONS,
    cfg_model_fn,
    cfg_scale,
    classifier_cond_fn,
)
from geneval.sampling.noise import NoiseSource
from geneval.sampling.samplers import get_sampler
from geneval.sampling.conventions import plan_for
from geneval.vocab import QUANTISATIONS

QUANTISATION = QUANTISATIONS["truncate"]  # the default rule, recorded with every sample set


@dataclass(frozen=True)
class SamplingConfig:
    """Everything that shapes a sample set (recorded with it).

    Args:
        n: number of samples.
        sampler: registered sampler name (geneval.sampling.samplers.SAMPLERS).
        steps: sampling steps (the respacing count for ddpm/ddim; sigma count for the ODE samplers).
        respacing: explicit guided-diffusion respacing ("250", "ddim25", "10,20,30"); None: the
            sampler's default ("ddim{steps}" for ddim, "{steps}" otherwise).
        eta: DDIM η.
        variance: DDPM variance override (fixed_small / fixed_large / learned_range).
        guidance: classifier-free guidance value in `convention`; None: no CFG.
        convention: "w" (Ho & Salimans, 0 = unguided) or "s" (diffusers/LDM, 1 = unguided).
        classifier_scale: classifier-guidance scale (0: off).
        seed: base seed; sample i uses seed + i.
        clip_denoised: clip x̂0 to [-1, 1] at every step.
        quantize: "truncate" (ADM) or "round" (EDM/DiT).
        autocast_bf16: run the networks under bf16 autocast (CUDA).
        align: chunk size of batch-invariant network evaluation (0: off, fastest on GPU).
        convention_source: "model" (a diffusers folder's own scheduler semantics) or "adm"
            (guided-diffusion's); None: the model's (geneval.sampling.conventions).
        respacing_convention: adm, leading, trailing, linspace or ldm; None: the source's.
        use_clipped_model_output: DDIM recomputes ε from the clipped x̂0 (None: True for adm,
            False under diffusers' DDIMPipeline semantics).
    """

    n: int
    sampler: str = "ddim"
    steps: int = 25
    respacing: str | None = None
    eta: float = 0.0
    variance: str | None = None
    guidance: float | None = None
    convention: str = "w"
    classifier_scale: float = 0.0
    seed: int = 0
    clip_denoised: bool = True
    quantize: str = "truncate"
    autocast_bf16: bool = False
    align: int = 8
    convention_source: str | None = None
    respacing_convention: str | None = None
    use_clipped_model_output: bool | None = None

    def validate(self) -> None:
        """Raise GenevalError for values that make no sense, before anything is loaded."""
        spec = get_sampler(self.sampler)
        if self.n < 1:
            raise GenevalError(f"n must be >= 1, got {self.n}")
        if self.steps < 1:
            raise GenevalError(f"steps must be >= 1, got {self.steps}")
        from geneval.preflight import check_seed

        check_seed(self.seed)
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise GenevalError(f"eta must be a finite number >= 0, got {self.eta:g}")
        if self.guidance is not None and not math.isfinite(self.guidance):
            raise GenevalError(f"guidance must be a finite number, got {self.guidance:g}")
        if self.convention not in CONVENTIONS:
            raise GenevalError(f"unknown guidance convention {self.convention!r}; use 'w' or 's'")
        if self.quantize not in QUANTISATIONS:
            raise GenevalError(f"unknown quantisation {self.quantize!r}; known: {', '.join(QUANTISATIONS)}")
        for kind in ("convention_source", "respacing_convention"):  # the sampling config checks its own fields
            if getattr(self, kind) is not None:
                vocab.check(kind, getattr(self, kind))
        if not (math.isfinite(self.classifier_scale) and self.classifier_scale >= 0):
            raise GenevalError(f"classifier scale must be a finite number >= 0, got {self.classifier_scale:g}")
        if self.classifier_scale > 0 and not spec.supports_classifier_guidance:
            raise GenevalError(f"sampler {self.sampler} does not support classifier guidance; use ddim or ddpm")
        if self.align < 0:
            raise GenevalError(f"align must be >= 0, got {self.align}")

    @property
    def cfg_s(self) -> float | None:
        """Guidance in the s convention (None: no classifier-free guidance)."""
        return None if self.guidance is None else cfg_scale(self.guidance, self.convention)

    def resolved_respacing(self) -> str:
        return self.respacing or get_sampler(self.sampler).default_respacing.format(steps=self.steps)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(respacing=self.resolved_respacing(), quantisation_rule=QUANTISATIONS[self.quantize], cfg_s=self.cfg_s)
        return d


@dataclass
class SampleBatch:
    """One batch of finished samples: images uint8 (B, H, W, C), labels (B,) or None, global indices."""

    images: np.ndarray
    labels: np.ndarray | None
    indices: np.ndarray


def check_models(model: Any, cfg: SamplingConfig, classifier: Any = None) -> None:
    """Raise GenevalError if the models cannot do what cfg asks (before any sampling)."""
    if model.kind != "unet":
        raise GenevalError(f"{model.source} is a {model.kind}, not a diffusion UNet")
    if classifier is not None and classifier.kind != "classifier":
        raise GenevalError(f"--classifier {classifier.source} is a {classifier.kind}, not a noisy classifier")
    if cfg.classifier_scale > 0 and classifier is None:
        raise GenevalError("classifier guidance (classifier scale > 0) needs a classifier checkpoint (--classifier)")
    s = cfg.cfg_s
    if s is not None and s != 1.0:
        if not model.is_conditional:
            hint = " (use --classifier with --classifier-scale for classifier guidance)" if classifier is None else ""
            raise GenevalError(f"classifier-free guidance needs a class-conditional model; {model.source} is unconditional{hint}")
        if model.null_class is None:
            raise GenevalError(f"classifier-free guidance needs a model trained with a null class; {model.source} has none")
    if classifier is not None and classifier.image_size != model.image_size:
        raise GenevalError(f"classifier is {classifier.image_size}px but the model is {model.image_size}px")
    if model.is_conditional and classifier is not None and classifier.num_classes != model.num_classes:
        raise GenevalError(f"classifier has {classifier.num_classes} classes, the model {model.num_classes}")
    plan_for(model, cfg)  # bad respacing or scheduler fields fail here


def check_classes(model: Any, classes: int | Sequence[int] | None, classifier: Any = None) -> None:
    """Raise GenevalError if `classes` (--class) are not labels of the model (or of its classifier), before any sampling."""
    if classes is None:
        return
    n_cls = model.num_classes if model.is_conditional else (classifier.num_classes if classifier is not None else None)
    what = f"--class {int(classes)}" if np.isscalar(classes) else "class labels"
    if n_cls is None:
        raise GenevalError(f"{what}: {model.source} is unconditional and no classifier was given")
    labels = np.atleast_1d(np.asarray(classes, dtype=np.int64))
    if labels.size and (labels.min() < 0 or labels.max() >= n_cls):
        raise GenevalError(f"{what}: the model has classes 0..{n_cls - 1}")


def draw_labels(lo: int, hi: int, num_classes: int | None, seed: int, classes: int | Sequence[int] | None) -> np.ndarray | None:
    """Labels of samples lo..hi−1: uniform from a prefix-stable stream of `seed`, one class, or the given hi−lo labels."""
    if num_classes is None:
        if classes is not None:
            raise GenevalError("class labels given for an unconditional model without a classifier")
        return None
    if classes is None:
        return np.random.default_rng(seed).integers(0, num_classes, size=hi, dtype=np.int64)[lo:]
    if np.isscalar(classes):
        labels = np.full(hi - lo, int(classes), dtype=np.int64)
    else:
        labels = np.asarray(classes, dtype=np.int64)
    if labels.shape != (hi - lo,):
        raise GenevalError(f"{labels.size} class labels for {hi - lo} samples")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise GenevalError(f"class labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    return labels


def quantize(x: torch.Tensor, rule: str = "truncate") -> np.ndarray:
    """[-1, 1] NCHW float → uint8 NHWC by ADM truncation or EDM rounding."""
    y = (x + 1) * 127.5 if rule == "truncate" else x * 127.5 + 128
    return y.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _net_call(model: Any, index: torch.Tensor, align: int, bf16: bool):
    """net(x, t, y) through aligned chunks and optional bf16 autocast."""
    net = model.net
    device_type = next(net.parameters()).device.type

    def call(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        ctx = torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            if y is None:
                return aligned_call(lambda a, b: net(a, b), index, align, x, t)
            return aligned_call(net, index, align, x, t, y)

    return call


def sample(
    model: Any,
    n: int,
    sampler: str = "ddim",
    steps: int = 25,
    eta: float = 0.0,
    guidance: float | None = None,
    convention: str = "w",
    classes: int | Sequence[int] | None = None,
    classifier: Any = None,
    classifier_scale: float = 0.0,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    autocast_bf16: bool = False,
    progress: str | bool = False,
    start: int = 0,
    config: SamplingConfig | None = None,
) -> Iterator[SampleBatch]:
    """Generate n samples in batches: yields SampleBatch(images uint8 NHWC, labels, indices).

    Args:
        model: a LoadedModel (geneval.models.load_model) or a path to load.
        n: number of samples (global indices start .. start+n−1).
        sampler, steps, eta, guidance, convention, classifier_scale, seed, autocast_bf16: see SamplingConfig.
        classes: None (uniform labels from `seed`), one class index, or n labels.
        classifier: a LoadedModel classifier for classifier guidance.
        batch_size: samples per batch (does not change the samples).
        device: where to run (default: the model's device).
        progress: auto | always | never (geneval.progress; True/False = auto/never).
        start: first global index (used to resume shards).
        config: a full SamplingConfig (overrides the individual knobs above).
    """
    if isinstance(model, (str, os.PathLike)):
        from geneval.models.formats import load_model

        model = load_model(model, device=device)
    cfg = config or SamplingConfig(
        n=n,
        sampler=sampler,
        steps=steps,
        eta=eta,
        guidance=guidance,
        convention=convention,
        classifier_scale=classifier_scale,
        seed=seed,
        autocast_bf16=autocast_bf16,
    )
    cfg.validate()
    check_models(model, cfg, classifier if cfg.classifier_scale > 0 else None)
    if batch_size < 1:
        raise GenevalError(f"batch size must be >= 1, got {batch_size}")
    return generate_range(model, cfg, classes, classifier, start, start + n, batch_size, device, progress)


def generate_range(
    model, cfg: SamplingConfig, classes, classifier, lo: int, hi: int, batch_size: int, device, progress: str | bool = False
) -> Iterator[SampleBatch]:
    """Samples lo..hi−1 of a checked (model, cfg) pair, in batches; sample i depends only on (cfg, i).

    Args:
        model, cfg, classifier: as in `sample` (already validated).
        classes: None, one class, or the hi−lo labels of this range.
        lo, hi: global index range.
        batch_size: samples per batch.
        device: where to run (None: the model's device).
        progress: auto | always | never (geneval.progress); silent inside an outer progress line.
    """
    device = torch.device(device) if device is not None else next(model.net.parameters()).device
    model.net.to(device)
    use_clf = classifier is not None and cfg.classifier_scale > 0
    if use_clf:
        classifier.net.to(device)
    spec = get_sampler(cfg.sampler)
    plan = plan_for(model, cfg)  # the model's own scheduler semantics, or guided-diffusion's
    schedule = plan.schedule
    n_cls = model.num_classes if model.is_conditional else (classifier.num_classes if classifier is not None else None)
    labels = draw_labels(lo, hi, n_cls, cfg.seed, classes)
    knobs: dict[str, Any] = dict(plan.knobs)
    C, H = model.in_channels, model.image_size
    with Progress(hi - lo, f"sampling {cfg.sampler}", "img", progress) as bar:
        for b0 in range(lo, hi, batch_size):
            idx = np.arange(b0, min(b0 + batch_size, hi))
            index = torch.from_numpy(idx)
            noise = NoiseSource((cfg.seed + idx).tolist(), device)
            x = noise.randn((C, H, H))
            y = None if labels is None else torch.from_numpy(labels[idx - lo]).to(device)
            net_call = _net_call(model, index, cfg.align, cfg.autocast_bf16)
            y_model = y if model.is_conditional else None
            if cfg.cfg_s is not None and cfg.cfg_s != 1.0:
                model_fn = cfg_model_fn(net_call, y_model, model.null_class, cfg.cfg_s, C)
            else:

                def model_fn(a, t, _y=y_model, _call=net_call):
                    return _call(a, t, _y)

            if use_clf:
                clf_call = _net_call(classifier, index, cfg.align, cfg.autocast_bf16)
                knobs["cond_fn"] = classifier_cond_fn(clf_call, y, cfg.classifier_scale)
            with torch.no_grad():
                x0 = spec.fn(model_fn, x, schedule, noise, **knobs)
            yield SampleBatch(quantize(x0, cfg.quantize), None if labels is None else labels[idx - lo].copy(), idx)
            bar.update(len(idx))


# ---------------------------------------------------------------- resumable npz output


def sample_to_npz(
    model: Any,
    out: str | os.PathLike,
    config: SamplingConfig,
    classifier: Any = None,
    classes: int | Sequence[int] | None = None,
    batch_size: int = 64,
    shard_size: int = 1024,
    device: str | torch.device | None = None,
    progress: str | bool = False,
    keep_shards: bool = False,
) -> dict[str, Any]:
    """Write an ADM sample batch (arr_0 uint8 N×H×W×3, arr_1 labels) plus a sidecar `<out>.json`.

    Samples go to resumable shards under `<out>.shards/<key>/` first (each written atomically;
    under torchrun each rank writes the shards it owns); a rerun with the same model and config,
    at any world size, skips finished shards. Rank 0 then streams the shards, in index order,
    into the final npz: memory is one shard, whatever N is. arr_0 is always RGB (grayscale
    models are repeated to 3 channels, as ADM's evaluator expects), the same rule as
    `run --save-samples`. Returns the sidecar record.

    Args:
        model: LoadedModel; classifier: LoadedModel or None; classes: see `sample`.
        out: the .npz path.
        config: the SamplingConfig.
        batch_size: samples per forward batch; shard_size: samples per shard file.
        device: as in `sample`.
        progress: auto | always | never (geneval.progress): one line for this job's samples, on rank 0.
        keep_shards: keep the shard folder after the final file is written.
    """
    from geneval import __version__
    from geneval.runner import distributed
    from geneval.runner.output import NpzStreamWriter, atomic_write_text
    from geneval.runner.shards import ShardStore

    config.validate()
    check_models(model, config, classifier if config.classifier_scale > 0 else None)
    out = Path(out)
    if out.suffix != ".npz":
        raise GenevalError(f"--out must end in .npz, got {out}")
    if shard_size < 1:
        raise GenevalError(f"shard size must be >= 1, got {shard_size}")
    if classes is not None and not np.isscalar(classes) and len(classes) != config.n:
        raise GenevalError(f"{len(classes)} class labels for {config.n} samples")
    check_classes(model, classes, classifier)  # before the shard folder exists
    dist = distributed.current()
    record = {
        "format": "adm-sample-batch",
        "n": config.n,
        "sampling": config.to_dict(),
        "model": model.describe(),
        "classifier": classifier.describe() if classifier is not None and config.classifier_scale > 0 else None,
        "classes": None if classes is None else (int(classes) if np.isscalar(classes) else "explicit"),
        "shard_size": shard_size,
        "quantisation": QUANTISATIONS[config.quantize],
        "channels": "rgb (arr_0 always N×H×W×3)",
        "scheduler_convention": plan_for(model, config).record,
    }
    key = {
        "kind": "sample",
        "geneval": __version__,
        **json.loads(json.dumps(record, default=str)),
        "labels_sha256": None if classes is None or np.isscalar(classes) else hashlib.sha256(np.asarray(classes, np.int64).tobytes()).hexdigest(),
    }
    store = ShardStore(out.with_name(out.name + ".shards"), key, config.n, shard_size).open()
    t0 = time.perf_counter()
    resumed = 0
    todo = [k for k in range(store.num_shards) if dist.owns(k) and not store.done(k)]
    total = sum(store.bounds(k)[1] - store.bounds(k)[0] for k in todo)
    with Progress(total, f"sampling {config.sampler}", "img", progress if dist.is_main else "never") as bar:
        for k in range(store.num_shards):
            if not dist.owns(k):
                continue
            if store.done(k):
                resumed += 1
                continue
            with store.claim(k, wait=True):  # another job writing this very shard finishes first
                if store.done(k):
                    resumed += 1
                    continue
                _sample_shard(store, k, model, config, classes, classifier, batch_size, device, bar)
    distributed.barrier(dist)
    record.update(shards=store.num_shards, world_size=dist.world)
    if dist.is_main:
        writer = NpzStreamWriter(out, config.n)
        try:
            for k in range(store.num_shards):
                arrays, _ = store.load(k, {"images", "labels"})
                writer.add(arrays["images"], arrays.get("labels"))
            writer.close()
        except BaseException:
            writer.discard()
            raise
    store.release()
    total_resumed = distributed.all_reduce_sum(dist, torch.tensor([float(resumed)], dtype=torch.float64))
    record.update(resumed_shards=int(total_resumed.item()), wall_s=round(time.perf_counter() - t0, 3))
    if dist.is_main:
        atomic_write_text(out.with_name(out.name + ".json"), json.dumps(record, indent=2) + "\n")
        if not keep_shards:
            shutil.rmtree(out.with_name(out.name + ".shards"), ignore_errors=True)
    distributed.barrier(dist)
    return record


def _sample_shard(
    store: Any, k: int, model: Any, config: SamplingConfig, classes: Any, classifier: Any, batch_size: int, device: Any, bar: Progress
) -> None:
    """Sample shard k (RGB uint8, labels, indices) and write it atomically."""
    from geneval.sources.reference import to_rgb

    lo, hi = store.bounds(k)
    labels_k = None if classes is None or np.isscalar(classes) else np.asarray(classes)[lo:hi]
    images, labels = [], []
    for b in generate_range(model, config, classes if labels_k is None else labels_k, classifier, lo, hi, batch_size, device):
        bar.update(len(b.indices))
        images.append(to_rgb(b.images))
        if b.labels is not None:
            labels.append(b.labels)
    arrays = {"images": np.concatenate(images), "indices": np.arange(lo, hi)}
    if labels:
        arrays["labels"] = np.concatenate(labels)
    store.save(k, arrays)

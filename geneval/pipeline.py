"""`geneval.run`: checkpoint → samples → TF-Inception features → metrics, in one streaming pass.

The only module that joins sampling and features. Order of work:

1. `preflight` (cheap, before any sampling): metric names, feature weights for every metric,
   a reference that can serve the metrics in this mode, the sampler, a checkpoint (and
   classifier) that loads, guidance the model supports, a writable output folder and
   `--save-samples` path. Any problem is a GenevalError (CLI exit 2) and nothing is written.
2. The reference side is prepared (stored statistics/features, else extracted).
3. Sampler batches go straight into the feature extractor on the same device — no PNG round
   trip. `save_samples` streams the same uint8 batches into an ADM `.npz` on the side.
4. Metrics → `ResultSet`; results.json/.csv/.md, config.json and grid.png are written to a
   hidden partial folder that is renamed to `<out_dir>/<run_id>/` only when complete.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geneval.config import RunConfig
from geneval.errors import GenevalError
from geneval.results import ResultSet, new_run_id, write_results
from geneval.runner.output import (
    NpzStreamWriter,
    atomic_write_text,
    check_output_file,
    check_writable,
)

log = logging.getLogger(__name__)

GRID_PER_CLASS = 8
GRID_MAX = 64


@dataclass
class RunPlan:
    """Everything preflight resolved; `execute` needs nothing else.

    Args:
        config: the resolved run configuration (model/ref filled in for the demo).
        metrics: expanded metric names.
        weights: resolved TF-Inception weights.
        model: the loaded diffusion model (geneval.models.formats.LoadedModel).
        classifier: the loaded noisy classifier, or None.
        ref: the opened reference Source, or None when no metric needs one.
        run_dir: final report folder (created only at the end).
        sampling: the geneval.sampling.generate.SamplingConfig derived from config.
        bias_warnings: metric → small-N warning.
        demo: True when the run uses the shipped demo model / reference.
        generator: a latent / discrete / cascade generator (generate(indices, labels, cfg,
            device) → uint8 NHWC); None for pixel-space UNets, which `model` samples.
        networks: feature networks run beside TF-Inception (DINOv2, CLIP), checked in preflight.
    """

    config: RunConfig
    metrics: tuple[str, ...]
    weights: Any
    model: Any
    classifier: Any
    ref: Any
    run_dir: Path
    sampling: Any
    bias_warnings: dict[str, str] = field(default_factory=dict)
    demo: bool = False
    generator: Any = None
    networks: list = field(default_factory=list)


def _extract_config(cfg: RunConfig):
    from geneval.evaluation import ExtractConfig

    return ExtractConfig(mode=cfg.mode, device=cfg.device, precision=cfg.precision, batch_size=min(cfg.batch_size, 250), progress=cfg.progress)


def _metric_options(cfg: RunConfig):
    from geneval.metrics.compute import MetricOptions
    from geneval.runner.distributed import current, device_for

    return MetricOptions(is_seed=cfg.seed, kid_seed=cfg.seed, device=device_for(current(), cfg.device), ci=cfg.ci, ci_seed=cfg.seed)


def sampling_config(cfg: RunConfig, defaults: dict[str, Any] | None = None):
    """The SamplingConfig (geneval.sampling) a run's samples are drawn with.

    Args:
        cfg: the run configuration; sampler, steps and guidance left unset (None) take...
        defaults: ...the model's own sampling defaults (a generator's `sampling_defaults`, e.g. DiT's
            ddpm 250 steps with CFG s=1.5), else ddim, 25 steps, no guidance.
    """
    from geneval.sampling.generate import SamplingConfig

    d = defaults or {}
    guidance, convention = cfg.guidance, cfg.convention
    if guidance is None and d.get("guidance") is not None:  # the authors' guidance, with its stated convention
        guidance, convention = d["guidance"], d.get("convention") or convention
    return SamplingConfig(
        n=cfg.n,
        sampler=cfg.sampler or d.get("sampler") or "ddim",
        steps=cfg.steps or d.get("steps") or 25,
        guidance=guidance,
        convention=convention or "w",
        classifier_scale=cfg.classifier_scale,
        seed=cfg.seed,
        convention_source=cfg.convention_source,
        respacing_convention=cfg.respacing_convention,
    )


def _load(path: str, what: str, preset: str | None, device: str | None, model_flags: str | None = None):
    """load_model with every failure (corrupt file, wrong keys) turned into a one-line GenevalError."""
    from geneval.models.formats import load_model

    flags = {"model_flags": model_flags} if model_flags else {}
    try:
        from geneval.runner.distributed import current, device_for

        return load_model(path, preset=preset, device=device_for(current(), device), **flags)
    except GenevalError as e:
        raise GenevalError(f"{what} checkpoint {path} does not load: {e}") from None
    except Exception as e:  # safetensors / torch raise their own types for damaged files
        msg = " ".join(str(e).split())[:200]
        raise GenevalError(f"{what} checkpoint {path} does not load ({type(e).__name__}: {msg})") from None


def preflight(cfg: RunConfig) -> RunPlan:
    """Validate a run completely before any sampling; raise GenevalError with a one-line reason.

    Args:
        cfg: the run configuration; `model=None` selects the shipped demo model and, if the
            metrics need a reference and `ref=None`, the shipped Fashion-MNIST test reference.
    """
    from geneval.evaluation import (
        check_servable,
        check_sizes,
        metric_needs,
        precomputed_usable,
    )
    from geneval.metrics.compute import check_computable
    from geneval.metrics.registry import expand_metrics, get_metric
    from geneval.sampling.generate import check_models
    from geneval.sources import open_source
    from geneval.weights import resolve_inception

    from geneval.preflight import check_cache, check_device

    check_device(cfg.device)  # a typo or a missing GPU: now, not as a checkpoint that "does not load"
    check_cache("runs")  # the run's shards; before weights are converted into the same folder
    names = tuple(expand_metrics(cfg.metrics))
    check_computable(names, "run")  # psnr, lpips_div, ... need pixels or pairs: refuse before sampling
    sampling_config(cfg).validate()  # sampler name, guidance knobs: before anything is loaded
    need_logits = any("logits" in get_metric(m).needs for m in names)
    weights = resolve_inception(None, need_logits=need_logits)  # MissingWeightsError names the file
    from geneval.runner.features import check_networks, networks_for

    networks = networks_for(names, cfg.features)
    check_networks(networks)  # DINOv2 / CLIP: library and weight file (file, hash, source) before any work

    from geneval import zoo

    demo = cfg.model is None or cfg.model in DEMO_GENERATORS
    # A mistyped path is the likeliest error; say so before asking for anything else.
    for what, path in (
        ("model", cfg.model),
        ("classifier", cfg.classifier),
        ("--upsampler", cfg.upsampler),
        ("--vae", cfg.vae),
        ("--model-config", cfg.model_config),
        ("--vq", cfg.vq),
    ):
        if path is not None and path != "demo" and path not in DEMO_GENERATORS and not Path(path).exists():
            raise GenevalError(f"{what} checkpoint not found: {path}" if what in ("model", "classifier") else f"{what} not found: {path}")
    needs_ref = [m for m in names if get_metric(m).needs_ref]
    if demo:
        if cfg.model is None:
            cfg = cfg.replace(model=str(zoo.demo_model_path()))
        if cfg.ref is None and needs_ref:
            cfg = cfg.replace(ref=str(zoo.demo_reference(cfg.mode)))
    ref_src = None
    if needs_ref:
        if cfg.ref is None:
            raise GenevalError(f"{', '.join(needs_ref)} compare(s) against a reference: pass --ref (images, ADM batch or stats .npz)")
        ref_src = open_source(cfg.ref)
        ref_src.check_nonempty()
        check_servable(ref_src, needs_ref, "reference", metric_needs(names, "reference"))
        precomputed_usable(ref_src, cfg.mode, weights, strict=not ref_src.has_images)

    run_id = cfg.run_id or new_run_id("run")
    cfg = cfg.replace(run_id=run_id)
    out_dir = Path(cfg.out_dir)
    run_dir = out_dir / run_id
    if run_dir.exists():
        raise GenevalError(f"report folder {run_dir} already exists: pick another --run-id")
    check_writable(out_dir, "output folder")
    if cfg.save_samples:
        check_output_file(cfg.save_samples, "--save-samples", (".npz",))

    try:
        generator = load_generator(cfg)
    except GenevalError:
        raise
    except Exception as e:  # noqa: BLE001  (torch / safetensors raise their own types for damaged files)
        msg = " ".join(str(e).split())[:200]
        raise GenevalError(f"model {cfg.model} does not load ({type(e).__name__}: {msg})") from None
    sampling = sampling_config(cfg, getattr(generator, "sampling_defaults", None))
    sampling.validate()
    if generator is not None and hasattr(generator, "check"):
        generator.check(sampling)
    model = classifier = None
    if generator is None:
        model = _load(cfg.model, "model", cfg.preset, cfg.device, cfg.model_flags)
        classifier = _load(cfg.classifier, "classifier", None, cfg.device) if cfg.classifier else None
        check_models(model, sampling, classifier)  # CFG needs a null class, classifier fits the model, respacing valid
    bias = check_sizes(names, cfg.n, None if ref_src is None else ref_src.n, _metric_options(cfg))
    return RunPlan(cfg, names, weights, model, classifier, ref_src, run_dir, sampling, bias, demo, generator, networks)


DEMO_GENERATORS = ("demo-ldm", "demo-vqd")


def _is_latent_folder(model: str | None) -> bool:
    """A geneval latent-model folder (config.json naming its own autoencoder), e.g. an exported demo."""
    if model is None:
        return False
    from geneval.sampling.latent import is_latent_native

    return is_latent_native(model)


def load_generator(cfg: RunConfig) -> Any:
    """The latent / discrete / cascade generator a configuration asks for; None for a pixel-space UNet.

    Which one follows from the flags: `--upsampler` (ADM cascade), `--vae` (DiT and other latent
    denoisers), `--model-config` (a CompVis LDM .ckpt + YAML), `--vq` or a VQ-Diffusion folder
    (discrete tokens), or the shipped `demo-ldm` / `demo-vqd`. Every loader raises a one-line
    GenevalError for a file it cannot use, before any sampling.
    """
    from geneval.runner.distributed import current, device_for

    device = device_for(current(), cfg.device)
    quantize = None
    if cfg.model == "demo-ldm":
        from geneval.sampling.latent import load_latent_generator

        gen = load_latent_generator("demo-ldm", None, cfg_channels=cfg.cfg_channels, device=device)
    elif cfg.model == "demo-vqd" or cfg.vq is not None:
        from geneval.models.discrete_generator import load_vqdiffusion

        if cfg.cfg_channels is not None:
            raise GenevalError("--cfg-channels applies to latent (DiT) models; VQ-Diffusion guides its token logits")

        kw: dict[str, Any] = {} if cfg.truncation_rate is None else {"truncation_rate": cfg.truncation_rate}
        gen = load_vqdiffusion(cfg.model, vq=cfg.vq, token_map=cfg.vq_token_map, vq_config=cfg.vq_config, skip=cfg.skip, device=device, **kw)
    elif cfg.upsampler is not None:
        from geneval.sampling.cascade import UpsamplerSampling, load_cascade

        gen = load_cascade(
            cfg.model,
            cfg.upsampler,
            base_preset=cfg.preset,
            upsampler_preset=cfg.upsampler_preset,
            base_flags=cfg.model_flags,
            classifier=cfg.classifier,
            upsampler_sampling=UpsamplerSampling(sampler=cfg.upsampler_sampler, steps=cfg.upsampler_steps),
            device=device,
        )
    elif cfg.model_config is not None:
        from geneval.models.ldm_formats import load_ldm_generator

        gen = load_ldm_generator(cfg.model, cfg.model_config, device=device, quantize=quantize)
    elif cfg.vae is not None or _is_latent_folder(cfg.model):
        from geneval.sampling.latent import load_latent_generator

        gen = load_latent_generator(cfg.model, cfg.vae, cfg_channels=cfg.cfg_channels, device=device)
    else:
        for flag, value in (("--cfg-channels", cfg.cfg_channels), ("--truncation-rate", cfg.truncation_rate)):
            if value is not None:
                raise GenevalError(f"{flag} applies to latent (DiT) or VQ-Diffusion models; {cfg.model} is a pixel-space UNet")
        for flag, value in (("--skip", cfg.skip), ("--vq-config", cfg.vq_config), ("--vq-token-map", cfg.vq_token_map)):
            if value is not None:
                raise GenevalError(f"{flag} applies to VQ-Diffusion models (--vq); {cfg.model} is a pixel-space UNet")
        if cfg.upsampler_preset is not None:
            raise GenevalError("--upsampler-preset applies to a cascade: pass --upsampler CKPT")
        return None
    return gen


def replan(plan: RunPlan, cfg: RunConfig) -> RunPlan:
    """A plan for `cfg` that differs from `plan` only in sampling knobs or report folder: nothing is reloaded.

    Args:
        plan: a preflighted plan (its model, classifier, weights and reference are reused).
        cfg: the new configuration; model, classifier, reference and feature settings must match.
    """
    from geneval.sampling.generate import check_models

    if plan.demo:  # preflight filled in the shipped demo model and reference
        cfg = cfg.replace(model=plan.config.model, ref=cfg.ref or plan.config.ref)
    fixed = ("model", "classifier", "preset", "ref", "mode", "precision", "metrics", "device")
    changed = [f for f in fixed if getattr(cfg, f) != getattr(plan.config, f)]
    if changed:
        raise GenevalError(f"replan cannot change {', '.join(changed)}: preflight a new plan")
    run_dir = Path(cfg.out_dir) / (cfg.run_id or new_run_id("run"))
    if run_dir.exists():
        raise GenevalError(f"report folder {run_dir} already exists: pick another --run-id")
    sampling = sampling_config(cfg, getattr(plan.generator, "sampling_defaults", None))
    sampling.validate()
    if plan.generator is not None:
        check = getattr(plan.generator, "check", None)
        if check is not None:
            check(sampling)
    else:
        check_models(plan.model, sampling, plan.classifier)
    return dataclasses.replace(plan, config=cfg.replace(run_id=run_dir.name), run_dir=run_dir, sampling=sampling)


def run(
    model: str | None = None,
    metrics: str = "fid",
    ref: str | None = None,
    n: int = 50_000,
    sampler: str | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    convention: str | None = None,
    classifier: str | None = None,
    classifier_scale: float = 0.0,
    seed: int = 0,
    batch_size: int = 250,
    device: str | None = None,
    mode: str = "tf",
    precision: str = "exact",
    save_samples: str | None = None,
    out_dir: str = "reports",
    run_id: str | None = None,
    progress: str | bool = "auto",
    preset: str | None = None,
    **options: Any,
) -> ResultSet | None:
    """Sample from a checkpoint and score the samples in one pass; write `<out_dir>/<run_id>/`.

    Args:
        model: checkpoint (native, guided-diffusion .pt with `preset`, diffusers); None = demo.
        metrics: metric / group names, e.g. "fid,pr".
        ref: reference images / ADM batch / stats npz; None with the demo = Fashion-MNIST test.
        n: number of samples.
        sampler: ddim, ddpm, dpmpp_2m, euler, heun; None: the model's own default, else ddim.
        steps: sampling steps; None: the model's own default, else 25.
        guidance: classifier-free guidance scale (None = off), in `convention`.
        convention: "w" (eps=(1+w)eps_c-w*eps_u) or "s" (eps=eps_u+s(eps_c-eps_u)).
        classifier: noisy classifier checkpoint for classifier guidance.
        classifier_scale: classifier guidance scale.
        seed: base seed (sample i uses seed + i).
        batch_size: samples per batch.
        device: torch device (None: cuda if available).
        mode: feature preprocessing (tf, pytorch, clean).
        precision: feature precision (exact, tf32, fast).
        save_samples: also write the samples as an ADM .npz here.
        out_dir: parent folder of the report folder.
        run_id: report folder name (default: a new id).
        progress: auto (a live bar on a terminal only), always (also plain timed lines off a
            terminal) or never; True/False mean auto/never.
        preset: architecture preset for guided-diffusion .pt checkpoints.
        options: any other RunConfig field (vae, model_config, vq, upsampler, features, ci,
            convention_source, shard_size, ...), as the CLI's options of the same name.
    Returns:
        The ResultSet; None on ranks other than 0 under torchrun.
    """
    cfg = RunConfig(
        model=model,
        preset=preset,
        metrics=metrics,
        ref=ref,
        n=n,
        sampler=sampler,
        steps=steps,
        guidance=guidance,
        convention=convention,
        classifier=classifier,
        classifier_scale=classifier_scale,
        seed=seed,
        batch_size=batch_size,
        device=device,
        mode=mode,
        precision=precision,
        save_samples=save_samples,
        out_dir=out_dir,
        run_id=run_id,
        progress=progress,
        **options,
    )
    return run_config(cfg)


def run_config(cfg: RunConfig, *, ref_side: Any = None) -> ResultSet:
    """`run` for a RunConfig: preflight, then execute.

    Args:
        cfg: the run configuration.
        ref_side: reference features already prepared (sweeps reuse them across runs).
    """
    from geneval.runner import distributed

    started = time.perf_counter()
    dist = distributed.current()
    if dist.active and cfg.run_id is None:  # every rank must name the same report folder
        cfg = cfg.replace(run_id=distributed.broadcast_object(dist, new_run_id("run")))
    plan, error = None, None
    try:
        plan = preflight(cfg)
    except GenevalError as e:
        error = e
    distributed.agree(dist, error)  # one failing rank stops every rank, before any sampling
    return execute(plan, ref_side=ref_side, started=started)


def prepare_ref(plan: RunPlan, extractor: Any = None):
    """The reference features for a plan (None when no metric needs a reference)."""
    from geneval.evaluation import prepare_reference

    if plan.ref is None:
        return None
    return prepare_reference(plan.ref, plan.metrics, _extract_config(plan.config), plan.weights, extractor=extractor)


class _GridKeeper:
    """Keeps the first few samples of each class (or the first GRID_MAX) for grid.png."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.per_class: dict[int, int] = {}

    @property
    def full(self) -> bool:
        return len(self.images) >= GRID_MAX

    def add(self, images: np.ndarray, labels: np.ndarray | None) -> None:
        if labels is None:
            room = GRID_MAX - len(self.images)
            self.images.extend(images[: max(room, 0)])
            return
        for img, y in zip(images, np.asarray(labels)):
            y = int(y)
            if self.per_class.get(y, 0) < GRID_PER_CLASS:
                self.per_class[y] = self.per_class.get(y, 0) + 1
                self.images.append(img)
                self.labels.append(y)


def run_store(plan: RunPlan, extractor: Any, needs: Any, device: str):
    """The run's shard store: keyed by everything that shapes its samples and features, never by world size."""
    from geneval import __version__
    from geneval.runner.shards import ShardStore
    from geneval.weights import cache_dir

    c = plan.config
    info = {k: v for k, v in extractor.info.items() if k not in ("device", "weights_path")}
    key = {
        "kind": "run",
        "geneval": __version__,
        "model_sha256": _model_sha(plan),
        "model": model_info(plan),
        "classifier_sha256": None if plan.classifier is None else plan.classifier.weights_sha256,
        "sampling": plan.sampling.to_dict(),
        "batch_size": c.batch_size,
        "features": info,
        "device_type": torch.device(device).type,
        "keep_images": needs.keep_images,
    }
    return ShardStore(cache_dir() / "runs", key, c.n, c.shard_size)


def execute(plan: RunPlan, *, ref_side: Any = None, started: float | None = None) -> ResultSet:
    """Run a preflighted plan on this rank: reference, sample→features shards, merge, metrics, report (rank 0).

    Args:
        plan: from `preflight`.
        ref_side: prepared reference features to reuse (None: prepare them here).
        started: time.perf_counter() at the start, for wall_s.
    """
    from geneval.evaluation import SideFeatures, metric_needs, score
    from geneval.features.extract import FeatureExtractor
    from geneval.metrics.compute import FeatureSet
    from geneval.metrics.registry import get_metric
    from geneval.runner import distributed
    from geneval.runner.execute import Chunk, Needs, iter_shard_images, stream_features
    from geneval.sampling.generate import draw_labels, generate_range

    started = time.perf_counter() if started is None else started
    c = plan.config
    dist = distributed.current()
    device = distributed.device_for(dist, c.device)
    if dist.is_main:
        for w in plan.bias_warnings.values():
            log.warning(w)
    need_logits = any("logits" in get_metric(m).needs for m in plan.metrics)
    extractor = FeatureExtractor(
        mode=c.mode, device=device, precision=c.precision, weights=plan.weights, need_logits=need_logits, batch_size=min(c.batch_size, 250)
    )
    if plan.networks:
        from geneval.runner.features import MultiExtractor

        extractor = MultiExtractor(extractor, plan.networks, device)
    if ref_side is None:
        ref_side = prepare_ref(plan, extractor)
    stats_layers, row_layers = metric_needs(plan.metrics, "samples", ci=c.ci is not None)
    is_chunk = None
    opts = _metric_options(c)
    # IS in ADM's convention streams as chunk sums; only the other metrics' rows are held.
    if "is" in plan.metrics and opts.is_convention == "adm" and not any("logits" in get_metric(m).needs for m in plan.metrics if m != "is"):
        row_layers, is_chunk = row_layers - {"logits"}, opts.is_chunk_size
    needs = Needs(stats_layers, row_layers, keep_images=bool(c.save_samples), is_chunk=is_chunk)
    store = run_store(plan, extractor, needs, device).open()

    def produce(lo: int, hi: int):
        if plan.generator is None:  # pixel-space UNet (+ classifier): the sampler's own batching
            for b in generate_range(plan.model, plan.sampling, None, plan.classifier, lo, hi, c.batch_size, device):
                yield Chunk(b.images, b.labels, b.indices)
            return
        # Latent, discrete and cascade models: sample i depends only on (config, i), labels from `seed`.
        labels = draw_labels(lo, hi, plan.generator.num_classes, plan.sampling.seed, None)
        for b0 in range(lo, hi, c.batch_size):
            idx = np.arange(b0, min(b0 + c.batch_size, hi))
            y = None if labels is None else labels[idx - lo]
            with torch.no_grad():
                images = plan.generator.generate(idx, y, plan.sampling, torch.device(device))
            yield Chunk(np.asarray(images), y, idx)

    streamed = stream_features(
        store,
        produce,
        extractor.extract,
        needs,
        dist,
        progress=c.progress,
        desc=f"sampling+features (rank {dist.rank}/{dist.world})" if dist.active else "sampling+features",
    )
    timings = {"sample_s": streamed.timings["produce_s"], "features_s": streamed.timings["features_s"]}
    if streamed.n != c.n:
        raise GenevalError(f"sampler produced {streamed.n} images, expected {c.n}")
    rs = None
    if dist.is_main:
        fs = FeatureSet.from_parts(streamed.rows, streamed.stats, streamed.n, is_chunks=streamed.inception_score, labels=streamed.labels)
        samples = SideFeatures(fs, f"{c.n} samples from {c.model}", origin={k: "sampled" for k in needs.layers})
        prov = _provenance(plan, timings) | {
            "world_size": dist.world,
            "shards": store.num_shards,
            "resumed_shards": streamed.resumed,
            "shard_size": c.shard_size,
        }
        info = dict(extractor.info) | {"device": device}
        rs = score(
            samples,
            ref_side,
            plan.metrics,
            options=_metric_options(c),
            info=info,
            seed=c.seed,
            run_id=c.run_id,
            model=_model_name(plan),
            extra_provenance=prov,
            started=started,
            bias_warnings=plan.bias_warnings,
        )
        rs.config = _resolved_config(plan, ref_side, timings, time.perf_counter() - started) | {
            "world_size": dist.world,
            "resumed_shards": streamed.resumed,
            "shard_store": str(store.dir),
        }
        for r in rs.rows:
            r.wall_s = round(time.perf_counter() - started, 3)
        grid = _GridKeeper()
        for images, labels in iter_shard_images(store, "images" if needs.keep_images else "preview"):
            grid.add(images, labels)
            if grid.full and labels is None:
                break
        _write_outputs(plan, rs, grid, store)
    store.release()  # every rank lets go, so rank 0's removal sees only other jobs' holds
    distributed.barrier(dist)
    if dist.is_main and not os.environ.get("GENEVAL_KEEP_SHARDS"):
        store.remove()
    if rs is not None:
        rs.config["report_dir"] = str(plan.run_dir)
    return rs


def _write_outputs(plan: RunPlan, rs: ResultSet, grid: _GridKeeper, store: Any) -> None:
    """Rank 0: --save-samples streamed shard by shard, then the report folder, renamed into place whole."""
    from geneval.runner.execute import iter_shard_images
    from geneval.sources.reference import to_rgb

    c = plan.config
    partial = plan.run_dir.parent / f".{plan.run_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writer = NpzStreamWriter(Path(c.save_samples), c.n) if c.save_samples else None
    try:
        if writer is not None:
            # One rule for every command: arr_0 is RGB (ADM's evaluator reads 3 channels).
            for images, labels in iter_shard_images(store, "images"):
                writer.add(to_rgb(images), labels)
            writer.close()
        _write_report(partial, rs, grid, plan)
        if plan.run_dir.exists():
            raise GenevalError(f"report folder {plan.run_dir} appeared while the run was going")
        os.replace(partial, plan.run_dir)
    except BaseException:
        if writer is not None:
            writer.discard()
        shutil.rmtree(partial, ignore_errors=True)
        raise


def model_info(plan: RunPlan) -> dict[str, Any]:
    """Provenance of whatever makes the images: the UNet's describe(), or the generator's."""
    return plan.generator.describe() if plan.generator is not None else plan.model.describe()


def _model_sha(plan: RunPlan) -> str | None:
    if plan.generator is not None:
        info = plan.generator.describe()
        return info.get("model_sha256") or info.get("weights_sha256") or info.get("sha256")
    return plan.model.weights_sha256


def _scheduler_record(plan: RunPlan) -> dict[str, Any] | None:
    """Which timesteps, final alpha and sampler knobs the pixel UNet was sampled with (generators record their own)."""
    if plan.generator is not None:
        return None
    from geneval.sampling.conventions import plan_for

    return plan_for(plan.model, plan.sampling).record


def _model_name(plan: RunPlan) -> str:
    if plan.demo and plan.generator is None:
        return "demo-unet-fmnist"
    return str(plan.config.model)


def _provenance(plan: RunPlan, timings: dict[str, float]) -> dict[str, Any]:
    from geneval.sampling.generate import QUANTISATIONS

    c, s = plan.config, plan.sampling
    sampler, steps = s.sampler, s.steps
    if plan.generator is not None and plan.generator.kind == "discrete":  # its own sampler, not the continuous ones
        info = plan.generator.describe()
        sampler, steps = f"{info.get('family', 'discrete')} mask-and-replace", info.get("network_evaluations")
    return {
        "sampler": sampler,
        "steps": steps,
        "guidance": s.guidance,
        "convention": s.convention if s.guidance is not None else None,
        "guidance_w": None if s.guidance is None else (s.guidance if s.convention == "w" else s.guidance - 1.0),
        "classifier": c.classifier,
        "classifier_scale": c.classifier_scale if c.classifier else None,
        "model_sha256": _model_sha(plan),
        "respacing": plan.sampling.resolved_respacing(),
        "scheduler_convention": _scheduler_record(plan),
        "quantisation": QUANTISATIONS[plan.sampling.quantize],
        "sample_s": round(timings["sample_s"], 3),
        "features_s": round(timings["features_s"], 3),
    }


def _resolved_config(plan: RunPlan, ref_side: Any, timings: dict[str, float], wall: float) -> dict[str, Any]:
    c = plan.config
    return {
        "command": "run",
        **c.to_dict(),
        "metrics_expanded": list(plan.metrics),
        "demo": plan.demo,
        "sampling": plan.sampling.to_dict(),
        "model_info": model_info(plan),
        "classifier_info": None if plan.classifier is None else plan.classifier.describe(),
        "ref_describe": None if ref_side is None else ref_side.describe,
        "ref_origin": None if ref_side is None else dict(ref_side.origin),
        "weights_sha256": plan.weights.sha256,
        "warnings": list(plan.bias_warnings.values()),
        "timings_s": {k: round(v, 3) for k, v in timings.items()} | {"wall_s": round(wall, 3)},
    }


def _write_report(folder: Path, rs: ResultSet, grid: _GridKeeper, plan: RunPlan) -> None:
    from geneval.report.grid import save_grid

    for name in ("results.json", "results.csv", "results.md"):
        write_results(rs, folder / name)
    atomic_write_text(folder / "config.json", json.dumps(rs.config, indent=2, default=str) + "\n")
    if grid.images:
        labels = np.asarray(grid.labels) if grid.labels else None
        save_grid(
            folder / "grid.png",
            np.stack(grid.images),
            labels,
            class_names=getattr(plan.model, "class_names", None),
            per_class=GRID_PER_CLASS,
            max_images=GRID_MAX,
        )

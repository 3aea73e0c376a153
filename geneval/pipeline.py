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

import json
import logging
import os
import shutil
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from geneval.config import RunConfig
from geneval.errors import GenevalError
from geneval.results import ResultSet, atomic_write_text, new_run_id, write_results

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


def _extract_config(cfg: RunConfig):
    from geneval.evaluation import ExtractConfig

    return ExtractConfig(mode=cfg.mode, device=cfg.device, precision=cfg.precision,
                         batch_size=min(cfg.batch_size, 250), progress=cfg.progress)


def _metric_options(cfg: RunConfig):
    from geneval.metrics.compute import MetricOptions

    return MetricOptions(is_seed=cfg.seed, kid_seed=cfg.seed)


def sampling_config(cfg: RunConfig):
    """The SamplingConfig (geneval.sampling) a run's samples are drawn with."""
    from geneval.sampling.generate import SamplingConfig

    return SamplingConfig(n=cfg.n, sampler=cfg.sampler, steps=cfg.steps, guidance=cfg.guidance,
                          convention=cfg.convention, classifier_scale=cfg.classifier_scale, seed=cfg.seed)


def _load(path: str, what: str, preset: str | None, device: str | None):
    """load_model with every failure (corrupt file, wrong keys) turned into a one-line GenevalError."""
    from geneval.models.formats import load_model

    try:
        return load_model(path, preset=preset, device=device or _default_device())
    except GenevalError as e:
        raise GenevalError(f"{what} checkpoint {path} does not load: {e}") from None
    except Exception as e:  # safetensors / torch raise their own types for damaged files
        msg = " ".join(str(e).split())[:200]
        raise GenevalError(f"{what} checkpoint {path} does not load ({type(e).__name__}: {msg})") from None


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_writable(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove we can write there (a probe file, removed at once)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".geneval-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise GenevalError(f"{what} {folder} is not writable ({e.strerror or e})") from None


def preflight(cfg: RunConfig) -> RunPlan:
    """Validate a run completely before any sampling; raise GenevalError with a one-line reason.

    Args:
        cfg: the run configuration; `model=None` selects the shipped demo model and, if the
            metrics need a reference and `ref=None`, the shipped Fashion-MNIST test reference.
    """
    from geneval.evaluation import _check_servable, _precomputed_usable, check_sizes, metric_needs
    from geneval.features.extract import PRECISIONS
    from geneval.features.resize import MODES
    from geneval.metrics.registry import expand_metrics, get_metric
    from geneval.sampling.generate import check_models
    from geneval.sources import open_source
    from geneval.weights import resolve_inception

    names = tuple(expand_metrics(cfg.metrics))
    if cfg.mode not in MODES:
        raise GenevalError(f"unknown mode {cfg.mode!r}: choose one of {', '.join(MODES)}")
    if cfg.precision not in PRECISIONS:
        raise GenevalError(f"unknown precision {cfg.precision!r}: choose one of {', '.join(PRECISIONS)}")
    sampling_config(cfg).validate()  # sampler name, guidance knobs: before anything is loaded
    need_logits = any("logits" in get_metric(m).needs for m in names)
    weights = resolve_inception(None, need_logits=need_logits)  # MissingWeightsError names the file

    demo = cfg.model is None
    # A mistyped path is the likeliest error; say so before asking for anything else.
    for what, path in (("model", cfg.model), ("classifier", cfg.classifier)):
        if path is not None and path != "demo" and not Path(path).exists():
            raise GenevalError(f"{what} checkpoint not found: {path}")
    needs_ref = [m for m in names if get_metric(m).needs_ref]
    if demo:
        from geneval import zoo

        cfg = cfg.replace(model=str(zoo.demo_model_path()))
        if cfg.ref is None and needs_ref:
            cfg = cfg.replace(ref=str(zoo.demo_reference(cfg.mode)))
    ref_src = None
    if needs_ref:
        if cfg.ref is None:
            raise GenevalError(f"{', '.join(needs_ref)} compare(s) against a reference: pass --ref (images, ADM batch or stats .npz)")
        ref_src = open_source(cfg.ref)
        ref_src.check_nonempty()
        _check_servable(ref_src, needs_ref, "reference", metric_needs(names, "reference"))
        _precomputed_usable(ref_src, cfg.mode, weights, strict=not ref_src.has_images)

    run_id = cfg.run_id or new_run_id("run")
    cfg = cfg.replace(run_id=run_id)
    out_dir = Path(cfg.out_dir)
    run_dir = out_dir / run_id
    if run_dir.exists():
        raise GenevalError(f"report folder {run_dir} already exists: pick another --run-id")
    _check_writable(out_dir, "output folder")
    if cfg.save_samples:
        p = Path(cfg.save_samples)
        if p.suffix.lower() != ".npz":
            raise GenevalError(f"--save-samples must name a .npz file (ADM sample batch), got {p}")
        _check_writable(p.parent, "--save-samples folder")

    model = _load(cfg.model, "model", cfg.preset, cfg.device)
    classifier = _load(cfg.classifier, "classifier", None, cfg.device) if cfg.classifier else None
    sampling = sampling_config(cfg)
    sampling.validate()
    check_models(model, sampling, classifier)  # CFG needs a null class, classifier fits the model, respacing valid
    bias = check_sizes(names, cfg.n, None if ref_src is None else ref_src.n, _metric_options(cfg))
    return RunPlan(cfg, names, weights, model, classifier, ref_src, run_dir, sampling, bias, demo)


def run(model: str | None = None, metrics: str = "fid", ref: str | None = None, n: int = 50_000, sampler: str = "ddim",
        steps: int = 25, guidance: float | None = None, convention: str = "w", classifier: str | None = None,
        classifier_scale: float = 0.0, seed: int = 0, batch_size: int = 250, device: str | None = None,
        mode: str = "tf", precision: str = "exact", save_samples: str | None = None, out_dir: str = "reports",
        run_id: str | None = None, progress: bool = True, preset: str | None = None) -> ResultSet:
    """Sample from a checkpoint and score the samples in one pass; write `<out_dir>/<run_id>/`.

    Args:
        model: checkpoint (native, guided-diffusion .pt with `preset`, diffusers); None = demo.
        metrics: metric / group names, e.g. "fid,pr".
        ref: reference images / ADM batch / stats npz; None with the demo = Fashion-MNIST test.
        n: number of samples.
        sampler: ddim, ddpm, dpmpp_2m, euler, heun.
        steps: sampling steps.
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
        progress: progress bars on stderr.
        preset: architecture preset for guided-diffusion .pt checkpoints.
    """
    cfg = RunConfig(model=model, preset=preset, metrics=metrics, ref=ref, n=n, sampler=sampler, steps=steps,
                    guidance=guidance, convention=convention, classifier=classifier,
                    classifier_scale=classifier_scale, seed=seed, batch_size=batch_size, device=device, mode=mode,
                    precision=precision, save_samples=save_samples, out_dir=out_dir, run_id=run_id, progress=progress)
    return run_config(cfg)


def run_config(cfg: RunConfig, *, ref_side: Any = None) -> ResultSet:
    """`run` for a RunConfig: preflight, then execute.

    Args:
        cfg: the run configuration.
        ref_side: reference features already prepared (sweeps reuse them across runs).
    """
    started = time.perf_counter()
    plan = preflight(cfg)
    return execute(plan, ref_side=ref_side, started=started)


def prepare_ref(plan: RunPlan, extractor: Any = None):
    """The reference features for a plan (None when no metric needs a reference)."""
    from geneval.evaluation import prepare_reference

    if plan.ref is None:
        return None
    return prepare_reference(plan.ref, plan.metrics, _extract_config(plan.config), plan.weights, extractor=extractor)


def _sample_batches(plan: RunPlan) -> Iterator[Any]:
    """The sampler's stream of SampleBatch(images uint8 NHWC, labels, indices)."""
    from geneval.sampling.generate import sample

    c = plan.config
    return sample(plan.model, c.n, classifier=plan.classifier, batch_size=c.batch_size,
                  device=c.device or _default_device(), progress=False, config=plan.sampling)


class _NpzWriter:
    """Streams uint8 batches into an ADM sample batch (.npz: arr_0 N×H×W×3, arr_1 labels) atomically."""

    def __init__(self, path: Path, n: int) -> None:
        self.path, self.n, self.count = path, n, 0
        fd, self.tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        self._zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._member = None
        self.labels: list[np.ndarray] = []

    def add(self, images: np.ndarray, labels: np.ndarray | None) -> None:
        from geneval.sources.reference import to_rgb

        rgb = np.ascontiguousarray(to_rgb(images))
        if self._member is None:
            self._member = self._zip.open("arr_0.npy", "w", force_zip64=True)
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (self.n, *rgb.shape[1:])}
            np.lib.format.write_array_header_2_0(self._member, header)
        self._member.write(rgb.data)
        self.count += len(rgb)
        if labels is not None:
            self.labels.append(np.asarray(labels, dtype=np.int64))

    def close(self) -> None:
        if self.count != self.n:
            raise GenevalError(f"sampler produced {self.count} images, expected {self.n}")
        self._member.close()
        if self.labels:
            with self._zip.open("arr_1.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.concatenate(self.labels), allow_pickle=False)
        self._zip.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        try:
            if self._member is not None:
                self._member.close()
            self._zip.close()
        except (OSError, ValueError):
            pass
        Path(self.tmp).unlink(missing_ok=True)


class _GridKeeper:
    """Keeps the first few samples of each class (or the first GRID_MAX) for grid.png."""

    def __init__(self) -> None:
        self.images: list[np.ndarray] = []
        self.labels: list[int] = []
        self.per_class: dict[int, int] = {}

    def add(self, images: np.ndarray, labels: np.ndarray | None) -> None:
        if labels is None:
            room = GRID_MAX - len(self.images)
            self.images.extend(images[:max(room, 0)])
            return
        for img, y in zip(images, np.asarray(labels)):
            y = int(y)
            if self.per_class.get(y, 0) < GRID_PER_CLASS:
                self.per_class[y] = self.per_class.get(y, 0) + 1
                self.images.append(img)
                self.labels.append(y)


def stream_features(plan: RunPlan, extractor: Any, on_batch: Any = None) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Sample and extract in one loop; returns (features by layer, timings).

    Args:
        plan: the preflighted plan.
        extractor: a FeatureExtractor on the sampling device.
        on_batch: optional callback(images, labels) for each batch (grid, npz writer).
    """
    from tqdm.auto import tqdm

    c = plan.config
    chunks: dict[str, list[np.ndarray]] = {}
    t_sample = t_feat = 0.0
    count = 0
    bar_s = tqdm(total=c.n, unit="img", desc="sampling", file=sys.stderr, disable=not c.progress, position=0)
    bar_f = tqdm(total=c.n, unit="img", desc="features", file=sys.stderr, disable=not c.progress, position=1)
    try:
        it = iter(_sample_batches(plan))
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            t_sample += time.perf_counter() - t0
            if batch is None:
                break
            images = batch.images
            bar_s.update(len(images))
            t0 = time.perf_counter()
            feats = extractor.extract(images)
            t_feat += time.perf_counter() - t0
            for k, v in feats.items():
                chunks.setdefault(k, []).append(v.numpy())
            bar_f.update(len(images))
            count += len(images)
            if on_batch is not None:
                on_batch(np.asarray(images), None if batch.labels is None else np.asarray(batch.labels))
    finally:
        bar_s.close()
        bar_f.close()
    if count != c.n:
        raise GenevalError(f"sampler produced {count} images, expected {c.n}")
    return {k: np.concatenate(v) for k, v in chunks.items()}, {"sample_s": t_sample, "features_s": t_feat}


def execute(plan: RunPlan, *, ref_side: Any = None, started: float | None = None) -> ResultSet:
    """Run a preflighted plan: reference, sample→features stream, metrics, report folder.

    Args:
        plan: from `preflight`.
        ref_side: prepared reference features to reuse (None: prepare them here).
        started: time.perf_counter() at the start, for wall_s.
    """
    from geneval.evaluation import SideFeatures, score
    from geneval.features.extract import FeatureExtractor
    from geneval.metrics.registry import get_metric

    started = time.perf_counter() if started is None else started
    c = plan.config
    for w in plan.bias_warnings.values():
        log.warning(w)
    need_logits = any("logits" in get_metric(m).needs for m in plan.metrics)
    extractor = FeatureExtractor(mode=c.mode, device=c.device or _default_device(), precision=c.precision,
                                 weights=plan.weights, need_logits=need_logits, batch_size=min(c.batch_size, 250))
    if ref_side is None:
        ref_side = prepare_ref(plan, extractor)

    partial = plan.run_dir.parent / f".{plan.run_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    writer = _NpzWriter(Path(c.save_samples), c.n) if c.save_samples else None
    grid = _GridKeeper()

    def on_batch(images: np.ndarray, labels: np.ndarray | None) -> None:
        grid.add(images, labels)
        if writer is not None:
            writer.add(images, labels)

    try:
        arrays, timings = stream_features(plan, extractor, on_batch)
        if writer is not None:
            writer.close()
        samples = SideFeatures.from_arrays(arrays, describe=f"{c.n} samples from {c.model}")
        rs = score(samples, ref_side, plan.metrics, options=_metric_options(c), info=dict(extractor.info), seed=c.seed,
                   run_id=c.run_id, model=_model_name(plan), extra_provenance=_provenance(plan, timings),
                   started=started, bias_warnings=plan.bias_warnings)
        rs.config = _resolved_config(plan, ref_side, timings, time.perf_counter() - started)
        for r in rs.rows:
            r.wall_s = round(time.perf_counter() - started, 3)
        _write_report(partial, rs, grid, plan)
        if plan.run_dir.exists():
            raise GenevalError(f"report folder {plan.run_dir} appeared while the run was going")
        os.replace(partial, plan.run_dir)
    except BaseException:
        if writer is not None:
            writer.discard()
        shutil.rmtree(partial, ignore_errors=True)
        raise
    rs.config["report_dir"] = str(plan.run_dir)
    return rs


def _model_name(plan: RunPlan) -> str:
    return "demo-unet-fmnist" if plan.demo else str(plan.config.model)


def _provenance(plan: RunPlan, timings: dict[str, float]) -> dict[str, Any]:
    from geneval.sampling.generate import QUANTISATIONS

    c = plan.config
    return {
        "sampler": c.sampler,
        "steps": c.steps,
        "guidance": c.guidance,
        "convention": c.convention if c.guidance is not None else None,
        "guidance_w": c.guidance_w,
        "classifier": c.classifier,
        "classifier_scale": c.classifier_scale if c.classifier else None,
        "model_sha256": plan.model.weights_sha256,
        "respacing": plan.sampling.resolved_respacing(),
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
        "model_info": plan.model.describe(),
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
        save_grid(folder / "grid.png", np.stack(grid.images), labels, class_names=plan.model.class_names,
                  per_class=GRID_PER_CLASS, max_images=GRID_MAX)

"""Checkpoint formats behind one `load_model(path, ...)`.

- native: safetensors weights whose header metadata holds geneval's JSON config (architecture,
  diffusion schedule, prediction type, image size, classes, class names, null class, training
  info). Saved as a single `.safetensors` file, or a directory with `model.safetensors` plus a
  human-readable copy of the config in `config.json`.
- guided-diffusion / improved-diffusion `.pt`: a bare fp32 state dict, read with
  `torch.load(weights_only=True)`; the architecture comes from a preset and/or flags.
- diffusers folders (UNet2DModel + scheduler config), via the optional `diffusers` extra.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geneval.errors import GenevalError
from geneval.models.classifier import ClassifierConfig, EncoderUNet
from geneval.models.presets import get_preset
from geneval.models.unet import UNetConfig, UNetModel
from geneval.sampling.schedules import DiffusionConfig

NATIVE_FORMAT = "geneval-native"
NATIVE_VERSION = 1
_META_KEY = "geneval_config"


@dataclass
class LoadedModel:
    """A network ready for sampling plus everything needed to sample from it correctly.

    Args:
        net: the module (eval mode, on the requested device); forward(x, t[, y]).
        config: its architecture (UNetConfig / ClassifierConfig, or a dict for diffusers nets).
        diffusion: the training DiffusionConfig (None for classifiers).
        kind: "unet" or "classifier".
        format: "native", "guided-diffusion" or "diffusers".
        num_classes: real classes (excluding a null slot), or None if unconditional.
        null_class: label index of the "no class" embedding for classifier-free guidance.
        class_names: optional names of the real classes.
        source: the path it was loaded from.
        weights_sha256: sha256 of the weights file.
        preset: the preset name used, if any.
        info: training info and other free metadata from the file.
    """

    net: nn.Module
    config: Any
    diffusion: DiffusionConfig | None
    kind: str
    format: str
    num_classes: int | None = None
    null_class: int | None = None
    class_names: list[str] | None = None
    source: str = ""
    weights_sha256: str = ""
    preset: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.config["sample_size"] if isinstance(self.config, dict) else self.config.image_size)

    @property
    def in_channels(self) -> int:
        return int(self.config["in_channels"] if isinstance(self.config, dict) else self.config.in_channels)

    @property
    def is_conditional(self) -> bool:
        return self.num_classes is not None

    def describe(self) -> dict[str, Any]:
        """Provenance record of this model for results and sample sidecars."""
        return {
            "source": self.source,
            "format": self.format,
            "kind": self.kind,
            "preset": self.preset,
            "weights_sha256": self.weights_sha256,
            "image_size": self.image_size,
            "num_classes": self.num_classes,
            "null_class": self.null_class,
            "diffusion": self.diffusion.to_dict() if self.diffusion else None,
        }


# ---------------------------------------------------------------- helpers


def file_sha256(path: str | os.PathLike) -> str:
    """Streaming sha256 of a file (geneval's one sha256 helper, memoised per path/size/mtime)."""
    from geneval.runner.output import sha256_file

    return sha256_file(path)


def describe_state_dict(sd: dict[str, torch.Tensor]) -> str:
    """What a state dict looks like (kind, channels, classes, learned sigma), inferred from keys/shapes."""
    parts = [f"{len(sd)} tensors"]
    first = sd.get("input_blocks.0.0.weight")
    if first is not None and first.ndim == 4:
        parts.append(f"in_channels={first.shape[1]}, model_channels={first.shape[0]}")
    if "out.2.c_proj.weight" in sd:
        parts.insert(0, "classifier")
        parts.append(f"classes={sd['out.2.c_proj.weight'].shape[0]}")
        pe = sd.get("out.2.positional_embedding")
        if pe is not None:
            parts.append(f"pool grid {round((pe.shape[1] - 1) ** 0.5)}px")
    elif "out.2.weight" in sd:
        parts.insert(0, "UNet")
        out_ch = sd["out.2.weight"].shape[0]
        learned = first is not None and out_ch == 2 * first.shape[1]
        parts.append(f"out_channels={out_ch} (learned sigma: {'yes' if learned else 'no'})")
        parts.append(f"classes={sd['label_emb.weight'].shape[0]}" if "label_emb.weight" in sd else "unconditional")
    else:
        parts.insert(0, "not an ADM/IDDPM state dict")
    n_in = len({k.split(".")[1] for k in sd if k.startswith("input_blocks.")})
    if n_in:
        parts.append(f"{n_in} input blocks")
    return ", ".join(parts)


def _short(keys: list[str], limit: int = 6) -> str:
    return ", ".join(keys[:limit]) + (f", … (+{len(keys) - limit} more)" if len(keys) > limit else "") if keys else "none"


def load_state_dict_checked(net: nn.Module, sd: dict[str, torch.Tensor], what: str) -> None:
    """Strictly load sd into net, or raise a GenevalError naming missing/unexpected/mis-shaped keys."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)}≠{tuple(v.shape)}" for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise GenevalError(
            f"checkpoint does not match {what}: missing keys [{_short(missing)}]; unexpected keys [{_short(unexpected)}]; "
            f"shape mismatches [{_short(shapes, 3)}]. The file looks like: {describe_state_dict(sd)}"
        )
    net.load_state_dict(sd, strict=True, assign=any(p.is_meta for p in net.parameters()))


def build_from_state_dict(cls: type[nn.Module], config: Any, sd: dict[str, torch.Tensor], what: str) -> nn.Module:
    """Build cls(config) on the meta device, check sd against it, then adopt sd's tensors.

    Building on meta first means a wrong preset fails in milliseconds without allocating the net.
    """
    with torch.device("meta"):
        net = cls(config)
    load_state_dict_checked(net, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, what)
    return net


def _apply_flags(cfg, flags: dict[str, Any], cls_name: str):
    known = {f.name for f in dataclasses.fields(cfg)}
    bad = set(flags) - known
    if bad:
        raise GenevalError(f"unknown {cls_name} flags {sorted(bad)}; known: {', '.join(sorted(known))}")
    return dataclasses.replace(cfg, **flags) if flags else cfg


def _finish(net: nn.Module, device: torch.device | str | None) -> nn.Module:
    net.eval().requires_grad_(False)
    return net.to(device) if device is not None else net


# ---------------------------------------------------------------- native format


def native_config(
    config: UNetConfig | ClassifierConfig,
    diffusion: DiffusionConfig | None = None,
    *,
    null_class: int | None = None,
    class_names: list[str] | None = None,
    training: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON document stored with native weights."""
    kind = "classifier" if isinstance(config, ClassifierConfig) else "unet"
    n_cls = config.out_channels if kind == "classifier" else config.num_classes
    real = None if n_cls is None else n_cls - (1 if null_class is not None else 0)
    if null_class is not None and (n_cls is None or not 0 <= null_class < n_cls):
        raise GenevalError(f"null_class {null_class} outside the model's {n_cls} label embeddings")
    if class_names is not None and real is not None and len(class_names) != real:
        raise GenevalError(f"{len(class_names)} class names for {real} classes")
    return {
        "format": NATIVE_FORMAT,
        "version": NATIVE_VERSION,
        "kind": kind,
        "architecture": config.to_dict(),
        "diffusion": diffusion.to_dict() if diffusion else None,
        "image_size": config.image_size,
        "num_classes": real,
        "null_class": null_class,
        "class_names": class_names,
        "training": training or {},
    }


def save_native(
    net: nn.Module, config: UNetConfig | ClassifierConfig, path: str | os.PathLike, diffusion: DiffusionConfig | None = None, **meta: Any
) -> Path:
    """Save weights + config in geneval's native format; returns the weights file path.

    Args:
        net: the module whose state dict is saved (moved to CPU, contiguous, fp32 kept as is).
        config: its architecture.
        path: a `.safetensors` file, or a directory (gets model.safetensors + config.json).
        diffusion: the training DiffusionConfig (required for UNets).
        **meta: null_class, class_names, training (see native_config).
    """
    from safetensors.torch import save_file

    if isinstance(config, UNetConfig) and diffusion is None:
        raise GenevalError("save_native: a UNet needs its DiffusionConfig")
    doc = native_config(config, diffusion, **meta)
    path = Path(path)
    is_dir = path.suffix != ".safetensors"
    weights = path / "model.safetensors" if is_dir else path
    weights.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=weights.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file(sd, tmp, metadata={_META_KEY: json.dumps(doc)})
        os.replace(tmp, weights)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if is_dir:
        from geneval.results import atomic_write_text

        atomic_write_text(path / "config.json", json.dumps(doc, indent=2) + "\n")
    return weights


def _read_native_doc(weights: Path) -> dict[str, Any] | None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta[_META_KEY]) if _META_KEY in meta else None


def _load_native(weights: Path, doc: dict[str, Any], device, flags: dict[str, Any]) -> LoadedModel:
    from safetensors.torch import load_file

    if doc.get("format") != NATIVE_FORMAT or doc.get("version") != NATIVE_VERSION:
        raise GenevalError(f"{weights}: unsupported native format/version {doc.get('format')}/{doc.get('version')}")
    sd = load_file(str(weights))
    if doc["kind"] == "classifier":
        cfg = _apply_flags(ClassifierConfig.from_dict(doc["architecture"]), flags, "classifier")
        cls, diffusion = EncoderUNet, None
    else:
        cfg = UNetConfig.from_dict(doc["architecture"])
        diffusion = DiffusionConfig.from_dict(doc["diffusion"])
        diff_flags = {k: v for k, v in flags.items() if k in {f.name for f in dataclasses.fields(DiffusionConfig)}}
        diffusion = _apply_flags(diffusion, diff_flags, "diffusion")
        cfg = _apply_flags(cfg, {k: v for k, v in flags.items() if k not in diff_flags}, "UNet")
        cls = UNetModel
    net = build_from_state_dict(cls, cfg, sd, f"the architecture in {weights.name}")
    return LoadedModel(
        _finish(net, device),
        cfg,
        diffusion,
        doc["kind"],
        "native",
        doc.get("num_classes"),
        doc.get("null_class"),
        doc.get("class_names"),
        str(weights),
        file_sha256(weights),
        None,
        doc.get("training") or {},
    )


# ---------------------------------------------------------------- guided-diffusion / improved-diffusion


def _load_openai(path: Path, preset: str | None, device, flags: dict[str, Any], model_flags: Any = None) -> LoadedModel:
    """A bare guided-/improved-diffusion state dict; the architecture from a preset, the release it is, or flags.

    A file whose name (or pinned sha256) is a published release selects that release's preset.
    Head counts and attention order are not in the state dict, so for a known release every
    flag or override that contradicts the preset is an error (it would load and sample wrongly).
    `model_flags` (the authors' flag names) alone describe any other checkpoint; given together
    with a preset they must agree with it.
    """
    from geneval.models.model_flags import flag_conflicts, parse_model_flags
    from geneval.models.presets import match_release
    from geneval.models.safe_load import load_checkpoint

    sd = load_checkpoint(path)  # weights only; a refusal names the file and the offending global
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise GenevalError(f"{path}: expected a plain state dict of tensors (guided-diffusion .pt)")
    kind = "unet" if any(k.startswith("output_blocks.") for k in sd) else "classifier"
    parsed = parse_model_flags(model_flags, kind=kind) if model_flags is not None else None
    sha = file_sha256(path)
    release = match_release(path.name, sha)
    if preset is not None:
        p = get_preset(preset)
        if release is not None and release.preset.name != p.name:
            raise GenevalError(
                f"{path.name} is the published {release.preset.name} checkpoint (matched by {release.matched_by}), "
                f"not {preset}; drop --preset (or rename the file if it is not that release)"
            )
    elif release is not None:
        p = release.preset
    elif parsed is None:
        raise GenevalError(
            f"{path}: a guided-diffusion/improved-diffusion .pt has no config; pass a preset (e.g. --preset adm-256) "
            f'or the authors\' flags (--model-flags "--image_size 256 ..."). The file looks like: {describe_state_dict(sd)}'
        )
    else:
        p = None
    if p is not None and p.kind != kind:
        raise GenevalError(f"{path.name} is a {kind} state dict but preset {p.name} is a {p.kind}")
    if p is not None:
        cfg, diffusion, what = p.config, p.diffusion, f"preset {p.name}"
        bad = flag_conflicts(parsed, p.config, p.diffusion) if parsed is not None else []
        if bad:
            whose = f"the published {p.name} checkpoint {path.name}" if release is not None else f"preset {p.name}"
            raise GenevalError(
                f"--model-flags contradict {whose}: {'; '.join(bad)} (heads and attention order are not stored in "
                f"the file, so a mismatch would load silently and sample wrongly); drop the flags or the preset"
            )
    else:
        cfg, diffusion, what = parsed.config, parsed.diffusion, "the architecture given by --model-flags"
    diff_names = {f.name for f in dataclasses.fields(DiffusionConfig)}
    diff_flags = {k: v for k, v in flags.items() if k in diff_names}
    new_cfg = _apply_flags(cfg, {k: v for k, v in flags.items() if k not in diff_names}, kind)
    if kind == "classifier":
        if diff_flags:
            raise GenevalError(f"diffusion flags {sorted(diff_flags)} make no sense for a classifier ({what})")
        cls, new_diffusion, n_cls = EncoderUNet, None, new_cfg.out_channels
    else:
        new_diffusion = _apply_flags(diffusion, diff_flags, "diffusion")
        if new_cfg.learn_sigma and new_diffusion.variance_type != "learned_range" and "variance_type" not in diff_flags:
            new_diffusion = dataclasses.replace(new_diffusion, variance_type="learned_range")
        cls, n_cls = UNetModel, new_cfg.num_classes
    if release is not None and (new_cfg != cfg or new_diffusion != diffusion):
        raise GenevalError(
            f"overrides {sorted(flags)} contradict the published {p.name} checkpoint {path.name} "
            f"(matched by {release.matched_by}); rename the file if it is not that release"
        )
    first = sd.get("input_blocks.0.0.weight")
    if kind == "unet" and first is not None and first.ndim == 4 and first.shape[1] == 2 * new_cfg.in_channels and not new_cfg.super_res:
        raise GenevalError(
            f"{path.name} looks like a super-resolution model ({first.shape[1]} input channels: x_t and the low-res image) "
            f"but {what} is not one; use an upsampler preset or --model-flags with --large_size/--small_size"
        )
    net = build_from_state_dict(cls, new_cfg, sd, what)
    info: dict[str, Any] = {
        "summary": p.summary if p else "architecture from --model-flags",
        "preset": p.describe() if p else None,
        "release": release.to_dict() if release else None,
        "model_flags": parsed.to_dict() if parsed else None,
    }
    return LoadedModel(
        _finish(net, device), new_cfg, new_diffusion, kind, "guided-diffusion", n_cls, None, None, str(path), sha, p.name if p else None, info
    )


# ---------------------------------------------------------------- diffusers


class DiffusersUNet(nn.Module):
    """Adapts a diffusers UNet2DModel to the forward(x, t, y=None) convention."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.unet(x, timesteps, class_labels=y).sample


_DIFFUSERS_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine"}
_DIFFUSERS_PRED = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
_DIFFUSERS_VAR = {
    "fixed_small": "fixed_small",
    "fixed_small_log": "fixed_small",
    "fixed_large": "fixed_large",
    "fixed_large_log": "fixed_large",
    "learned_range": "learned_range",
}


def diffusion_from_scheduler_config(sc: dict[str, Any], convention_source: str = "model") -> DiffusionConfig:
    """Translate a diffusers scheduler_config.json into a DiffusionConfig.

    Args:
        sc: the scheduler config dict.
        convention_source: "model" also takes the scheduler's rescale_betas_zero_snr (its β are
            part of its semantics); "adm" reads only β schedule, prediction and variance type. The
            sampling-time fields (spacing, clipping, final ᾱ...) are applied by
            geneval.sampling.conventions.SchedulerConvention.
    """
    if convention_source not in ("model", "adm"):
        raise GenevalError(f"unknown convention source {convention_source!r}; known: model, adm")
    if sc.get("trained_betas") is not None:
        raise GenevalError("diffusers scheduler with trained_betas is not supported")
    sched = sc.get("beta_schedule", "linear")
    if sched not in _DIFFUSERS_SCHEDULES:
        raise GenevalError(f"diffusers beta_schedule {sched!r} not supported; known: {', '.join(_DIFFUSERS_SCHEDULES)}")
    pred = sc.get("prediction_type", "epsilon")
    if pred not in _DIFFUSERS_PRED:
        raise GenevalError(f"diffusers prediction_type {pred!r} not supported; known: {', '.join(_DIFFUSERS_PRED)}")
    name = _DIFFUSERS_SCHEDULES[sched]
    explicit = name != "cosine"  # diffusers' linear is NOT rescaled by 1000/T, so pass its endpoints
    return DiffusionConfig(
        num_timesteps=int(sc.get("num_train_timesteps", 1000)),
        beta_schedule=name,
        beta_start=float(sc.get("beta_start", 1e-4)) if explicit else None,
        beta_end=float(sc.get("beta_end", 2e-2)) if explicit else None,
        prediction_type=_DIFFUSERS_PRED[pred],
        variance_type=_DIFFUSERS_VAR.get(sc.get("variance_type") or "fixed_small", "fixed_small"),
        rescale_betas_zero_snr=bool(sc.get("rescale_betas_zero_snr", False)) and convention_source == "model",
    )


def _load_diffusers(path: Path, device, flags: dict[str, Any]) -> LoadedModel:
    try:
        from diffusers import UNet2DModel
    except ImportError:
        raise GenevalError("loading a diffusers folder needs the optional extra: pip install 'geneval[diffusers]'") from None
    unet_dir = path / "unet" if (path / "unet" / "config.json").exists() else path
    sched_file = next((p for p in (path / "scheduler" / "scheduler_config.json", path / "scheduler_config.json") if p.exists()), None)
    if sched_file is None:
        raise GenevalError(f"{path}: diffusers folder without scheduler/scheduler_config.json")
    ucfg = json.loads((unet_dir / "config.json").read_text())
    if ucfg.get("_class_name") != "UNet2DModel":
        raise GenevalError(f"{unet_dir}: only UNet2DModel is supported, found {ucfg.get('_class_name')}")
    flags = dict(flags)
    source = flags.pop("convention_source", None) or "model"
    sc = json.loads(sched_file.read_text())
    diffusion = _apply_flags(diffusion_from_scheduler_config(sc, source), flags, "diffusion")
    unet = UNet2DModel.from_pretrained(str(unet_dir))
    if unet.config.out_channels == 2 * unet.config.in_channels and diffusion.variance_type != "learned_range":
        diffusion = dataclasses.replace(diffusion, variance_type="learned_range")
    wfile = next(iter(sorted(unet_dir.glob("diffusion_pytorch_model*.safetensors")) or sorted(unet_dir.glob("*.bin"))), None)
    n_cls = unet.config.num_class_embeds
    # The scheduler config travels with the model: geneval.sampling.conventions.convention_for reads
    # it, so the folder is sampled with its own scheduler's semantics unless the source is "adm".
    info = {"scheduler_config": sc, "convention_source": source}
    return LoadedModel(
        _finish(DiffusersUNet(unet), device),
        dict(unet.config),
        diffusion,
        "unet",
        "diffusers",
        n_cls,
        None,
        None,
        str(path),
        file_sha256(wfile) if wfile else "",
        None,
        info,
    )


# ---------------------------------------------------------------- entry point


def load_model(
    path: str | os.PathLike,
    preset: str | None = None,
    device: torch.device | str | None = "cpu",
    *,
    model_flags: str | dict[str, Any] | None = None,
    **flags: Any,
) -> LoadedModel:
    """Load a UNet, super-resolution UNet or classifier from any supported format.

    Args:
        path: native `.safetensors` / directory, guided-diffusion `.pt`, or diffusers folder.
        preset: architecture preset for `.pt` files (see geneval.models.presets.PRESETS); a `.pt`
            named like a published release (e.g. 64_256_upsampler.pt) selects its preset itself.
        device: where to put the network (None leaves it on CPU).
        model_flags: guided-diffusion flags for `.pt` files ("--image_size 64 --num_channels 192 ..."
            or a dict / TOML table of the same names); see geneval.models.model_flags.
        **flags: overrides of UNetConfig/ClassifierConfig/DiffusionConfig fields.
    """
    p = Path(path)
    if not p.exists():
        raise GenevalError(f"model not found: {p}")
    if model_flags is not None and (p.is_dir() or p.suffix == ".safetensors"):
        raise GenevalError(f"{p} carries its own config; --model-flags only apply to guided-diffusion .pt files")
    if p.is_dir():
        if (p / "model.safetensors").exists():
            doc = _read_native_doc(p / "model.safetensors")
            if doc is None:
                raise GenevalError(f"{p}/model.safetensors has no geneval config metadata")
            _reject_preset(preset, p)
            return _load_native(p / "model.safetensors", doc, device, flags)
        if (p / "model_index.json").exists() or (p / "unet").is_dir() or (p / "config.json").exists():
            _reject_preset(preset, p)
            return _load_diffusers(p, device, flags)
        raise GenevalError(f"{p}: directory is neither a geneval native model nor a diffusers folder")
    if p.suffix == ".safetensors":
        doc = _read_native_doc(p)
        if doc is not None:
            _reject_preset(preset, p)
            return _load_native(p, doc, device, flags)
        raise GenevalError(f"{p}: safetensors file without geneval config metadata (save it with geneval.models.save_native)")
    return _load_openai(p, preset, device, flags, model_flags)


def _reject_preset(preset: str | None, p: Path) -> None:
    if preset is not None:
        raise GenevalError(f"{p} carries its own config; a preset ({preset}) only applies to guided-diffusion .pt files")

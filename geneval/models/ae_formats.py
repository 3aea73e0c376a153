"""Autoencoder checkpoint formats: native safetensors+JSON, LDM / Stable Diffusion, diffusers.

`load_autoencoder(spec, config=None)` accepts:
  - ``demo`` / ``demo-kl`` / ``demo-vq``: the small autoencoders shipped in geneval/zoo/checkpoints;
  - a native folder (``config.json`` with ``"format": "geneval-autoencoder"`` + ``model.safetensors``)
    or a ``X.safetensors`` file with a ``X.json`` beside it;
  - an LDM checkpoint (``.ckpt``/``.pt``/``.pth``/``.bin``; ``state_dict`` → ``first_stage_model.*``)
    or a standalone LDM / Stable Diffusion autoencoder (``encoder.*``, ``decoder.*``,
    ``quant_conv``, ``post_quant_conv`` [, ``quantize.embedding.weight``]), also as ``.safetensors``;
  - a diffusers ``AutoencoderKL`` folder (or a pipeline folder holding ``vae/``), loaded with the
    optional ``diffusers`` extra.
The shape comes from `config`: a preset name (see `AE_PRESETS`), an LDM YAML (full LDM or
autoencoder config) or a native JSON; without one it is read off the tensor shapes. Loading
is strict: any missing or unexpected tensor is an error that lists them. Files are read with
``torch.load(weights_only=True)`` (no pickled code runs).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geneval.errors import GenevalError
from geneval.models.autoencoder import AEConfig, build_autoencoder
from geneval.models.native import mismatch_parts, read_json_object, write_config, write_weights

FORMAT = "geneval-autoencoder"
FORMAT_VERSION = 1
ZOO = Path(__file__).resolve().parent.parent / "zoo" / "checkpoints"
DEMOS = {"demo": "ae-kl-fmnist", "demo-kl": "ae-kl-fmnist", "demo-vq": "ae-vq-fmnist"}
LDM_PREFIX = "first_stage_model."
# Training-only tensors found in LDM checkpoints (discriminator/LPIPS of the loss, EMA copies).
IGNORED_PREFIXES = ("loss.", "model_ema.")

_SD = dict(ch=128, ch_mult=(1, 2, 4, 4), num_res_blocks=2, attn_resolutions=(), resolution=256, z_channels=4, embed_dim=4)
# LDM's first-stage model zoo (models/first_stage_models/*/config.yaml) and the SD VAE.
AE_PRESETS: dict[str, AEConfig] = {
    "sd-vae": AEConfig(kind="kl", scale_factor=0.18215, **_SD),
    "kl-f8": AEConfig(kind="kl", **_SD),
    "kl-f4": AEConfig(kind="kl", ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3, embed_dim=3),
    "kl-f16": AEConfig(kind="kl", ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=16, embed_dim=16),
    "kl-f32": AEConfig(kind="kl", ch=128, ch_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2, attn_resolutions=(16, 8), z_channels=64, embed_dim=64),
    "vq-f4": AEConfig(kind="vq", ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3, embed_dim=3, n_embed=8192),
    "vq-f4-noattn": AEConfig(kind="vq", ch=128, ch_mult=(1, 2, 4), num_res_blocks=2, z_channels=3, embed_dim=3, n_embed=8192, attn_type="none"),
    "vq-f8": AEConfig(kind="vq", ch=128, ch_mult=(1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(32,), z_channels=4, embed_dim=4, n_embed=16384),
    "vq-f16": AEConfig(
        kind="vq", ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, attn_resolutions=(16,), z_channels=8, embed_dim=8, n_embed=16384
    ),
}


@dataclass
class LoadedAE:
    """An autoencoder ready for inference plus where it came from.

    Args:
        model: eval-mode module with `reconstruct(x, generator)` (x in [-1, 1], NCHW).
        config: its shape (for diffusers: a best-effort translation).
        format: native | ldm | ldm-standalone | diffusers.
        path: the file or folder read.
        sha256: hash of the weight file (None for diffusers folders with several files).
        info: extra provenance (ignored tensors, scale_factor source, training record, ...).
    """

    model: nn.Module
    config: AEConfig
    format: str
    path: str
    sha256: str | None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.get("name") or Path(self.path).name


# ---------------------------------------------------------------- native format


def save_native_autoencoder(model: nn.Module, out: str | os.PathLike, training: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write `model` as a native folder: config.json (shape + training record) and model.safetensors.

    Args:
        model: an AutoencoderKL or VQAutoencoder.
        out: the folder to create (files are replaced atomically).
        training: how it was trained (command, steps, time, final loss), stored verbatim.
        name: a display name (default: the folder name).
    """
    import hashlib

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    data = write_weights(out, state, metadata={"format": FORMAT})

    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name or out.name,
        "config": model.config.to_dict(),
        "weights_sha256": hashlib.sha256(data).hexdigest(),
        "training": training or {},
    }
    write_config(out, doc)
    return out


# ---------------------------------------------------------------- shape (config) sources


def resolve_ae_config(config: str | os.PathLike | AEConfig | None) -> tuple[AEConfig | None, str]:
    """An AEConfig from a preset name, an LDM YAML, a JSON file, or None (infer from the weights).

    Args:
        config: ``sd-vae``/``kl-f8``/… (see `AE_PRESETS`), a ``.yaml`` (LDM: the full model's
            ``model.params.first_stage_config`` or an autoencoder's ``model.params.ddconfig``), a
            ``.json`` (geneval's native config.json or a bare AEConfig mapping), or an AEConfig.
    Returns:
        (config or None, a description of where it came from).
    """
    if config is None:
        return None, "inferred from tensor shapes (tanh_out cannot be seen in tensors: assumed false)"
    if isinstance(config, AEConfig):
        return config, "given"
    text = os.fspath(config)
    if text in AE_PRESETS:
        return AE_PRESETS[text], f"preset {text}"
    path = Path(text).expanduser()
    if not path.is_file():
        raise GenevalError(f"autoencoder config {text!r} is neither a preset ({', '.join(AE_PRESETS)}) nor a file")
    if path.suffix.lower() in (".yaml", ".yml"):
        return config_from_ldm_yaml(path), f"LDM YAML {path}"
    if path.suffix.lower() == ".json":
        doc = read_json_object(path)
        return AEConfig.from_dict(_list_to_tuple(doc.get("config", doc))), f"JSON {path}"
    raise GenevalError(f"autoencoder config {path}: use a preset name, .yaml (LDM) or .json")


def _list_to_tuple(d: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise GenevalError(f"autoencoder config must be a mapping, got {type(d).__name__}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def config_from_ldm_yaml(path: str | os.PathLike) -> AEConfig:
    """Read the first-stage shape from an LDM YAML (full latent-diffusion or autoencoder config).

    Args:
        path: the YAML file; read with yaml.safe_load.
    """
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise GenevalError(f"cannot read LDM YAML {path}: {' '.join(str(e).split())}") from None
    model = doc.get("model") if isinstance(doc, dict) else None
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise GenevalError(f"{path}: no model.params section (not an LDM config)")
    scale = params.get("scale_factor")
    if isinstance(params.get("first_stage_config"), dict):
        target = str(params["first_stage_config"].get("target", ""))
        ae_params = params["first_stage_config"].get("params") or {}
    elif isinstance(params.get("ddconfig"), dict):
        target, ae_params = str(model.get("target", "")), params
    else:
        raise GenevalError(f"{path}: neither model.params.first_stage_config nor model.params.ddconfig found")
    return first_stage_config(target, ae_params, scale, str(path))


# First-stage (VQModel / VQModelInterface / AutoencoderKL) params that do not change inference.
_FIRST_STAGE_INERT = (
    "monitor",
    "ckpt_path",
    "ignore_keys",
    "image_key",
    "lossconfig",
    "scheduler_config",
    "lr_g_factor",
    "batch_resize_range",
    "sane_index_shape",
    "base_learning_rate",
)
# Params accepted only at the value that leaves inference unchanged.
_FIRST_STAGE_DEFAULTS = {"colorize_nlabels": None, "remap": None, "use_ema": False}


def first_stage_config(target: str, params: dict[str, Any], scale: Any = None, where: str = "config") -> AEConfig:
    """AEConfig from an LDM first-stage `target` and its `params` (ddconfig, embed_dim, n_embed, ...).

    Args:
        target: the class path (``ldm.models.autoencoder.VQModelInterface``, ``...AutoencoderKL``).
        params: its params; a key geneval does not understand is an error.
        scale: the LDM's scale_factor, when known.
        where: the file, for messages.
    """
    if not isinstance(params, dict):
        raise GenevalError(f"{where}: first-stage params must be a mapping")
    if target.rsplit(".", 1)[-1] not in ("VQModel", "VQModelInterface", "AutoencoderKL"):
        raise GenevalError(f"{where}: unsupported first-stage target {target!r}; use an LDM VQModel(Interface) or AutoencoderKL")
    kind = "vq" if "VQ" in target else "kl"
    known = set(_FIRST_STAGE_INERT) | set(_FIRST_STAGE_DEFAULTS) | {"ddconfig", "embed_dim"} | ({"n_embed"} if kind == "vq" else set())
    unknown = sorted(str(k) for k in params if k not in known)
    if unknown:
        raise GenevalError(f"{where}: unknown first-stage param(s) {unknown} for {target}")
    for k, ok in _FIRST_STAGE_DEFAULTS.items():
        if params.get(k, ok) != ok:
            raise GenevalError(f"{where}: first-stage {k}: {params[k]!r} is not supported (only {ok!r})")
    dd = params.get("ddconfig")
    if not isinstance(dd, dict) or "embed_dim" not in params:
        raise GenevalError(f"{where}: first-stage params lack ddconfig or embed_dim")
    try:
        return AEConfig.from_ddconfig(
            dd, params["embed_dim"], kind=kind, n_embed=params.get("n_embed"), scale_factor=None if scale is None else float(scale)
        )
    except GenevalError as e:
        raise GenevalError(f"{where}: {e}") from None


def infer_config(sd: dict[str, torch.Tensor], resolution: int = 256) -> AEConfig:
    """Read an LDM-layout autoencoder's shape off its tensors (GroupNorm groups assumed 32, as LDM).

    Args:
        sd: state dict with encoder.*, decoder.*, quant_conv, post_quant_conv [, quantize.*].
        resolution: nominal size used to express attention levels as LDM's attn_resolutions.
    """
    try:
        ch, in_channels = sd["encoder.conv_in.weight"].shape[:2]
        levels = sorted({int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k))})
        blocks = {int(m.group(1)) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))}
        ch_mult = tuple(int(sd[f"encoder.down.{i}.block.0.conv1.weight"].shape[0]) // int(ch) for i in levels)
        attn = tuple(resolution // 2**i for i in levels if any(k.startswith(f"encoder.down.{i}.attn.") for k in sd))
        kind = "vq" if "quantize.embedding.weight" in sd else "kl"
        # attn_type none leaves no tensors at all (attn_resolutions cannot be recovered then, nor is it needed).
        attn_type = "linear" if "encoder.mid.attn_1.to_qkv.weight" in sd else "vanilla" if "encoder.mid.attn_1.q.weight" in sd else "none"
        resamp = len(levels) < 2 or "encoder.down.0.downsample.conv.weight" in sd
        return AEConfig(
            kind=kind,
            ch=int(ch),
            ch_mult=ch_mult,
            num_res_blocks=len(blocks),
            attn_resolutions=attn,
            in_channels=int(in_channels),
            out_ch=int(sd["decoder.conv_out.weight"].shape[0]),
            resolution=resolution,
            z_channels=int(sd["decoder.conv_in.weight"].shape[1]),
            embed_dim=int(sd["post_quant_conv.weight"].shape[1]),
            n_embed=int(sd["quantize.embedding.weight"].shape[0]) if kind == "vq" else None,
            attn_type=attn_type,
            resamp_with_conv=resamp,
        )
    except KeyError as e:
        raise GenevalError(
            f"cannot infer the autoencoder shape: tensor {e} is missing; pass a config (--ae-config preset, LDM YAML or JSON)"
        ) from None


# ---------------------------------------------------------------- state dicts


def describe_tensors(sd: dict[str, Any]) -> str:
    """One line on what a state dict holds: tensor count, top-level prefixes, a guess at its kind."""
    counts: dict[str, int] = {}
    for k in sd:
        parts = k.split(".")
        head = ".".join(parts[:2]) if parts[0] in ("model", "first_stage_model", "cond_stage_model") else parts[0]
        counts[head] = counts.get(head, 0) + 1
    top = ", ".join(f"{p} ({n})" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])[:6])
    guess = ""
    if any(k.startswith(("input_blocks.", "model.diffusion_model.")) for k in sd):
        guess = "; looks like a diffusion UNet, not an autoencoder"
    elif any(k.startswith(("encoder.down_blocks.", "down_blocks.")) for k in sd):
        guess = "; looks like diffusers naming: pass the diffusers folder instead"
    return f"{len(sd)} tensors, prefixes: {top or '(none)'}{guess}"


def extract_first_stage(raw: dict[str, Any], where: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The autoencoder's tensors from an LDM checkpoint (first_stage_model.*) or a standalone one.

    Args:
        raw: what torch.load / safetensors returned (a `state_dict` wrapper is unwrapped).
        where: the file, for messages.
    Returns:
        (state dict with LDM autoencoder names, info: format, ignored tensor counts, scale_factor).
    """
    sd = raw.get("state_dict", raw) if isinstance(raw, dict) else raw
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        raise GenevalError(f"{where} does not hold a state dict")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    info: dict[str, Any] = {}
    if any(k.startswith(LDM_PREFIX) for k in tensors):
        info["format"] = "ldm"
        ae = {k[len(LDM_PREFIX) :]: v for k, v in tensors.items() if k.startswith(LDM_PREFIX)}
        info["ignored_other_tensors"] = len(tensors) - len(ae)  # UNet, conditioner, EMA: not ours
        if "scale_factor" in tensors and tensors["scale_factor"].numel() == 1:
            info["scale_factor"] = float(tensors["scale_factor"])
    else:
        info["format"] = "ldm-standalone"
        ae = dict(tensors)
    dropped = [k for k in ae if k.startswith(IGNORED_PREFIXES)]
    for k in dropped:
        del ae[k]
    info["ignored_training_tensors"] = len(dropped)
    if not any(k.startswith("encoder.") for k in ae) or not any(k.startswith("decoder.") for k in ae):
        raise GenevalError(
            f"{where} is not an autoencoder checkpoint: no encoder.*/decoder.* or first_stage_model.* tensors; it holds {describe_tensors(tensors)}"
        )
    return ae, info


def load_checked(model: nn.Module, sd: dict[str, torch.Tensor], where: str, cfg_source: str) -> None:
    """Strict load; on any mismatch raise one GenevalError listing missing, unexpected and reshaped tensors."""
    parts = mismatch_parts(model.state_dict(), sd)
    if parts:
        raise GenevalError(
            f"{where} does not fit the {model.config.kind} autoencoder ({cfg_source}): "
            + "; ".join(parts)
            + f"; the file holds {describe_tensors(sd)}"
        )
    model.load_state_dict(sd, strict=True)


def _read_weights(path: Path) -> dict[str, Any]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for foreign bytes
            raise GenevalError(f"cannot read {path} as safetensors: {' '.join(str(e).split())}") from None
    from geneval.models.safe_load import load_checkpoint

    obj = load_checkpoint(path)  # weights only; Lightning callback objects load as plain data
    if not isinstance(obj, dict):
        raise GenevalError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _finish(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    model.eval().requires_grad_(False)
    return model.to(device or "cpu")


def _sha(path: Path) -> str:
    from geneval.weights import sha256_file

    return sha256_file(path)


def _load_native(folder: Path, weights: Path, doc: dict[str, Any], device) -> LoadedAE:
    if doc.get("format_version", 0) > FORMAT_VERSION:
        raise GenevalError(f"{folder}: native format version {doc.get('format_version')} is newer than this geneval reads")
    cfg = AEConfig.from_dict(_list_to_tuple(doc.get("config") or {}))
    model = build_autoencoder(cfg)
    load_checked(model, _read_weights(weights), str(weights), "its config.json")
    info = {"name": doc.get("name"), "training": doc.get("training") or {}}
    return LoadedAE(_finish(model, device), cfg, "native", str(folder), _sha(weights), info)


def load_autoencoder(
    spec: str | os.PathLike | None = None, config: str | os.PathLike | AEConfig | None = None, device: torch.device | str | None = "cpu"
) -> LoadedAE:
    """Load an autoencoder from any supported format (see module docstring).

    Args:
        spec: ``demo``/``demo-kl``/``demo-vq``, a file or a folder; None means ``demo``.
        config: shape for LDM files: preset name, LDM YAML or JSON (an error with native and
            diffusers inputs, which carry their own).
        device: where to put the model.
    Raises:
        GenevalError: not found, not an autoencoder, or tensors that do not fit the shape.
    """
    text = "demo" if spec is None else os.fspath(spec)
    if config is not None and (text in DEMOS or Path(text).is_dir()):
        raise GenevalError(f"an autoencoder config applies to LDM checkpoint files only; {text} carries its own")
    if text in DEMOS:
        folder = ZOO / DEMOS[text]
        if not (folder / "config.json").is_file():
            raise GenevalError(f"the demo autoencoder {text} is not installed (expected {folder})")
        loaded = load_autoencoder(folder, device=device)
        loaded.info["name"] = DEMOS[text]
        return loaded
    path = Path(text).expanduser()
    if not path.exists():
        raise GenevalError(f"autoencoder not found: {text} (not a file, folder, or one of {', '.join(DEMOS)})")
    if path.is_dir():
        return _load_folder(path, config, device)
    sidecar = path.with_suffix(".json")
    if path.suffix.lower() == ".safetensors" and sidecar.is_file():
        doc = read_json_object(sidecar)
        if doc.get("format") == FORMAT:
            if config is not None:
                raise GenevalError(f"an autoencoder config applies to LDM checkpoint files only; {path} carries its own")
            return _load_native(path, path, doc, device)
    raw = _read_weights(path)
    sd, info = extract_first_stage(raw, str(path))
    cfg, cfg_source = resolve_ae_config(config)
    if cfg is None:
        cfg = infer_config(sd)
    scale = info.get("scale_factor", cfg.scale_factor)
    if scale is not None and scale != cfg.scale_factor:
        cfg = AEConfig.from_dict({**cfg.to_dict(), "scale_factor": scale, "ch_mult": cfg.ch_mult, "attn_resolutions": cfg.attn_resolutions})
    model = build_autoencoder(cfg)
    load_checked(model, sd, str(path), cfg_source)
    info["config_source"] = cfg_source
    return LoadedAE(_finish(model, device), cfg, info.pop("format"), str(path), _sha(path), info)


def _load_folder(path: Path, config, device) -> LoadedAE:
    cfg_file = path / "config.json"
    if cfg_file.is_file():
        doc = read_json_object(cfg_file)
        if doc.get("format") == FORMAT:
            weights = path / "model.safetensors"
            if not weights.is_file():
                raise GenevalError(f"{path}: native autoencoder folder lacks model.safetensors")
            return _load_native(path, weights, doc, device)
        if doc.get("_class_name") == "AutoencoderKL":
            return load_diffusers_vae(path, device)
        raise GenevalError(
            f"{cfg_file}: neither a geneval autoencoder (format {FORMAT!r}) nor a diffusers AutoencoderKL (_class_name {doc.get('_class_name')!r})"
        )
    if (path / "model_index.json").is_file() and (path / "vae" / "config.json").is_file():
        return load_diffusers_vae(path / "vae", device)
    raise GenevalError(f"{path}: a folder, but no config.json (native or diffusers) nor model_index.json + vae/")


# ---------------------------------------------------------------- diffusers (optional extra)


class DiffusersVAE(nn.Module):
    """A diffusers AutoencoderKL behind geneval's `reconstruct` interface (mode → decode; sample → latents)."""

    def __init__(self, vae: nn.Module, cfg: AEConfig):
        super().__init__()
        self.vae = vae
        self.config = cfg

    def reconstruct(self, x: torch.Tensor, generator: torch.Generator | None = None):
        from geneval.models.autoencoder_kl import AEOutput

        post = self.vae.encode(x).latent_dist
        latents = post.sample(generator=generator)
        return AEOutput(self.vae.decode(post.mode()).sample, latents, None, "KL posterior sample")


def load_diffusers_vae(folder: Path, device) -> LoadedAE:
    """Load a diffusers AutoencoderKL folder (needs `pip install geneval[diffusers]`)."""
    try:
        from diffusers import AutoencoderKL as DAutoencoderKL
    except ImportError:
        raise GenevalError(f"{folder} is a diffusers AutoencoderKL: install the extra (pip install 'geneval[diffusers]')") from None
    try:
        vae = DAutoencoderKL.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # diffusers raises OSError/ValueError/EnvironmentError variants
        raise GenevalError(f"cannot load diffusers AutoencoderKL from {folder}: {' '.join(str(e).split())[:200]}") from None
    c = vae.config
    widths = list(c.block_out_channels)
    cfg = AEConfig(
        kind="kl",
        ch=widths[0],
        ch_mult=tuple(w // widths[0] for w in widths),
        num_res_blocks=int(c.layers_per_block),
        in_channels=int(c.in_channels),
        out_ch=int(c.out_channels),
        resolution=int(c.sample_size),
        z_channels=int(c.latent_channels),
        embed_dim=int(c.latent_channels),
        num_groups=int(c.norm_num_groups),
        scale_factor=float(c.scaling_factor),
    )
    weights = next((folder / n for n in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin") if (folder / n).is_file()), None)
    return LoadedAE(
        _finish(DiffusersVAE(vae, cfg), device),
        cfg,
        "diffusers",
        str(folder),
        _sha(weights) if weights else None,
        {"diffusers_class": "AutoencoderKL"},
    )

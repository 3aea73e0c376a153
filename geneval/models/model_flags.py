"""guided-diffusion / improved-diffusion command-line flags → geneval configs (`--model-flags`).

Takes the flag names of guided-diffusion's `script_util` (and improved-diffusion's, a subset plus
`sigma_small`), either as the string those READMEs print
("--image_size 64 --num_channels 192 --learn_sigma True ...") or as a mapping (a TOML table),
and builds the UNetConfig / ClassifierConfig and DiffusionConfig that the authors' scripts
would build. Unset flags take the authors' defaults. Unknown names are an error; flags that only
shape training or speed (use_fp16, use_checkpoint, use_kl, rescale_learned_sigmas) are accepted
and recorded but change nothing; sampling options (timestep_respacing, use_ddim, ...) are
refused with a pointer to geneval's own options.

Conventions taken from the authors' code (guided_diffusion/script_util.py at 22e0df8,
improved_diffusion/script_util.py at 1bc7bbb):
- `attention_resolutions` are pixel sizes ("32,16,8"), stored as such in UNetConfig.
- `channel_mult` "" → the per-resolution table (create_model; sr_create_model has its own, in
  which 512 uses (1,1,2,2,4,4)); classifiers always use create_classifier's table.
- class_cond → 1000 classes (NUM_CLASSES); geneval's extra name `num_classes` changes that.
- not learn_sigma → fixed LARGE variance unless sigma_small (create_gaussian_diffusion).
- the two codebases differ in two defaults: improved-diffusion has rescale_timesteps=True and
  rescale_learned_sigmas=True; pick its defaults with geneval's extra name
  `defaults = "improved-diffusion"` (default: "guided-diffusion").
- large_size / small_size make a super-resolution model (SuperResModel); image_size is then refused.
- classifier_* flags describe a classifier; model flags given to a classifier (and classifier
  flags given to a UNet) are ignored, because the authors' classifier_sample.py takes both in one
  command line.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from geneval.errors import GenevalError
from geneval.models.classifier import ClassifierConfig
from geneval.models.unet import UNetConfig, default_channel_mult, default_super_res_channel_mult
from geneval.sampling.schedules import DiffusionConfig

FAMILIES = ("guided-diffusion", "improved-diffusion")
NUM_CLASSES = 1000  # script_util.NUM_CLASSES in both codebases

# model_and_diffusion_defaults() of guided-diffusion (improved-diffusion: see _IDDPM_OVERRIDES).
_MODEL_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "use_checkpoint": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_fp16": False,
    "use_new_attention_order": False,
}
_DIFFUSION_DEFAULTS: dict[str, Any] = {
    "learn_sigma": False,
    "diffusion_steps": 1000,
    "noise_schedule": "linear",
    "use_kl": False,
    "predict_xstart": False,
    "rescale_timesteps": False,
    "rescale_learned_sigmas": False,
    "sigma_small": False,
}
_SR_DEFAULTS: dict[str, Any] = {"large_size": 256, "small_size": 64}
_CLASSIFIER_DEFAULTS: dict[str, Any] = {
    "classifier_use_fp16": False,
    "classifier_width": 128,
    "classifier_depth": 2,
    "classifier_attention_resolutions": "32,16,8",
    "classifier_use_scale_shift_norm": True,
    "classifier_resblock_updown": True,
    "classifier_pool": "attention",
}
_IDDPM_OVERRIDES: dict[str, Any] = {"rescale_timesteps": True, "rescale_learned_sigmas": True}
_EXTRA: dict[str, Any] = {"defaults": "guided-diffusion", "num_classes": NUM_CLASSES}
_ALL = {**_MODEL_DEFAULTS, **_DIFFUSION_DEFAULTS, **_SR_DEFAULTS, **_CLASSIFIER_DEFAULTS, **_EXTRA}
# Accepted, recorded, but without effect on sampling outputs.
NO_EFFECT = frozenset({"use_fp16", "use_checkpoint", "classifier_use_fp16", "use_kl", "rescale_learned_sigmas", "defaults"})
_SAMPLING_ONLY = {
    "timestep_respacing": "--steps/--respacing",
    "use_ddim": "--sampler",
    "clip_denoised": "the sampling config",
    "classifier_scale": "--classifier-scale",
    "num_samples": "--n",
    "batch_size": "--batch-size",
    "model_path": "--model",
    "classifier_path": "--classifier",
    "base_samples": "--model/--upsampler",
}
_CLASSIFIER_ONLY = frozenset(_CLASSIFIER_DEFAULTS)
_UNET_ONLY = frozenset(set(_MODEL_DEFAULTS) - {"image_size"} | set(_DIFFUSION_DEFAULTS) | set(_SR_DEFAULTS))

# Which config fields each flag determines ("d." = DiffusionConfig): what a known release is checked on.
_TARGETS: dict[str, tuple[str, ...]] = {
    "image_size": ("image_size",),
    "num_channels": ("model_channels",),
    "num_res_blocks": ("num_res_blocks",),
    "num_heads": ("num_heads",),
    "num_heads_upsample": ("num_heads_upsample",),
    "num_head_channels": ("num_head_channels",),
    "attention_resolutions": ("attention_resolutions",),
    "channel_mult": ("channel_mult",),
    "dropout": ("dropout",),
    "class_cond": ("num_classes",),
    "num_classes": ("num_classes",),
    "use_scale_shift_norm": ("use_scale_shift_norm",),
    "resblock_updown": ("resblock_updown",),
    "use_new_attention_order": ("use_new_attention_order",),
    "learn_sigma": ("out_channels", "d.variance_type"),
    "sigma_small": ("d.variance_type",),
    "diffusion_steps": ("d.num_timesteps",),
    "noise_schedule": ("d.beta_schedule",),
    "predict_xstart": ("d.prediction_type",),
    "rescale_timesteps": ("d.rescale_timesteps",),
    "large_size": ("image_size",),
    "small_size": ("low_res_size",),
    "classifier_width": ("model_channels",),
    "classifier_depth": ("num_res_blocks",),
    "classifier_attention_resolutions": ("attention_resolutions",),
    "classifier_use_scale_shift_norm": ("use_scale_shift_norm",),
    "classifier_resblock_updown": ("resblock_updown",),
    "classifier_pool": ("pool",),
}


@dataclass(frozen=True)
class ParsedFlags:
    """Configs built from flags, plus what was given (for provenance and release checks).

    Args:
        kind: "unet" or "classifier".
        config: the UNetConfig (super_res when large/small_size were given) or ClassifierConfig.
        diffusion: the DiffusionConfig (None for classifiers).
        given: the flags as given, typed (bools, ints, floats, strings).
        ignored: given names that do not apply to this kind of network.
    """

    kind: str
    config: UNetConfig | ClassifierConfig
    diffusion: DiffusionConfig | None
    given: dict[str, Any] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()

    def determined_fields(self) -> dict[str, Any]:
        """Config fields fixed by the given flags → their values ("d.x" for DiffusionConfig fields)."""
        out: dict[str, Any] = {}
        for name in self.given:
            if name in self.ignored:
                continue
            for target in _TARGETS.get(name, ()):
                if self.kind == "classifier" and target == "num_classes":
                    target = "out_channels"
                out[target] = _field(self.config, self.diffusion, target)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "flags": dict(self.given), "ignored": list(self.ignored), "without_effect": sorted(set(self.given) & NO_EFFECT)}


def _field(config: Any, diffusion: DiffusionConfig | None, target: str) -> Any:
    if target.startswith("d."):
        return None if diffusion is None else getattr(diffusion, target[2:])
    return getattr(config, target)


def flag_conflicts(parsed: ParsedFlags, config: Any, diffusion: DiffusionConfig | None) -> list[str]:
    """'field: flags X, expected Y' for every field the given flags set differently from config/diffusion."""
    out = []
    for target, value in parsed.determined_fields().items():
        want = _field(config, diffusion, target)
        if target == "attention_resolutions":  # a set of sizes: "8,16,32" is "32,16,8"
            value, want = tuple(sorted(value)), tuple(sorted(want))
        if value != want:
            out.append(f"{target.removeprefix('d.')}: flags give {value!r}, the preset has {want!r}")
    return out


def _str2bool(name: str, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise GenevalError(f"model flag --{name}: expected a boolean (True/False), got {v!r}")


def _typed(name: str, v: Any) -> Any:
    default = _ALL[name]
    if isinstance(default, bool):
        return _str2bool(name, v)
    try:
        if isinstance(default, int):
            if isinstance(v, float) and not v.is_integer():
                raise ValueError
            return int(v)
        if isinstance(default, float):
            return float(v)
    except (TypeError, ValueError):
        raise GenevalError(f"model flag --{name}: expected a {type(default).__name__}, got {v!r}") from None
    if isinstance(v, (list, tuple)):  # TOML arrays for comma lists
        return ",".join(str(x) for x in v)
    return str(v)


def split_flag_string(text: str) -> dict[str, str]:
    """'--a 1 --b=x' → {'a': '1', 'b': 'x'}; a name given twice keeps the last value (as argparse)."""
    tokens = shlex.split(text)
    out: dict[str, str] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) == 2:
            raise GenevalError(f"model flags: expected --name value, got {tok!r} in {text!r}")
        name = tok[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise GenevalError(f"model flags: --{name} has no value")
            value = tokens[i + 1]
            i += 2
        out[name] = value
    return out


def _ints(name: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise GenevalError(f"model flag --{name}: expected comma-separated integers, got {text!r}") from None


def _mults(text: str) -> tuple[float, ...]:
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise GenevalError(f"model flag --channel_mult: expected comma-separated numbers, got {text!r}") from None
    return tuple(int(v) if v.is_integer() else v for v in vals)


def parse_model_flags(flags: str | Mapping[str, Any], kind: str = "unet") -> ParsedFlags:
    """Build configs from guided-diffusion/improved-diffusion flags.

    Args:
        flags: "--image_size 64 --num_channels 192 ..." or a mapping of the same names (TOML table).
        kind: "unet" (diffusion model; super-resolution if large_size/small_size are given) or
            "classifier" (noisy classifier: image_size and classifier_* flags).
    """
    if kind not in ("unet", "classifier"):
        raise ValueError(f"kind must be 'unet' or 'classifier', got {kind!r}")
    raw = split_flag_string(flags) if isinstance(flags, str) else dict(flags)
    for name in raw:
        if name in _SAMPLING_ONLY:
            raise GenevalError(f"model flag --{name} is a sampling option, not part of the model; use geneval's {_SAMPLING_ONLY[name]}")
        if name not in _ALL:
            raise GenevalError(f"unknown model flag --{name}; known: {', '.join(sorted(_ALL))}")
    given = {k: _typed(k, v) for k, v in raw.items()}
    family = given.get("defaults", "guided-diffusion")
    if family not in FAMILIES:
        raise GenevalError(f"model flag --defaults must be one of {', '.join(FAMILIES)}, got {family!r}")
    v = {**_ALL, **(_IDDPM_OVERRIDES if family == "improved-diffusion" else {}), **given}
    if "num_classes" in given and kind == "unet" and not v["class_cond"]:
        raise GenevalError("model flag --num_classes needs --class_cond True")
    if kind == "classifier":
        ignored = tuple(k for k in given if k in _UNET_ONLY)
        return ParsedFlags("classifier", _classifier_config(v), None, given, ignored)
    ignored = tuple(k for k in given if k in _CLASSIFIER_ONLY)
    return ParsedFlags("unet", _unet_config(v, given), _diffusion_config(v), given, ignored)


def _unet_config(v: dict[str, Any], given: dict[str, Any]) -> UNetConfig:
    super_res = "large_size" in given or "small_size" in given
    if super_res and "image_size" in given:
        raise GenevalError("model flags: a super-resolution model takes --large_size/--small_size, not --image_size")
    size = v["large_size"] if super_res else v["image_size"]
    if v["channel_mult"]:
        mult = _mults(v["channel_mult"])
    else:
        try:
            mult = default_super_res_channel_mult(size) if super_res else default_channel_mult(size)
        except ValueError as e:
            raise GenevalError(f"model flags: {e}") from None
    attn = _ints("attention_resolutions", v["attention_resolutions"])
    if v["num_head_channels"] != -1:
        # attention levels and the middle block (which always has attention)
        ch = {int(m * v["num_channels"]) for lvl, m in enumerate(mult) if size // 2**lvl in attn} | {int(mult[-1] * v["num_channels"])}
        bad = sorted(c for c in ch if c % v["num_head_channels"])
        if bad:
            raise GenevalError(f"model flags: widths {bad} are not divisible by --num_head_channels {v['num_head_channels']}")
    return UNetConfig(
        image_size=size,
        in_channels=3,
        model_channels=v["num_channels"],
        out_channels=6 if v["learn_sigma"] else 3,
        num_res_blocks=v["num_res_blocks"],
        attention_resolutions=attn,
        dropout=v["dropout"],
        channel_mult=mult,
        num_classes=v["num_classes"] if v["class_cond"] else None,
        num_heads=v["num_heads"],
        num_head_channels=v["num_head_channels"],
        num_heads_upsample=v["num_heads_upsample"],
        use_scale_shift_norm=v["use_scale_shift_norm"],
        resblock_updown=v["resblock_updown"],
        use_new_attention_order=v["use_new_attention_order"],
        low_res_size=v["small_size"] if super_res else None,
    )


def _diffusion_config(v: dict[str, Any]) -> DiffusionConfig:
    if v["noise_schedule"] not in ("linear", "cosine"):
        raise GenevalError(f"model flag --noise_schedule: guided-diffusion knows linear and cosine, got {v['noise_schedule']!r}")
    variance = "learned_range" if v["learn_sigma"] else ("fixed_small" if v["sigma_small"] else "fixed_large")
    return DiffusionConfig(
        num_timesteps=v["diffusion_steps"],
        beta_schedule=v["noise_schedule"],
        prediction_type="x0" if v["predict_xstart"] else "eps",
        variance_type=variance,
        rescale_timesteps=v["rescale_timesteps"],
    )


def _classifier_config(v: dict[str, Any]) -> ClassifierConfig:
    if v["image_size"] not in (64, 128, 256, 512):  # create_classifier's table
        raise GenevalError(f"model flags: guided-diffusion classifiers exist for image sizes 64, 128, 256, 512, not {v['image_size']}")
    mult = default_channel_mult(v["image_size"])
    attn_px = _ints("classifier_attention_resolutions", v["classifier_attention_resolutions"])
    widths = {int(m * v["classifier_width"]) for lvl, m in enumerate(mult) if v["image_size"] // 2**lvl in attn_px}
    widths.add(int(mult[-1] * v["classifier_width"]))  # the middle block and the attention pool
    bad = sorted(w for w in widths if w % 64)
    if bad:
        raise GenevalError(f"model flags: widths {bad} are not divisible by the classifier's 64 head channels")
    try:
        return ClassifierConfig(
            image_size=v["image_size"],
            in_channels=3,
            model_channels=v["classifier_width"],
            out_channels=v["num_classes"],
            num_res_blocks=v["classifier_depth"],
            attention_resolutions=_ints("classifier_attention_resolutions", v["classifier_attention_resolutions"]),
            channel_mult=default_channel_mult(v["image_size"]),
            num_heads=1,
            num_head_channels=64,
            use_scale_shift_norm=v["classifier_use_scale_shift_norm"],
            resblock_updown=v["classifier_resblock_updown"],
            pool=v["classifier_pool"],
        )
    except ValueError as e:
        raise GenevalError(f"model flags: {e}") from None

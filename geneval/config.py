"""Frozen configurations for `run` and `sweep`, loadable from CLI flags and an optional TOML file.

A config is resolved once (defaults ← TOML ← explicit flags) and then written into every result
(`config.json` next to results.json), so a number can always be traced to what produced it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from geneval import vocab
from geneval.errors import GenevalError
from geneval.progress import progress_mode


@dataclass(frozen=True)
class RunConfig:
    """Everything that shapes a `geneval run` (checkpoint → samples → features → metrics).

    Args:
        model: checkpoint path (native dir/file, guided-diffusion .pt, diffusers folder); None = demo.
        preset: model preset name for checkpoints without metadata (guided-diffusion .pt).
        metrics: comma list of metric / group names (`fid,pr`).
        ref: reference batch / stats file; None = the demo's Fashion-MNIST test statistics.
        n: number of samples.
        sampler: sampler name from the sampler registry (ddim, ddpm, ...); None: the model's own
            default (a DiT's ddpm, the latent demo's ddim), else ddim.
        steps: number of sampling steps (respacing); None: the model's own default, else 25.
        guidance: classifier-free guidance scale in `convention`; None = no CFG.
        convention: "w" (w=0 unguided) or "s" (s=1 unguided); required with guidance, never assumed.
        classifier: noisy classifier checkpoint for classifier guidance; None = none.
        classifier_scale: classifier guidance scale s (0 = off).
        seed: base seed; sample i's noise depends only on (seed, i).
        batch_size: samples per sampler / feature batch.
        device: torch device string; None = cuda if available else cpu.
        mode: feature preprocessing mode (tf = ADM/TF1 resize).
        precision: feature precision (exact = fp32, fast = TF32/bf16 where allowed).
        save_samples: optional ADM npz path to write the samples to, on the side.
        out_dir: parent directory of `<run-id>/` report folders.
        run_id: report folder name; None = a fresh sortable id.
        progress: progress on stderr: auto (a live bar on a terminal only), always (also plain
            timed lines off a terminal) or never; True/False mean auto/never.
        shard_size: samples per resumable shard (a killed run restarts from its finished shards).
        model_flags: guided-diffusion flags ("--image_size 64 --num_channels 192 ...") for a .pt no preset covers.
        model_config: the LDM YAML of a CompVis `.ckpt` (latent diffusion).
        vae: the first-stage autoencoder of a DiT checkpoint (diffusers folder, .safetensors or .ckpt).
        cfg_channels: DiT classifier-free guidance on "official" (first 3 latent channels, as DiT's
            sample.py) or "all" channels (diffusers' DiTPipeline); None: the model family's default.
        vq: the VQ tokenizer decoding a VQ-Diffusion checkpoint's tokens.
        truncation_rate: VQ-Diffusion's truncation r in (0, 1]; None: the checkpoint's default.
        vq_config: the VQ tokenizer's shape (preset name or taming YAML) when it cannot be inferred.
        vq_token_map: VQ-Diffusion's code → token table (e.g. taming_vqvae_974.pt).
        skip: VQ-Diffusion fast-sampling skip (None: the checkpoint's default).
        upsampler: an ADM super-resolution checkpoint: the run becomes a base → upsampler cascade.
        upsampler_preset: its preset when its file name is not a known release.
        upsampler_sampler, upsampler_steps: the upsampler stage's sampler (ADM: ddpm, 250 steps).
        ci: bootstrap confidence level for FID/PR/DC (e.g. 0.95; seeded by `seed`); None: no intervals.
        convention_source: "model" (a diffusers folder's own scheduler) or "adm"; None: the model's.
        respacing_convention: adm, leading, trailing, linspace or ldm; None: the convention source's.
        features: feature networks to run besides TF-Inception ("dinov2,clip"); the metrics' own
            networks (fd_dinov2 → dinov2, cmmd → clip) are added anyway.
    """

    model: str | None = None
    preset: str | None = None
    metrics: str = "fid"
    ref: str | None = None
    n: int = 50_000
    sampler: str | None = None
    steps: int | None = None
    guidance: float | None = None
    convention: str | None = None
    classifier: str | None = None
    classifier_scale: float = 0.0
    seed: int = 0
    batch_size: int = 250
    device: str | None = None
    mode: str = "tf"
    precision: str = "exact"
    save_samples: str | None = None
    out_dir: str = "reports"
    run_id: str | None = None
    progress: str | bool = "auto"
    shard_size: int = 1000
    model_flags: str | None = None
    model_config: str | None = None
    vae: str | None = None
    cfg_channels: str | None = None
    vq: str | None = None
    truncation_rate: float | None = None
    vq_config: str | None = None
    vq_token_map: str | None = None
    skip: int | None = None
    upsampler: str | None = None
    upsampler_preset: str | None = None
    upsampler_sampler: str = "ddpm"
    upsampler_steps: int = 250
    ci: float | None = None
    convention_source: str | None = None
    respacing_convention: str | None = None
    features: str | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise GenevalError(f"n must be >= 1, got {self.n}")
        if self.steps is not None and self.steps < 1:
            raise GenevalError(f"steps must be >= 1, got {self.steps}")
        if self.batch_size < 1:
            raise GenevalError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.shard_size < 1:
            raise GenevalError(f"shard_size must be >= 1, got {self.shard_size}")
        from geneval.preflight import check_seed

        check_seed(self.seed)  # sample i's noise, KID subsets and bootstrap resamples all draw from it
        for name in ("guidance", "classifier_scale", "truncation_rate", "ci"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise GenevalError(f"{name} must be a finite float, got {value}")
        if self.run_id is not None:
            check_folder_name(self.run_id, "--run-id")
        if self.convention is not None:
            vocab.check("convention", self.convention)
        elif self.guidance is not None:
            raise GenevalError(
                f"--guidance {self.guidance:g} needs an explicit --convention: w (eps=(1+w)eps_c-w*eps_u, w=0 unguided) "
                "or s (eps=eps_u+s(eps_c-eps_u), s=1 unguided)"
            )
        vocab.check("mode", self.mode)
        vocab.check("precision", self.precision)
        object.__setattr__(self, "progress", progress_mode(self.progress))  # a bool (older API) becomes auto/never
        for kind in ("convention_source", "respacing_convention"):
            if getattr(self, kind) is not None:
                vocab.check(kind, getattr(self, kind))
        if self.classifier_scale < 0:
            raise GenevalError(f"classifier_scale must be >= 0, got {self.classifier_scale}")
        if self.classifier_scale > 0 and not self.classifier:
            raise GenevalError("classifier_scale > 0 needs a classifier checkpoint (--classifier)")

    @property
    def guidance_w(self) -> float | None:
        """The CFG scale in the Ho & Salimans convention (w = s − 1), None without CFG."""
        if self.guidance is None:
            return None
        return self.guidance if self.convention == "w" else self.guidance - 1.0

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SweepConfig:
    """A sweep: one `run` per value of one swept parameter (guidance or steps).

    Args:
        base: the run configuration every point starts from.
        param: "guidance" or "steps".
        values: the swept values, in order.
        sweep_id: report folder name; None = a fresh id.
    """

    base: RunConfig
    param: str
    values: tuple[float, ...]
    sweep_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.param not in ("guidance", "steps"):
            raise GenevalError(f"can only sweep guidance or steps, not {self.param!r}")
        if not self.values:
            raise GenevalError(f"sweep over {self.param} needs at least one value")
        bad = [v for v in self.values if not math.isfinite(v)]
        if bad:
            raise GenevalError(f"sweep over {self.param}: {bad[0]} is not a finite number")
        if self.sweep_id is not None:
            check_folder_name(self.sweep_id, "--sweep-id")

    def to_dict(self) -> dict[str, Any]:
        return {"param": self.param, "values": list(self.values), "sweep_id": self.sweep_id, "base": self.base.to_dict()}


def check_folder_name(name: str, what: str) -> None:
    """A report folder name (--run-id, --sweep-id) is one plain name: it cannot reach outside --out-dir."""
    seps = {"/", os.sep} | ({os.altsep} if os.altsep else set())
    if not name or name in (".", "..") or any(s in name for s in seps) or "\0" in name:
        raise GenevalError(f"{what} {name!r} must be a plain folder name (no path separators, not '.' or '..')")


def load_toml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file; keys are RunConfig field names (a [run] table is also accepted).

    Args:
        path: the .toml file.
    """
    p = Path(path)
    if p.is_dir():
        raise GenevalError(f"config file {p} is a folder; pass the .toml file")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GenevalError(f"config file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenevalError(f"cannot read config file {p}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise GenevalError(f"{p}: invalid TOML ({' '.join(str(e).split())})") from None
    except RecursionError:
        raise GenevalError(f"{p}: invalid TOML (nested too deeply)") from None
    if "run" in data and isinstance(data["run"], dict):
        data = {**{k: v for k, v in data.items() if k != "run"}, **data["run"]}
    return data


def resolve_run_config(toml: Mapping[str, Any] | None = None, **flags: Any) -> RunConfig:
    """Defaults ← TOML values ← explicit flags (flags set to None are taken as "not given").

    Args:
        toml: values read from a config file (unknown keys are an error, never ignored).
        flags: RunConfig fields given explicitly.
    """
    known = {f.name for f in fields(RunConfig)}
    values: dict[str, Any] = {}
    for source, mapping in (("config file", toml or {}), ("arguments", flags)):
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise GenevalError(f"unknown {source} key(s) {unknown}; known: {sorted(known)}")
        values.update({k: v for k, v in mapping.items() if v is not None})
    if isinstance(values.get("metrics"), (list, tuple)):
        if not all(isinstance(m, str) for m in values["metrics"]):
            raise GenevalError(f"metrics must be names (strings), got {values['metrics']!r}")
        values["metrics"] = ",".join(values["metrics"])
    for name, value in values.items():
        _check_type(name, value)
    try:
        return RunConfig(**values)
    except TypeError as e:
        raise GenevalError(f"bad run configuration: {e}") from None


_FIELD_TYPES = {f.name: f.type for f in fields(RunConfig)}


def _check_type(name: str, value: Any) -> None:
    """One-line error for a value of the wrong type (TOML gives ints, floats, bools, strings, dates, tables)."""
    import math

    want = str(_FIELD_TYPES.get(name, ""))
    if want.startswith("bool"):
        ok = isinstance(value, bool)
    elif want.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif want.startswith("float"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif want == "str | bool":
        ok = isinstance(value, (str, bool))
    elif want.startswith("str"):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        kind = want.split(" |")[0]
        article = "an" if kind[0] in "aeiou" else "a"
        raise GenevalError(f"{name} must be {'a finite' if kind == 'float' else article} {kind}, got {value!r}")

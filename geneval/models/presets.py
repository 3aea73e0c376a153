"""Named architectures for every released guided-diffusion / improved-diffusion checkpoint.

Each preset is built from the exact flags its README prints (openai/guided-diffusion README at
22e0df8, openai/improved-diffusion README at 1bc7bbb) through `model_flags.parse_model_flags`,
with that codebase's defaults for the flags it leaves out; the flag string is kept on the preset.
`files` are the release file names: a `.pt` with such a name (or with a pinned sha256) selects
the preset automatically, and flags that contradict it are refused (geneval.models.formats).
Parameter counts were computed by instantiating on the meta device (tests check them).

`preset_table()` lists them (name, kind, files, parameters, summary) for `--help` / docs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from geneval.errors import GenevalError
from geneval.models.classifier import ClassifierConfig
from geneval.models.model_flags import parse_model_flags
from geneval.models.unet import UNetConfig
from geneval.sampling.schedules import DiffusionConfig

GD = "openai/guided-diffusion README"
IDDPM = "openai/improved-diffusion README"
_GD_URL = "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/"
_IDDPM_URL = "https://openaipublic.blob.core.windows.net/diffusion/march-2021/"


@dataclass(frozen=True)
class Preset:
    """A named architecture (+ training diffusion for UNets), its release files and reference size.

    Args:
        name: preset name (--preset).
        kind: "unet" (incl. super-resolution UNets) or "classifier".
        config: the architecture.
        diffusion: the training DiffusionConfig (None for classifiers).
        summary: one line: what the model is.
        num_parameters: parameter count of the architecture.
        default_respacing: the respacing the authors sample with.
        files: release file names that identify the checkpoint.
        sha256: the published file's sha256 where a public source pins it, else None.
        flags: the flag string from the README the preset was built from.
        source: which README (and URL folder) it comes from.
    """

    name: str
    kind: str
    config: UNetConfig | ClassifierConfig
    diffusion: DiffusionConfig | None
    summary: str
    num_parameters: int
    default_respacing: str = "250"
    files: tuple[str, ...] = ()
    sha256: str | None = None
    flags: str = ""
    source: str = ""

    def describe(self) -> dict[str, Any]:
        """Provenance of the preset (recorded with a model loaded through it)."""
        return {
            "preset": self.name,
            "kind": self.kind,
            "files": list(self.files),
            "sha256": self.sha256,
            "flags": self.flags,
            "source": self.source,
            "default_respacing": self.default_respacing,
        }


def _make(
    name: str,
    flags: str,
    summary: str,
    params: int,
    files: tuple[str, ...],
    source: str,
    *,
    kind: str = "unet",
    respacing: str = "250",
    sha256: str | None = None,
) -> Preset:
    parsed = parse_model_flags(flags, kind=kind)
    url = _GD_URL if source == GD else _IDDPM_URL
    return Preset(
        name,
        kind,
        parsed.config,
        parsed.diffusion,
        summary,
        params,
        respacing,
        files,
        sha256,
        flags,
        f"{source}; {url}{files[0]}" if files else source,
    )


# MODEL_FLAGS + DIFFUSION flags exactly as printed in the READMEs.
_GD_64 = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 --image_size 64 "
    "--learn_sigma True --noise_schedule cosine --num_channels 192 --num_head_channels 64 --num_res_blocks 3 "
    "--resblock_updown True --use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"
)
_GD_128 = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 128 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_heads 4 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 True --use_scale_shift_norm True"
)
_GD_256 = (
    "--attention_resolutions 32,16,8 --class_cond {cond} --diffusion_steps 1000 --image_size 256 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 True --use_scale_shift_norm True"
)
_GD_512 = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --image_size 512 --learn_sigma True "
    "--noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True "
    "--use_fp16 False --use_scale_shift_norm True"
)
_GD_UP_64_256 = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256  --small_size 64 "
    "--learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
_GD_UP_128_512 = (
    "--attention_resolutions 32,16 --class_cond True --diffusion_steps 1000 --large_size 512 --small_size 128 "
    "--learn_sigma True --noise_schedule linear --num_channels 192 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
_GD_LSUN = (
    "--attention_resolutions 32,16,8 --class_cond False --diffusion_steps 1000 --dropout {dropout} --image_size 256 "
    "--learn_sigma True --noise_schedule linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 "
    "--resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)
_ID = "--defaults improved-diffusion "  # geneval's name for "improved-diffusion's defaults" (rescale_timesteps True)
_ID_IN64 = "--image_size 64 --num_channels 128 --num_res_blocks 3 --learn_sigma True --diffusion_steps 4000 --noise_schedule cosine"
_ID_C10 = "--image_size 32 --num_channels 128 --num_res_blocks 3 --learn_sigma True --dropout 0.3 --diffusion_steps 4000 --noise_schedule cosine"
_ID_LSUN = (
    "--image_size 256 --num_channels 128 --num_res_blocks 2 --num_heads 1 --learn_sigma True --use_scale_shift_norm False "
    "--attention_resolutions 16 --diffusion_steps 1000 --noise_schedule linear --rescale_learned_sigmas False "
    "--rescale_timesteps False"
)

# sha256 of published files where public code pins them (never guessed): 256x256_diffusion_uncond.pt as
# checked by Disco Diffusion forks' downloaders (several independent copies, and one note with its size,
# 2,211,383,297 bytes, and its 552,814,086 parameters); lsun_uncond_100M_1200K_bs128.pt as checked by one
# Disco Diffusion fork's hash-verifying downloader.
_SHA_256_UNCOND = "a37c32fffd316cd494cf3f35b339936debdc1576dad13fe57c42399a5dbc78b1"
_SHA_IDDPM_LSUN_1200K = "38e66420ba5c703df8ce78750721976e13442064b5df847b82f05ebc65120534"

_PRESET_LIST: tuple[Preset, ...] = (
    # ---- guided-diffusion (ADM), ImageNet
    _make("adm-64", _GD_64, "ADM ImageNet 64x64 class-conditional, cosine, learned sigma", 295_904_454, ("64x64_diffusion.pt",), GD),
    _make("adm-128", _GD_128, "ADM ImageNet 128x128 class-conditional, linear, learned sigma", 421_529_606, ("128x128_diffusion.pt",), GD),
    _make(
        "adm-256",
        _GD_256.format(cond=True),
        "ADM ImageNet 256x256 class-conditional, linear, learned sigma",
        553_838_086,
        ("256x256_diffusion.pt",),
        GD,
    ),
    _make(
        "adm-256-uncond",
        _GD_256.format(cond=False),
        "ADM ImageNet 256x256 unconditional, linear, learned sigma",
        552_814_086,
        ("256x256_diffusion_uncond.pt",),
        GD,
        sha256=_SHA_256_UNCOND,
    ),
    _make("adm-512", _GD_512, "ADM ImageNet 512x512 class-conditional, linear, learned sigma", 558_997_638, ("512x512_diffusion.pt",), GD),
    _make(
        "adm-upsampler-64-256", _GD_UP_64_256, "ADM-U 64->256 super-resolution (class-conditional), linear", 311_795_910, ("64_256_upsampler.pt",), GD
    ),
    _make(
        "adm-upsampler-128-512",
        _GD_UP_128_512,
        "ADM-U 128->512 super-resolution (class-conditional), linear",
        308_835_270,
        ("128_512_upsampler.pt",),
        GD,
    ),
    *(
        _make(
            f"adm-classifier-{size}",
            f"--image_size {size}" + (" --classifier_depth 4" if size == 64 else ""),
            f"ADM noisy ImageNet classifier {size}x{size} (attention pool)",
            params,
            (f"{size}x{size}_classifier.pt",),
            GD,
            kind="classifier",
        )
        for size, params in ((64, 65_438_568), (128, 42_568_040), (256, 54_096_360), (512, 54_448_360))
    ),
    # ---- guided-diffusion, LSUN (the README: best samples with 1000 steps)
    *(
        _make(
            f"adm-lsun-{what}",
            _GD_LSUN.format(dropout=dropout),
            f"ADM LSUN {what.replace('-', ' ')} 256x256 unconditional",
            552_814_086,
            (f"lsun_{what.replace('-', '_')}.pt",),
            GD,
            respacing="1000",
        )
        for what, dropout in (("bedroom", 0.1), ("cat", 0.1), ("horse", 0.1), ("horse-nodropout", 0.0))
    ),
    # ---- improved-diffusion (IDDPM)
    _make(
        "iddpm-imagenet64-uncond",
        _ID + _ID_IN64,
        "IDDPM ImageNet 64x64 unconditional, L_hybrid, cosine, 4000 steps",
        121_063_942,
        ("imagenet64_uncond_100M_1500K.pt",),
        IDDPM,
    ),
    _make(
        "iddpm-imagenet64-uncond-vlb",
        _ID + _ID_IN64 + " --use_kl True",
        "IDDPM ImageNet 64x64 unconditional, L_vlb, cosine, 4000 steps",
        121_063_942,
        ("imagenet64_uncond_vlb_100M_1500K.pt",),
        IDDPM,
    ),
    _make(
        "iddpm-imagenet64-cond",
        _ID + "--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True "
        "--class_cond True --diffusion_steps 4000 --noise_schedule cosine --rescale_learned_sigmas False --rescale_timesteps False",
        "IDDPM ImageNet 64x64 class-conditional, cosine, 4000 steps",
        273_049_350,
        ("imagenet64_cond_270M_250K.pt",),
        IDDPM,
    ),
    _make("iddpm-cifar10", _ID + _ID_C10, "IDDPM CIFAR-10 32x32, L_hybrid, cosine, 4000 steps", 52_546_438, ("cifar10_uncond_50M_500K.pt",), IDDPM),
    _make(
        "iddpm-cifar10-vlb",
        _ID + _ID_C10 + " --use_kl True",
        "IDDPM CIFAR-10 32x32, L_vlb, cosine, 4000 steps",
        52_546_438,
        ("cifar10_uncond_vlb_50M_500K.pt",),
        IDDPM,
    ),
    _make(
        "iddpm-upsampler-64-256",
        _ID + "--num_channels 192 --num_res_blocks 2 --learn_sigma True --class_cond True "
        "--diffusion_steps 4000 --noise_schedule linear --rescale_learned_sigmas False --rescale_timesteps False "
        "--large_size 256 --small_size 64",
        "IDDPM 64->256 super-resolution (class-conditional), linear, 4000 steps",
        279_792_390,
        ("upsample_cond_500K.pt",),
        IDDPM,
    ),
    _make(
        "iddpm-lsun-bedroom",
        _ID + _ID_LSUN,
        "IDDPM LSUN bedroom 256x256 (lr 1e-4, 1.2M steps)",
        113_676_678,
        ("lsun_uncond_100M_1200K_bs128.pt",),
        IDDPM,
        sha256=_SHA_IDDPM_LSUN_1200K,
    ),
    _make(
        "iddpm-lsun-bedroom-2400k",
        _ID + _ID_LSUN + " --use_scale_shift_norm False",
        "IDDPM LSUN bedroom 256x256 (lr 2e-5, 2.4M steps)",
        113_676_678,
        ("lsun_uncond_100M_2400K_bs64.pt",),
        IDDPM,
    ),
)

PRESETS: dict[str, Preset] = {p.name: p for p in _PRESET_LIST}
_BY_FILE: dict[str, Preset] = {f: p for p in _PRESET_LIST for f in p.files}
_BY_SHA: dict[str, Preset] = {p.sha256: p for p in _PRESET_LIST if p.sha256}


def get_preset(name: str) -> Preset:
    """Look up a preset, or raise a GenevalError listing the known ones."""
    if name not in PRESETS:
        raise GenevalError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]


@dataclass(frozen=True)
class ReleaseMatch:
    """A checkpoint identified as a published release: the preset and how it was recognised."""

    preset: Preset
    matched_by: str  # "sha256" or "file name"
    sha256_verified: bool | None  # None: no published hash to compare against

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset.name, "matched_by": self.matched_by, "sha256_verified": self.sha256_verified}


def match_release(file_name: str, sha256: str | None = None) -> ReleaseMatch | None:
    """The release a checkpoint is, by pinned sha256 first, then by its exact release file name."""
    if sha256 and sha256 in _BY_SHA:
        return ReleaseMatch(_BY_SHA[sha256], "sha256", True)
    p = _BY_FILE.get(file_name)
    if p is None:
        return None
    return ReleaseMatch(p, "file name", None if p.sha256 is None or sha256 is None else p.sha256 == sha256)


def preset_table() -> list[dict[str, Any]]:
    """One row per preset (name, kind, files, parameters, respacing, summary), for listings."""
    return [
        {
            "name": p.name,
            "kind": "upsampler" if p.kind == "unet" and p.config.super_res else p.kind,
            "files": ", ".join(p.files),
            "parameters": p.num_parameters,
            "respacing": p.default_respacing,
            "summary": p.summary,
        }
        for p in _PRESET_LIST
    ]

"""Named architectures for the released guided-diffusion / improved-diffusion checkpoints.

Flags are those of the official READMEs (REFERENCE.md §5). Parameter counts are computed by
instantiating on the meta device (tests/test_formats.py checks them):

=================  =====================================================  ============
preset             what                                                    parameters
=================  =====================================================  ============
adm-64             ADM ImageNet 64×64 class-cond, cosine, learned σ        295,904,454
adm-128            ADM ImageNet 128×128 class-cond, linear, learned σ      421,529,606
adm-256            ADM ImageNet 256×256 class-cond, linear, learned σ      553,838,086
adm-256-uncond     ADM ImageNet 256×256 unconditional, linear, learned σ   552,814,086
iddpm-cifar10      IDDPM CIFAR-10 32×32, cosine T=4000, learned σ           52,546,438
adm-classifier-64  ADM noisy classifier 64×64 (depth 4)                     65,438,568
adm-classifier-128 ADM noisy classifier 128×128                             42,568,040
adm-classifier-256 ADM noisy classifier 256×256                             54,096,360
=================  =====================================================  ============
"""

from __future__ import annotations

from dataclasses import dataclass

from geneval.errors import GenevalError
from geneval.models.classifier import ClassifierConfig
from geneval.models.unet import UNetConfig
from geneval.sampling.schedules import DiffusionConfig


@dataclass(frozen=True)
class Preset:
    """A named architecture (+ training diffusion for UNets) and its reference parameter count."""

    name: str
    kind: str  # "unet" | "classifier"
    config: UNetConfig | ClassifierConfig
    diffusion: DiffusionConfig | None
    summary: str
    num_parameters: int
    default_respacing: str = "250"


def _adm(image_size: int, **kw) -> UNetConfig:
    base = dict(
        image_size=image_size, in_channels=3, out_channels=6, attention_resolutions=(32, 16, 8), dropout=0.0,
        num_classes=1000, use_scale_shift_norm=True, resblock_updown=True,
    )
    base.update(kw)
    return UNetConfig(**base)


_ADM_LINEAR = DiffusionConfig(1000, "linear", prediction_type="eps", variance_type="learned_range")
_ADM_COSINE = DiffusionConfig(1000, "cosine", prediction_type="eps", variance_type="learned_range")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "adm-64", "unet",
            _adm(64, model_channels=192, num_res_blocks=3, channel_mult=(1, 2, 3, 4), num_head_channels=64,
                 use_new_attention_order=True, dropout=0.1),
            _ADM_COSINE, "ADM ImageNet 64x64 class-conditional (64x64_diffusion.pt)", 295_904_454,
        ),
        Preset(
            "adm-128", "unet",
            _adm(128, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 3, 4), num_heads=4),
            _ADM_LINEAR, "ADM ImageNet 128x128 class-conditional (128x128_diffusion.pt)", 421_529_606,
        ),
        Preset(
            "adm-256", "unet",
            _adm(256, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64),
            _ADM_LINEAR, "ADM ImageNet 256x256 class-conditional (256x256_diffusion.pt)", 553_838_086,
        ),
        Preset(
            "adm-256-uncond", "unet",
            _adm(256, model_channels=256, num_res_blocks=2, channel_mult=(1, 1, 2, 2, 4, 4), num_head_channels=64,
                 num_classes=None),
            _ADM_LINEAR, "ADM ImageNet 256x256 unconditional (256x256_diffusion_uncond.pt)", 552_814_086,
        ),
        Preset(
            "iddpm-cifar10", "unet",
            UNetConfig(image_size=32, model_channels=128, out_channels=6, num_res_blocks=3, attention_resolutions=(16, 8),
                       dropout=0.3, channel_mult=(1, 2, 2, 2), num_heads=4, use_scale_shift_norm=True),
            DiffusionConfig(4000, "cosine", prediction_type="eps", variance_type="learned_range", rescale_timesteps=True),
            "IDDPM CIFAR-10 (cifar10_uncond_50M_500K.pt, L_hybrid, cosine, 4000 steps)", 52_546_438,
        ),
        *(
            Preset(
                f"adm-classifier-{size}", "classifier",
                ClassifierConfig(image_size=size, model_channels=128, out_channels=1000, num_res_blocks=depth,
                                 attention_resolutions=(32, 16, 8), channel_mult=mult, num_head_channels=64),
                None, f"ADM noisy ImageNet classifier {size}x{size} ({size}x{size}_classifier.pt)", params,
            )
            for size, depth, mult, params in (
                (64, 4, (1, 2, 3, 4), 65_438_568),
                (128, 2, (1, 1, 2, 3, 4), 42_568_040),
                (256, 2, (1, 1, 2, 2, 4, 4), 54_096_360),
            )
        ),
    )
}


def get_preset(name: str) -> Preset:
    """Look up a preset, or raise a GenevalError listing the known ones."""
    if name not in PRESETS:
        raise GenevalError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    return PRESETS[name]

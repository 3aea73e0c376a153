"""`geneval sample`: draw samples from a checkpoint into an ADM sample batch (.npz).

Every check (sampler, steps, convention, presets, classifier, guidance vs model) runs before
the first network evaluation. Progress goes to stderr; the summary line goes to stdout.
"""

from __future__ import annotations

import json
import sys

import typer

from geneval import vocab
from geneval.cli import NO_PROGRESS_OPTION, PROGRESS_OPTION, progress_choice
from geneval.errors import GenevalError

_HELP = """Sample N images from a diffusion checkpoint into an ADM sample batch (.npz).

Writes arr_0 (uint8 N×H×W×C) and arr_1 (labels, class-conditional models) to --out and the
sampling record (sampler, steps, respacing, guidance + convention, seed, quantisation, model
sha256) to <out>.json. Shards go to <out>.shards/ first: rerunning the same command after an
interruption resumes and produces the identical file. Sample i uses seed + i, so the output does
not depend on --batch-size.

Samplers: ddpm, ddim (--eta), dpmpp_2m, euler, heun. Guidance: --guidance X --convention w
(Ho & Salimans, 0 = unguided) or s (diffusers/LDM, 1 = unguided); --classifier CKPT
--classifier-scale S for ADM classifier guidance (ddpm/ddim).

Example: geneval sample --model 256x256_diffusion.pt --preset adm-256 --classifier 256x256_classifier.pt
--classifier-preset adm-classifier-256 --classifier-scale 1.0 --sampler ddpm --steps 250 --n 50000 --out samples.npz"""


def register(app: typer.Typer) -> None:
    """Add `geneval sample`."""

    @app.command("sample", help=_HELP)
    def sample_cmd(
        model: str = typer.Option(
            ..., "--model", "-m", help="Checkpoint: native .safetensors/folder, guided-diffusion .pt (with --preset) or diffusers folder."
        ),
        out: str = typer.Option(..., "--out", "-o", help="Output .npz (ADM sample batch)."),
        n: int = typer.Option(..., "--num-samples", "--n", "-n", min=1, help="Number of samples (under torchrun spell it --num-samples)."),
        sampler: str = typer.Option("ddim", "--sampler", help=f"Sampler: {vocab.choices_help('sampler')}."),
        steps: int = typer.Option(25, "--steps", help="Sampling steps (ddpm/ddim: respacing count)."),
        respacing: str | None = typer.Option(
            None, "--respacing", help="Explicit guided-diffusion respacing: '250', 'ddim25' or '10,20,30' (default from --sampler/--steps)."
        ),
        eta: float = typer.Option(0.0, "--eta", help="DDIM eta (0 = deterministic)."),
        guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance value in --convention (omit: none)."),
        convention: str | None = typer.Option(None, "--convention", help=f"CFG convention: {vocab.choices_help('convention')}; s = 1 + w."),
        classifier: str | None = typer.Option(None, "--classifier", help="Noisy classifier checkpoint for classifier guidance."),
        classifier_scale: float = typer.Option(0.0, "--classifier-scale", help="Classifier guidance scale (0 = off)."),
        preset: str | None = typer.Option(
            None, "--preset", help="Architecture preset for a guided-diffusion .pt (adm-64, adm-128, adm-256, adm-256-uncond, iddpm-cifar10)."
        ),
        classifier_preset: str | None = typer.Option(
            None, "--classifier-preset", help="Preset for a guided-diffusion classifier .pt (adm-classifier-64/128/256)."
        ),
        classes: int | None = typer.Option(None, "--class", help="Sample only this class (default: uniform random labels from --seed)."),
        seed: int = typer.Option(0, "--seed", help="Base seed: sample i uses seed + i."),
        batch_size: int = typer.Option(64, "--batch-size", help="Samples per batch (does not change the samples)."),
        shard_size: int = typer.Option(1024, "--shard-size", help="Samples per resumable shard."),
        device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu)."),
        bf16: bool = typer.Option(False, "--bf16", help="bf16 autocast for the networks (CUDA)."),
        quantize: str = typer.Option("truncate", "--quantize", help=f"{vocab.choices_help('quantize')}."),
        align: int = typer.Option(
            8, "--align", help="Batch-invariant chunk size (0 = off: fastest, batch-size independent only up to float rounding)."
        ),
        progress: str | None = PROGRESS_OPTION,
        no_progress: bool = NO_PROGRESS_OPTION,
        convention_source: str | None = typer.Option(
            None, "--convention-source", help=f"Sampling semantics: {vocab.choices_help('convention_source')}; default model."
        ),
        respacing_convention: str | None = typer.Option(
            None, "--respacing-convention", help=f"Timesteps rule: {vocab.choices_help('respacing_convention')}."
        ),
        use_clipped_model_output: bool | None = typer.Option(
            None,
            "--use-clipped-model-output/--no-use-clipped-model-output",
            help="DDIM: recompute eps from the clipped x0 (default: True for adm, False under a diffusers DDIMScheduler).",
        ),
    ) -> None:
        from geneval.sampling.generate import (
            SamplingConfig,
            check_classes,
            check_models,
            sample_to_npz,
        )

        mode_progress = progress_choice(progress, no_progress) or "auto"
        if guidance is not None and convention is None:
            raise GenevalError(f"--guidance {guidance:g} needs an explicit --convention: {vocab.choices_help('convention')}")
        cfg = SamplingConfig(
            n=n,
            sampler=sampler,
            steps=steps,
            respacing=respacing,
            eta=eta,
            guidance=guidance,
            convention=convention or "w",
            classifier_scale=classifier_scale,
            seed=seed,
            quantize=quantize,
            autocast_bf16=bf16,
            align=align,
            convention_source=convention_source,
            respacing_convention=respacing_convention,
            use_clipped_model_output=use_clipped_model_output,
        )
        cfg.validate()  # sampler, steps, convention, quantisation: before loading anything
        if classifier_scale > 0 and classifier is None:
            raise GenevalError("--classifier-scale > 0 needs a noisy classifier: pass --classifier CKPT (and --classifier-preset for a .pt)")
        if batch_size < 1:
            raise GenevalError(f"--batch-size must be >= 1, got {batch_size}")
        if shard_size < 1:
            raise GenevalError(f"--shard-size: shard size must be >= 1, got {shard_size}")
        from geneval.models.formats import load_model
        from geneval.preflight import check_device
        from geneval.runner import distributed
        from geneval.runner.output import check_output_file

        check_output_file(out, "--out", (".npz",))  # before loading anything
        check_device(device)
        dist = distributed.init(device)
        dev = distributed.device_for(dist, device)
        from geneval import zoo

        # The zoo's names work as in `run`: `demo` is the shipped Fashion-MNIST UNet / classifier.
        model = str(zoo.demo_model_path()) if model == "demo" else model
        classifier = str(zoo.demo_classifier_path()) if classifier == "demo" else classifier
        m = load_model(model, preset=preset, device=dev)
        clf = load_model(classifier, preset=classifier_preset, device=dev) if classifier else None
        check_models(m, cfg, clf if classifier_scale > 0 else None)
        check_classes(m, classes, clf)
        if dist.is_main:
            print(
                f"geneval sample: {m.format} {m.kind} {m.image_size}px, {cfg.sampler} {cfg.resolved_respacing()}, n={n}, seed={seed}", file=sys.stderr
            )
        record = sample_to_npz(
            m, out, cfg, classifier=clf, classes=classes, batch_size=batch_size, shard_size=shard_size, device=dev, progress=mode_progress
        )
        if not dist.is_main:
            return
        summary = {
            "out": out,
            "n": n,
            "sampler": cfg.sampler,
            "steps": cfg.steps,
            "respacing": cfg.resolved_respacing(),
            "guidance": guidance,
            "convention": convention if guidance is not None else None,
            "classifier_scale": classifier_scale,
            "seed": seed,
            "resumed_shards": record["resumed_shards"],
            "wall_s": record["wall_s"],
        }
        typer.echo(json.dumps(summary))

"""`geneval run` (checkpoint → samples → metrics, one pass) and `geneval sweep` (one run per value + plots)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from geneval import vocab
from geneval.cli import NO_PROGRESS_OPTION, PROGRESS_OPTION, progress_choice
from geneval.errors import GenevalError

_MODEL = typer.Option(
    None,
    "--model",
    "-m",
    help="Checkpoint: native folder/.safetensors, guided-diffusion .pt (with --preset) or diffusers folder. Omit to run the offline demo.",
)
_PRESET = typer.Option(None, "--preset", help="Architecture preset for guided-diffusion .pt files.")
_REF = typer.Option(
    None, "--ref", "-r", help="Reference: images, ADM reference batch or stats .npz. Default with the demo: shipped Fashion-MNIST test statistics."
)
_N = typer.Option(
    None,
    "--num-samples",
    "--n",
    "-n",
    min=1,
    help="Number of samples (default 50000; the demo without --model: 500). Under torchrun spell it --num-samples.",
)
_SAMPLER = typer.Option(None, "--sampler", help=f"Sampler: {vocab.choices_help('sampler')} (default ddim).")
_CONV = typer.Option(None, "--convention", help=f"CFG convention: {vocab.choices_help('convention')}.")
_CLF = typer.Option(None, "--classifier", help="Noisy classifier checkpoint for classifier guidance ('demo' = the shipped demo classifier).")
_CLF_SCALE = typer.Option(None, "--classifier-scale", min=0.0, help="Classifier guidance scale s (0 = off).")
_SEED = typer.Option(None, "--seed", help="Base seed: sample i uses seed + i (batch-size independent).")
_BS = typer.Option(None, "--batch-size", min=1, help="Samples per sampler/feature batch.")
_DEVICE = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu).")
_MODE = typer.Option(None, "--mode", help=f"Feature preprocessing: {vocab.choices_help('mode')}; default tf.")
_PREC = typer.Option(None, "--precision", help=f"Feature precision: {vocab.choices_help('precision')}; default exact.")
_FLAGS = typer.Option(
    None,
    "--model-flags",
    help="guided-diffusion flags for a .pt no preset covers, e.g. '--image_size 64 --num_channels 192 --num_res_blocks 3 --learn_sigma True' (their names and defaults).",
)
_MCONFIG = typer.Option(None, "--model-config", help="LDM YAML of a CompVis .ckpt (latent diffusion); `--config model.yaml` works too.")
_VAE = typer.Option(None, "--vae", help="First-stage autoencoder of a DiT checkpoint: diffusers folder (sd-vae-ft-ema), .safetensors or .ckpt.")
_CFGCH = typer.Option(
    None, "--cfg-channels", help="DiT CFG on 'official' (first 3 latent channels, DiT's sample.py) or 'all' channels (diffusers' DiTPipeline)."
)
_VQ = typer.Option(None, "--vq", help="VQ tokenizer (taming VQGAN .ckpt) decoding a VQ-Diffusion checkpoint's tokens.")
_TRUNC = typer.Option(None, "--truncation-rate", min=0.0, max=1.0, help="VQ-Diffusion truncation r in (0, 1] (default: the checkpoint's).")
_VQCFG = typer.Option(None, "--vq-config", help="VQ tokenizer shape when it cannot be inferred: preset name or taming YAML.")
_VQMAP = typer.Option(None, "--vq-token-map", help="VQ-Diffusion code -> token table (e.g. taming_vqvae_974.pt).")
_SKIP = typer.Option(None, "--skip", min=0, help="VQ-Diffusion fast sampling: skip this many steps between evaluations (default: the checkpoint's).")
_UP = typer.Option(None, "--upsampler", help="ADM super-resolution checkpoint: run the base → upsampler cascade in one stream.")
_UP_PRESET = typer.Option(None, "--upsampler-preset", help="Upsampler preset when its file name is not a known release.")
_UP_SAMPLER = typer.Option(None, "--upsampler-sampler", help="Upsampler stage sampler (default ddpm, as ADM's super_res_sample.py).")
_UP_STEPS = typer.Option(None, "--upsampler-steps", min=1, help="Upsampler stage steps (default 250).")
_CI = typer.Option(
    None,
    "--ci",
    min=0.0,
    max=1.0,
    help="Bootstrap confidence intervals for FID/PR/DC at this level (e.g. 0.95; 200 resamples seeded by --seed) in every row, report and plot.",
)
_CSRC = typer.Option(None, "--convention-source", help=f"Sampling semantics: {vocab.choices_help('convention_source')}; default model.")
_RCONV = typer.Option(
    None, "--respacing-convention", help=f"Timesteps rule: {vocab.choices_help('respacing_convention')}; default: the convention source's."
)
_FEATS = typer.Option(
    None,
    "--features",
    help="Feature networks besides TF-Inception, e.g. dinov2,clip (fd_dinov2 / fd_clip / cmmd add theirs); weights are checked before any work.",
)
_SHARD = typer.Option(
    None, "--shard-size", min=1, help="Samples per resumable shard (default 1000): a killed run restarts from its finished shards, at any world size."
)
_SAVE = typer.Option(None, "--save-samples", help="Also write the samples as an ADM .npz (arr_0 uint8 NHWC, arr_1 labels).")
_OUT = typer.Option(None, "--out-dir", help="Parent folder of the report folder (default reports).")
_CONFIG = typer.Option(None, "--config", help="TOML file with run settings (keys = the long option names with _); flags override it.")


def _resolve(config: Path | None, flags: dict[str, Any]):
    """Defaults (demo defaults for the shipped demos) ← TOML ← flags; `--config x.yaml` is an LDM model config."""
    from geneval import zoo
    from geneval.config import load_toml, resolve_run_config

    if config is not None and config.suffix.lower() in (".yaml", ".yml"):
        flags, config = {**flags, "model_config": flags.get("model_config") or str(config)}, None
    toml = load_toml(config) if config is not None else {}
    if flags.get("classifier") == "demo":
        flags["classifier"] = str(zoo.demo_classifier_path())
    model = flags.get("model") or toml.get("model")
    if model is None or model in ("demo-ldm", "demo-vqd"):
        demo = dict(zoo.DEMO_RUN_DEFAULTS)
        if model is not None:  # the latent and discrete demos keep their own samplers' step counts
            demo.pop("steps", None)
        demo = {k: v for k, v in demo.items() if flags.get(k) is None and k not in toml}
        flags = {**flags, **demo}
    return resolve_run_config(toml, **flags)


def _print_results(rs, title: str) -> None:
    from geneval.results import to_markdown

    cols = ("run_id", "metric", "value", "n", "model", "sampler", "steps", "guidance", "convention", "seed", "mode")
    sys.stdout.write(to_markdown(rs, cols))
    notes = []
    for r in rs.rows:
        for w in r.extra.get("warnings", []) or []:
            if w not in notes:
                notes.append(w)
    for w in notes:
        sys.stdout.write(f"\nnote: {w}")
    sys.stdout.write(f"\n{title}: {rs.config.get('report_dir')}\n")


def register(app: typer.Typer) -> None:
    """Add `run` and `sweep` to the app."""

    @app.command("run")
    def run_cmd(
        model: str | None = _MODEL,
        metrics: str | None = typer.Option(
            None, "--metrics", help="Comma list of metrics/groups: fid, sfid, is, kid, pr, dc (default fid; demo: fid,pr)."
        ),
        ref: str | None = _REF,
        n: int | None = _N,
        sampler: str | None = _SAMPLER,
        steps: int | None = typer.Option(None, "--steps", min=1, help="Sampling steps (default 25)."),
        guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance scale in --convention (omit: no CFG)."),
        convention: str | None = _CONV,
        classifier: str | None = _CLF,
        classifier_scale: float | None = _CLF_SCALE,
        seed: int | None = _SEED,
        batch_size: int | None = _BS,
        device: str | None = _DEVICE,
        mode: str | None = _MODE,
        precision: str | None = _PREC,
        save_samples: str | None = _SAVE,
        out_dir: str | None = _OUT,
        run_id: str | None = typer.Option(None, "--run-id", help="Report folder name (default: run-<time>-<random>)."),
        preset: str | None = _PRESET,
        config: Path | None = _CONFIG,
        progress: str | None = PROGRESS_OPTION,
        no_progress: bool = NO_PROGRESS_OPTION,
        shard_size: int | None = _SHARD,
        model_flags: str | None = _FLAGS,
        model_config: str | None = _MCONFIG,
        vae: str | None = _VAE,
        cfg_channels: str | None = _CFGCH,
        vq: str | None = _VQ,
        truncation_rate: float | None = _TRUNC,
        vq_config: str | None = _VQCFG,
        vq_token_map: str | None = _VQMAP,
        skip: int | None = _SKIP,
        upsampler: str | None = _UP,
        upsampler_preset: str | None = _UP_PRESET,
        upsampler_sampler: str | None = _UP_SAMPLER,
        upsampler_steps: int | None = _UP_STEPS,
        ci: float | None = _CI,
        convention_source: str | None = _CSRC,
        respacing_convention: str | None = _RCONV,
        features: str | None = _FEATS,
    ) -> None:
        """Sample from a checkpoint and score the samples in one streaming pass.

        Writes reports/<run-id>/ (results.json/.csv/.md, config.json, grid.png) and prints the table.
        Without --model it runs the offline demo (trained Fashion-MNIST UNet vs the shipped
        Fashion-MNIST test statistics) at a small N that finishes in minutes on a CPU.

        Example: geneval run --model ckpt/ --metrics fid,pr --ref ref.npz --num-samples 50000 --steps 25 --guidance 1.5 --convention w

        Latent and discrete models: --model DiT-XL-2-256x256.pt --vae sd-vae-ft-ema/; --model ldm.ckpt --config model.yaml;
        --model vqdiff.pth --vq vqgan.ckpt; cascades: --model 128x128_diffusion.pt --upsampler 128_512_upsampler.pt;
        the offline demos: --model demo-ldm, --model demo-vqd.

        Many GPUs: torchrun --standalone --nproc-per-node 8 -m geneval run --model ckpt/ --num-samples 50000 ...
        """
        from geneval.pipeline import run_config
        from geneval.runner import distributed

        mode_progress = progress_choice(progress, no_progress)  # a bad value fails before anything starts
        distributed.init(device)
        cfg = _resolve(
            config,
            dict(
                model=model,
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
                preset=preset,
                progress=mode_progress,
                shard_size=shard_size,
                model_flags=model_flags,
                model_config=model_config,
                vae=vae,
                cfg_channels=cfg_channels,
                vq=vq,
                truncation_rate=truncation_rate,
                vq_config=vq_config,
                vq_token_map=vq_token_map,
                skip=skip,
                upsampler=upsampler,
                upsampler_preset=upsampler_preset,
                upsampler_sampler=upsampler_sampler,
                upsampler_steps=upsampler_steps,
                ci=ci,
                convention_source=convention_source,
                respacing_convention=respacing_convention,
                features=features,
            ),
        )
        if cfg.model is None and distributed.current().is_main:
            print(
                f"geneval run: no --model given: running the offline demo (N={cfg.n}, {cfg.sampler or 'ddim'} {cfg.steps or 25} steps)",
                file=sys.stderr,
            )
        rs = run_config(cfg)
        if rs is not None:  # rank 0 reports; the other ranks only computed
            _print_results(rs, "report")

    @app.command("sweep")
    def sweep_cmd(
        model: str | None = _MODEL,
        guidance: str | None = typer.Option(None, "--guidance", help="Comma list of CFG scales to sweep, e.g. 0,0.5,1,2,4 (in --convention)."),
        steps: str | None = typer.Option(
            None, "--steps", help="Comma list of step counts to sweep (e.g. 10,25,50), or one count when sweeping guidance."
        ),
        fixed_guidance: float | None = typer.Option(None, "--at-guidance", help="When sweeping steps: the fixed CFG scale (omit: no CFG)."),
        metrics: str | None = typer.Option(None, "--metrics", help="Comma list of metrics/groups (default fid,pr)."),
        ref: str | None = _REF,
        n: int | None = _N,
        sampler: str | None = _SAMPLER,
        convention: str | None = _CONV,
        classifier: str | None = _CLF,
        classifier_scale: float | None = _CLF_SCALE,
        seed: int | None = _SEED,
        batch_size: int | None = _BS,
        device: str | None = _DEVICE,
        mode: str | None = _MODE,
        precision: str | None = _PREC,
        out_dir: str | None = _OUT,
        sweep_id: str | None = typer.Option(None, "--sweep-id", help="Sweep folder name (default: sweep-<time>-<random>)."),
        preset: str | None = _PRESET,
        config: Path | None = _CONFIG,
        progress: str | None = PROGRESS_OPTION,
        no_progress: bool = NO_PROGRESS_OPTION,
    ) -> None:
        """Run once per guidance scale (or step count) and draw tradeoff plots (PNG + SVG).

        Writes reports/<sweep-id>/: combined results.json/.csv/.md, config.json, metrics_vs_<param>,
        fid_vs_precision (and fid_vs_is) plots, and runs/<run-id>/ per point.

        Example: geneval sweep --model ckpt/ --guidance 0,0.5,1,2,4 --convention w --metrics fid,pr --n 10000
        """
        from geneval.runner import distributed
        from geneval.sweep import parse_values, sweep

        mode_progress = progress_choice(progress, no_progress)
        distributed.init(device)
        if guidance is not None and steps is not None and "," in steps:
            raise GenevalError("sweep one parameter at a time: give a list to --guidance or to --steps, not both")
        if guidance is not None:
            param, values = "guidance", parse_values(guidance, "guidance")
            fixed = {"steps": int(parse_values(steps, "steps")[0]) if steps else None, "guidance": None}
        elif steps is not None:
            param, values = "steps", parse_values(steps, "steps")
            fixed = {"steps": None, "guidance": fixed_guidance}
        else:
            raise GenevalError("nothing to sweep: pass --guidance 0,0.5,1,2,4 or --steps 10,25,50")
        base = _resolve(
            config,
            dict(
                model=model,
                metrics=metrics or "fid,pr",
                ref=ref,
                n=n,
                sampler=sampler,
                convention=convention,
                classifier=classifier,
                classifier_scale=classifier_scale,
                seed=seed,
                batch_size=batch_size,
                device=device,
                mode=mode,
                precision=precision,
                out_dir=out_dir,
                preset=preset,
                progress=mode_progress,
                **fixed,
            ),
        )
        rs = sweep(base, param, values, sweep_id=sweep_id)
        if distributed.current().is_main:
            _print_results(rs, "sweep report")

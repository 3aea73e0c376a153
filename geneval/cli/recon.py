"""`geneval recon`: reconstruction quality of an autoencoder (PSNR, SSIM, LPIPS, rFID, latents, codebook)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer

from geneval.cli import NO_PROGRESS_OPTION, PROGRESS_OPTION, progress_choice
from geneval.errors import GenevalError

EXAMPLES = """
Examples:
  geneval recon                                   # shipped KL demo on fashion-mnist:test, N=500
  geneval recon --ae demo-vq                      # the VQ demo: adds codebook usage
  geneval recon --ae demo-vq --rq-depth 4         # residual quantisation: usage and error per depth
  geneval recon --ae sd-vae.safetensors --data imgs/ --metrics psnr,ssim,lpips,rfid --n 1000
  geneval recon --ae ldm.ckpt --ae-config ldm.yaml --out reports/recon-ldm/
  geneval recon --data originals.npz --reconstructions recons.npz --metrics psnr,ssim
"""


def _display(row) -> str:
    v = row.value
    if isinstance(v, float) and math.isinf(v):
        return "inf (identical)" if row.metric == "psnr" else str(v)
    return f"{v:.6g}"


def render_table(rs) -> str:
    """The stdout table: metric, value, std, n, direction and the row's note."""
    lines = ["| metric | value | std | n | better | note |", "|---|---|---|---|---|---|"]
    for r in rs.rows:
        std = "" if r.std is None or (isinstance(r.std, float) and math.isnan(r.std)) else f"{r.std:.4g}"
        better = {True: "higher", False: "lower", None: ""}[r.higher_is_better]
        lines.append(f"| {r.metric} | {_display(r)} | {std} | {r.n} | {better} | {r.extra.get('note', '')} |")
    return "\n".join(lines) + "\n"


def write_outputs(rs, out: Path) -> list[Path]:
    """`out` with a .json/.csv/.md suffix: that file; otherwise a folder with all three."""
    from geneval.results import write_results

    if out.suffix.lower() in (".json", ".csv", ".md"):
        return [write_results(rs, out)]
    return [write_results(rs, out / f"results{ext}") for ext in (".json", ".csv", ".md")]


def register(app: typer.Typer) -> None:
    """Add `geneval recon`."""

    @app.command("recon", epilog=EXAMPLES)
    def recon_cmd(
        ae: str | None = typer.Option(
            None,
            "--ae",
            help="Autoencoder: demo (default; the shipped KL demo), demo-vq, "
            "a native folder, an LDM .ckpt, a standalone / SD VAE file, or a diffusers folder.",
        ),
        ae_config: str | None = typer.Option(
            None,
            "--ae-config",
            help="Shape for LDM files: preset (sd-vae, kl-f4, "
            "kl-f8, kl-f16, kl-f32, vq-f4, vq-f8, vq-f16), LDM YAML or JSON; "
            "default: read off the tensor shapes.",
        ),
        data: str = typer.Option("fashion-mnist:test", "--data", help="Originals: dataset name, folder, zip, npz or npy."),
        reconstructions: str | None = typer.Option(
            None, "--reconstructions", help="Score these stored reconstructions (same order and size as --data) instead of running an autoencoder."
        ),
        metrics: str | None = typer.Option(
            None,
            "--metrics",
            help="Comma list from psnr, ssim, lpips, rfid, rsfid, "
            "latent (latent_scale, latent_std, latent_mean), codebook (VQ). Default: "
            "psnr,ssim,rfid,latent[,codebook] — all offline; rq (per-depth rows) comes with --rq-depth.",
        ),
        n: int = typer.Option(500, "--num-samples", "--n", min=0, help="Images to use (0: all). rFID at small N is biased upward."),
        batch_size: int = typer.Option(50, "--batch-size", min=1, help="Images per batch."),
        device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available, else cpu)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the KL posterior sample behind the latent statistics."),
        lpips_net: str = typer.Option("alex", "--lpips-net", help="LPIPS backbone: alex, vgg or squeeze."),
        lpips_weights: Path | None = typer.Option(
            None, "--lpips-weights", help="torchvision backbone file for LPIPS (default: torch hub cache, then geneval's cache)."
        ),
        mode: str = typer.Option("tf", "--mode", help="TF-Inception preprocessing for rFID: tf, pytorch, clean."),
        inception_weights: Path | None = typer.Option(None, "--inception-weights", help="TF-Inception weight file."),
        out: Path | None = typer.Option(None, "--out", help="Write results: a folder (results.json/.csv/.md) or one file by suffix."),
        rq_depth: int | None = typer.Option(
            None,
            "--rq-depth",
            help="Residual quantisation check (RQ-VAE): D codes per latent position from one shared codebook; "
            "reports usage, perplexity, dead codes and the error after each depth (rows rq_psnr_d1 …).",
        ),
        rq_codes: int | None = typer.Option(None, "--rq-codes", help="Codes K of the residual codebook (default: the VQ codebook size, 256 for KL)."),
        rq_fit: int = typer.Option(
            256, "--rq-fit", help="Fit the residual codebook by k-means on the latents of the first N images of --data (in-sample, seeded)."
        ),
        rq_per_depth: bool = typer.Option(
            False, "--rq-per-depth", help="Fit one residual codebook per depth instead of RQ-VAE's one shared codebook."
        ),
        rq_codebooks: str | None = typer.Option(
            None, "--rq-codebooks", help="Trained residual codebooks instead of fitting: safetensors with 'codebooks' (1 or D, K, C)."
        ),
        progress: str | None = PROGRESS_OPTION,
        no_progress: bool = NO_PROGRESS_OPTION,
    ) -> None:
        """Reconstruct a data set with an autoencoder and score the reconstructions."""
        from geneval.recon import recon

        if lpips_net not in ("alex", "vgg", "squeeze"):
            raise GenevalError(f"unknown --lpips-net {lpips_net!r}: use alex, vgg or squeeze")
        if out is not None:  # an --out that cannot be written fails before any image is read
            from geneval.runner.output import check_output_file, check_writable

            if out.suffix.lower() in (".json", ".csv", ".md"):
                check_output_file(out, "--out")
            else:
                check_writable(out, "--out folder")
        rs = recon(
            ae=ae,
            data=data,
            metrics=metrics,
            n=n or None,
            batch_size=batch_size,
            device=device,
            seed=seed,
            lpips_net=lpips_net,
            lpips_weights=str(lpips_weights) if lpips_weights else None,
            ae_config=ae_config,
            reconstructions=reconstructions,
            mode=mode,
            inception_weights=str(inception_weights) if inception_weights else None,
            progress=progress_choice(progress, no_progress) or "auto",
            rq_depth=rq_depth,
            rq_codes=rq_codes,
            rq_fit=rq_fit,
            rq_codebooks=rq_codebooks,
            rq_per_depth=rq_per_depth,
        )
        cfg = rs.config
        who = cfg.get("ae") or f"stored reconstructions {cfg.get('reconstructions')}"
        print(f"recon: {who} on {cfg['data']}: read {cfg['n_read']} images", file=sys.stderr)
        typer.echo(render_table(rs), nl=False)
        if out is not None:
            for p in write_outputs(rs, out):
                print(f"wrote {p}", file=sys.stderr)

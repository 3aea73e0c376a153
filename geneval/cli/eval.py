"""`geneval eval` and `geneval ref build`: score image sets, build reference batches.

Stdout gets the results table (metric, value, ± std, n); stderr gets read counts, rejections,
warnings and progress bars. Every number with its provenance goes to --out (.json/.csv/.md),
written only when everything succeeded (atomically).
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import typer

from geneval import vocab
from geneval.cli import NO_PROGRESS_OPTION, PROGRESS_OPTION, progress_choice
from geneval.errors import GenevalError

_EVAL_HELP = """Score SAMPLES against --ref with TF-Inception metrics (ADM conventions by default).

SAMPLES and --ref take an image folder (recursive), a .zip of images, an ADM sample .npz
(arr_0), a .npy array, or a dataset name (fashion-mnist:test, fashion-mnist:test[0:1000], digits).
--ref also takes an ADM reference batch (arr_0 + mu/sigma/mu_s/sigma_s) or a stats .npz
(mu/sigma: FID only). Metrics: fid, sfid, is, kid, pr (= precision, recall), dc (= density,
coverage). IS needs weights with the logits layer (`geneval weights fetch pytorch-fid`).

Example: geneval eval samples.npz --ref VIRTUAL_imagenet256_labeled.npz --metrics fid,sfid,pr --out results.json"""

_REF_HELP = """Build an ADM-format reference batch from SOURCE's images.

Writes arr_0 (uint8 RGB images; --no-images leaves them out), mu/sigma (pool3) and mu_s/sigma_s
(spatial) in float64, geneval_pool3 (float32 pool3 features, so KID/PR/DC need no re-extraction;
--no-features leaves them out) and geneval_meta (mode, weights sha256, N, source). ADM's
evaluator and pytorch-fid can read it. --stats-only writes the pytorch-fid layout (mu, sigma).

Example: geneval ref build fashion-mnist:test --out reference_stats/fmnist_test.npz"""


# Extraction options shared by `eval` and `ref build` (one definition, one help text).
_MODE = typer.Option("tf", "--mode", help=f"Resize: {vocab.choices_help('mode')}; recorded with the results.")
_DEVICE = typer.Option(None, "--device", help="Torch device, e.g. cuda:0 or cpu (default: CUDA if available).")
_PRECISION = typer.Option("exact", "--precision", help=f"{vocab.choices_help('precision')}.")
_SHARD = typer.Option(1000, "--shard-size", min=1, help="Images per resumable shard of the feature cache.")
_BATCH = typer.Option(64, "--batch-size", min=1, help="Images per batch.")
_WEIGHTS = typer.Option(None, "--weights", help="TF-Inception weight file (IS needs one with logits).")
_FLOAT_RANGE = typer.Option(None, "--float-range", help="Accept float .npy/.npz pixels in '0,1' or '-1,1'.")
_NO_CACHE = typer.Option(False, "--no-cache", help="Neither read nor write the feature cache.")
_QUIET = typer.Option(False, "--quiet", "-q", help="No read counts on stderr, and no progress (implies --progress never).")


class _StderrHandler(logging.Handler):
    """geneval's log lines on stderr, without logger names (they are for users)."""

    def emit(self, record: logging.LogRecord) -> None:
        prefix = "warning: " if record.levelno >= logging.WARNING else ""
        print(prefix + record.getMessage(), file=sys.stderr)


@contextlib.contextmanager
def user_messages(quiet: bool = False) -> Iterator[None]:
    """Route geneval's logging and Python warnings to stderr as plain lines, for one command."""
    logger = logging.getLogger("geneval")
    handler = _StderrHandler(logging.WARNING if quiet else logging.INFO)
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, *a, **k: print(f"warning: {message}", file=sys.stderr)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.propagate = old_propagate


def format_table(rs) -> str:
    """metric / value / ± std / n, aligned; numbers with 6 significant digits."""

    def num(x) -> str:
        if x is None:
            return ""
        return str(x) if not math.isfinite(x) else f"{x:.6g}"

    cells = [("metric", "value", "± std", "n")]
    cells += [(r.metric, num(r.value), "" if r.std is None else "± " + num(r.std), "" if r.n is None else str(r.n)) for r in rs.rows]
    widths = [max(len(c[i]) for c in cells) for i in range(4)]
    lines = ["  ".join(c[i].ljust(widths[i]) if i == 0 else c[i].rjust(widths[i]) for i in range(4)).rstrip() for c in cells]
    return "\n".join(lines)


def _check_out(out: Path | None, suffixes: tuple[str, ...]) -> None:
    """Refuse a bad --out before any work, so a typo costs nothing."""
    if out is None:
        return
    from geneval.runner.output import check_output_file

    if out.suffix.lower() not in suffixes:
        raise GenevalError(f"--out {out}: unknown format {out.suffix or '(none)'}; use {', '.join(suffixes)}")
    check_output_file(out, "--out")  # a folder, an unwritable folder, a parent that is a file: now, not after the work


def register(app: typer.Typer) -> None:
    """Add `eval` and the `ref` group (`ref build`)."""

    @app.command("eval", help=_EVAL_HELP)
    def eval_cmd(
        samples: str = typer.Argument(..., help="Generated images: folder, .zip, .npz, .npy or dataset name."),
        ref: str | None = typer.Option(None, "--ref", help="Reference: images, ADM reference batch or stats .npz."),
        metrics: str = typer.Option("fid", "--metrics", "-m", help="Comma list: fid,sfid,is,kid,pr,dc (pr/dc expand to pairs)."),
        mode: str = _MODE,
        device: str | None = _DEVICE,
        precision: str = _PRECISION,
        batch_size: int = _BATCH,
        weights: str | None = _WEIGHTS,
        no_cache: bool = _NO_CACHE,
        seed: int = typer.Option(2020, "--seed", help="Seed of KID subsets and the torch-fidelity IS shuffle (2020 = torch-fidelity's)."),
        is_convention: str = typer.Option("adm", "--is-convention", help=f"{vocab.choices_help('is_convention')}."),
        kid_subsets: int = typer.Option(100, "--kid-subsets", min=1, help="Number of KID subsets."),
        kid_subset_size: int | None = typer.Option(None, "--kid-subset-size", min=2, help="Rows per KID subset (default min(1000, N))."),
        float_range: str | None = _FLOAT_RANGE,
        model: str | None = typer.Option(None, "--model-name", help="Model name recorded in the results."),
        out: Path | None = typer.Option(None, "--out", "-o", help="Write all rows with provenance: .json, .csv or .md."),
        quiet: bool = _QUIET,
        progress: str | None = PROGRESS_OPTION,
        no_progress: bool = NO_PROGRESS_OPTION,
        shard_size: int = _SHARD,
        features: str | None = typer.Option(
            None, "--features", help="Feature networks besides TF-Inception, e.g. dinov2,clip (fd_dinov2 / fd_clip / cmmd add theirs)."
        ),
        ci: float | None = typer.Option(
            None,
            "--ci",
            min=0.0,
            max=1.0,
            help="Bootstrap confidence intervals for FID/PR/DC at this level (e.g. 0.95; 200 resamples seeded by --seed).",
        ),
    ) -> None:
        from geneval.evaluation import evaluate
        from geneval.results import write_results
        from geneval.runner import distributed
        from geneval.sources import open_source

        mode_progress = progress_choice(progress, no_progress, quiet) or "auto"
        distributed.init(device)
        _check_out(out, (".json", ".csv", ".md"))
        with user_messages(quiet or not distributed.current().is_main):
            sample_src = open_source(samples, float_range=float_range)
            ref_src = None if ref is None else open_source(ref, float_range=float_range)
            rs = evaluate(
                sample_src,
                ref_src,
                metrics=metrics,
                mode=mode,
                device=device,
                precision=precision,
                batch_size=batch_size,
                weights=weights,
                cache=not no_cache,
                seed=seed,
                is_convention=is_convention,
                kid_subsets=kid_subsets,
                kid_subset_size=kid_subset_size,
                progress=mode_progress,
                model=model,
                shard_size=shard_size,
                ci=ci,
                features=features,
            )
        if rs is None:  # not rank 0: rank 0 prints and writes
            return
        typer.echo(format_table(rs))
        if out is not None:
            write_results(rs, out)
            print(f"wrote {out}", file=sys.stderr)

    ref_app = typer.Typer(help="Reference batches: build ADM-format .npz files from image sets.", no_args_is_help=True)

    @ref_app.command("build", help=_REF_HELP)
    def ref_build_cmd(
        source: str = typer.Argument(..., help="Images: folder, .zip, .npz, .npy or dataset name."),
        out: Path = typer.Option(..., "--out", "-o", help="Output .npz (written atomically)."),
        mode: str = _MODE,
        device: str | None = _DEVICE,
        precision: str = _PRECISION,
        batch_size: int = _BATCH,
        weights: str | None = _WEIGHTS,
        with_images: bool = typer.Option(True, "--with-images/--no-images", help="Store arr_0 (uint8 RGB images)."),
        with_features: bool = typer.Option(True, "--with-features/--no-features", help="Store geneval_pool3 (float32 pool3 features)."),
        stats_only: bool = typer.Option(False, "--stats-only", help="Write only mu/sigma (+ mu_s/sigma_s): pytorch-fid layout."),
        float_range: str | None = _FLOAT_RANGE,
        no_cache: bool = _NO_CACHE,
        quiet: bool = _QUIET,
        progress: str | None = PROGRESS_OPTION,
        no_progress: bool = NO_PROGRESS_OPTION,
        shard_size: int = _SHARD,
    ) -> None:
        from geneval.reference_build import build_reference
        from geneval.runner import distributed
        from geneval.sources import open_source

        mode_progress = progress_choice(progress, no_progress, quiet) or "auto"
        distributed.init(device)
        _check_out(out, (".npz",))
        with user_messages(quiet or not distributed.current().is_main):
            meta = build_reference(
                open_source(source, float_range=float_range),
                out,
                mode=mode,
                device=device,
                precision=precision,
                batch_size=batch_size,
                weights=weights,
                with_images=with_images,
                with_features=with_features,
                stats_only=stats_only,
                cache=not no_cache,
                progress=mode_progress,
                shard_size=shard_size,
            )
        if not distributed.current().is_main:
            return
        kind = "statistics" if stats_only else "reference batch"
        typer.echo(f"wrote {kind} {out}: N={meta['n']}, mode={meta['mode']}, weights sha256 {meta['weights_sha256'][:16]}…")

    app.add_typer(ref_app, name="ref")

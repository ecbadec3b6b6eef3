"""`cxrbench predict` (placeholder until its issue lands)."""

import typer


def register(app: typer.Typer) -> None:
    """Add the command to app."""

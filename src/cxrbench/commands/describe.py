"""`cxrbench describe`: counts per split, view and finding of an index or a cache."""

from __future__ import annotations

from pathlib import Path

import typer

_HELP = (
    "Summarize an index (.parquet) or a cache directory: images and patients per split, views, and per "
    "finding the positives, negatives, unknown labels and prevalence (overall and per split).\n\n"
    "The index report beside the file (dropped rows, unknown PadChest terms, policies, split method) is "
    "shown too; --json prints everything as JSON."
)


def register(app: typer.Typer) -> None:
    """Add `describe` to the app."""

    @app.command("describe", help=_HELP)
    def describe(
        path: Path = typer.Argument(..., help="An index .parquet file or a cache directory."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    ) -> None:
        from cxrbench.index.describe import format_summary, load, summarize, to_json

        df, findings, ctx = load(path)
        if isinstance(ctx.get("manifest"), dict):  # a cache: what its manifest says, resampler included
            from cxrbench.cache.read import describe_manifest

            ctx["notes"] = describe_manifest(ctx["manifest"], str(path))
        summary = summarize(df, findings, ctx)
        typer.echo(to_json(summary) if as_json else format_summary(summary))

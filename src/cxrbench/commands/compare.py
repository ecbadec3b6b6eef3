"""`cxrbench compare`: paired bootstrap and DeLong tests between runs, Benjamini-Hochberg FDR."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import typer

from cxrbench.commands._help import fold_paragraphs
from cxrbench.common.errors import InputError

HELP = """Compare the AUROCs of two or more runs evaluated on the same images.

Needs only each run's eval/SPLIT/predictions.parquet (Contract 4; a .parquet path works too), so
predictions from any tool can be compared. For each finding and for the macro mean: AUROC of A and
B, the difference A - B with its paired-bootstrap percentile CI and p-value, DeLong's test for
correlated AUROCs, and Benjamini-Hochberg adjusted p-values across the findings of a comparison.

Resamples are those of `cxrbench evaluate` (seed, count and cluster stored in each metrics.json,
or --seed/--bootstrap/--cluster). Pairs: every pair in the given order, or each run against
--reference. --alternative greater tests "A better than B" one-sided (the reference study's share
of resamples where A <= B).
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("compare", help=fold_paragraphs(HELP))
    def compare_cmd(
        runs: list[Path] = typer.Argument(...,
                                          help="Two or more run folders (or predictions .parquet files)."),
        split: str = typer.Option("test", "--split", help="Which eval/SPLIT to compare."),
        reference: str | None = typer.Option(None, "--reference",
                                             help="Compare each run against this one (a run path or name)."),
        alternative: str = typer.Option("two-sided", "--alternative",
                                        help="two-sided or greater (H1: A > B)."),
        family: str = typer.Option("pair", "--family",
                                   help="BH family: pair (the findings of one comparison) or all "
                                        "(every pair)."),
        out: Path | None = typer.Option(None, "--out", help="Write the table as CSV (.csv) or JSON (.json)."),
        seed: int | None = typer.Option(None, "--seed", help="Bootstrap seed (default: the one stored)."),
        n_bootstrap: int | None = typer.Option(None, "--bootstrap", min=1,
                                               help="Resamples (default: the count stored, else 1000)."),
        cluster: str | None = typer.Option(None, "--cluster",
                                           help="image or patient (default: the one stored)."),
        finding: list[str] | None = typer.Option(None, "--finding",
                                                 help="Restrict to these findings; repeatable."),
        ci: float = typer.Option(0.95, "--ci", min=0.5, max=0.999, help="Confidence level of the intervals."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No table on stdout."),
    ) -> None:
        from cxrbench.evaluate.compare import (
            compare_predictions,
            load_run_predictions,
            resample_settings,
            run_names,
            write_comparison,
        )

        if out is not None and out.suffix.lower() not in (".csv", ".json"):
            raise InputError(f"--out {str(out)!r} has an unknown extension", where="--out",
                             fix="use a .csv or .json file name")
        if out is not None:
            from cxrbench.common.fileio import check_writable

            check_writable(out)
        names = run_names(runs)
        ref_name = _reference_name(reference, runs, names)
        preds, stored = load_run_predictions(runs, split)
        settings = resample_settings(stored, seed=seed, n_resamples=n_bootstrap, cluster=cluster)
        table = compare_predictions(preds, ref_name, findings=finding or None, alternative=alternative,
                                    family=family, ci_level=ci, **settings)
        if out is not None:
            write_comparison(table, out, runs=dict(zip(names, map(str, runs), strict=True)))
        if not quiet:
            print_comparison(table)
            if out is not None:
                typer.echo(f"wrote {out}")


def _reference_name(reference: str | None, runs: list[Path], names: list[str]) -> str | None:
    if reference is None:
        return None
    if reference in names:
        return reference
    resolved = Path(reference).resolve()
    for run, name in zip(runs, names, strict=True):
        if Path(run).resolve() == resolved:
            return name
    raise InputError(f"--reference {reference!r} is not one of the compared runs", where="--reference",
                     fix=f"use one of {', '.join(names)}")


def _p(p: float, n_used: float) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    if p == 0 and n_used and not math.isnan(n_used):
        return f"<{1 / n_used:.2g}"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3f}"


def _num(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def print_comparison(table) -> None:
    """One rich table per pair: finding, AUROC A and B, difference [CI], p bootstrap, DeLong, adjusted."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    attrs = table.attrs
    boot = attrs.get("bootstrap", {})
    for (a, b), rows in table.groupby(["model_a", "model_b"], sort=False):
        t = Table(title=escape(f"A = {a}  vs  B = {b}"),
                  caption=f"{boot.get('n_resamples')} paired {boot.get('cluster')} resamples "
                          f"(seed {boot.get('seed')}), {attrs.get('alternative')}; "
                          f"BH family: {attrs.get('family')}")
        for col in ("finding", "AUROC A", "AUROC B", "diff [CI]", "p bootstrap", "p DeLong", "p adjusted"):
            t.add_column(col, justify="left" if col == "finding" else "right", no_wrap=True)
        for r in rows.itertuples(index=False):
            if isinstance(r.auroc_a, float) and math.isnan(r.auroc_a):
                t.add_row(escape(r.finding), "-", "-", escape(r.note or "-"), "-", "-", "-")
                continue
            diff = f"{r.diff:+.3f} [{r.diff_lo:+.3f}, {r.diff_hi:+.3f}]"
            t.add_row(escape(r.finding), _num(r.auroc_a), _num(r.auroc_b), escape(diff),
                      _p(r.p_bootstrap, r.n_resamples_used), _p(r.p_delong, 0),
                      _p(r.p_adjusted, r.n_resamples_used),
                      style="bold" if r.finding == "mean" else None)
        console.print(t)

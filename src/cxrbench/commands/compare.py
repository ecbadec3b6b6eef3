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

Several seeds: --arm NAME=RUN1,RUN2,... (repeatable) makes one arm of the runs of one init trained
with different seeds; --out FILE.json then also holds every arm's metrics pooled over its seeds, the
format of a study's pooled.json. An arm's AUROC is the mean over its seeds, its CI and the paired
test come from a two-level bootstrap (the image resamples shared by every arm, seeds drawn with
replacement per arm), and the seed-to-seed SD is shown beside it; DeLong needs one seed per side.
Plain RUN arguments are one-seed arms named as before; they come first, then the arms in the order
given.

  cxrbench compare --arm dino=runs/d0,runs/d1,runs/d2 --arm in21k=runs/i0,runs/i1 --reference in21k
"""


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("compare", help=fold_paragraphs(HELP))
    def compare_cmd(
        runs: list[Path] | None = typer.Argument(None, help="Run folders (or predictions .parquet files); "
                                                 "with --arm, each is a one-seed arm."),
        arm: list[str] | None = typer.Option(None, "--arm", help="An arm of several seeds: "
                                             "NAME=RUN1,RUN2,... (repeatable)."),
        split: str = typer.Option("test", "--split", help="Which eval/SPLIT to compare."),
        reference: str | None = typer.Option(None, "--reference",
                                             help="Compare each run against this one (a run path or name, "
                                                  "or an arm name)."),
        alternative: str = typer.Option("two-sided", "--alternative",
                                        help="two-sided or greater (H1: A > B)."),
        family: str = typer.Option("pair", "--family",
                                   help="BH family: pair (the findings of one comparison) or all "
                                        "(every pair)."),
        fdr: str = typer.Option("bh", "--fdr", help="Multiplicity correction of the per-finding p-values: bh "
                                "(Benjamini-Hochberg within each family) or none."),
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
        runs = list(runs or [])
        names = run_names(runs) if runs else []
        arms = parse_arms(arm or [], names)
        ref_name = _reference_name(reference, runs, names, list(arms))
        metrics = None
        if arms:
            from cxrbench.evaluate.pooled import load_arm_predictions, pooled_comparison

            groups = {**{name: [run] for name, run in zip(names, runs, strict=True)}, **arms}
            frames, stored, paths = load_arm_predictions(groups, split)
            settings = resample_settings(stored, seed=seed, n_resamples=n_bootstrap, cluster=cluster)
            metrics, table = pooled_comparison(frames, ref_name, findings=finding or None,
                                               alternative=alternative, family=family, ci_level=ci, fdr=fdr,
                                               **settings)
            if table is None:
                raise InputError(f"need at least two arms to compare, got {len(frames)}", where="compare",
                                 fix="give two or more runs or arms")
            context = {"arms": {name: [str(r) for r in members] for name, members in groups.items()}}
        else:
            if len(runs) < 2:
                raise InputError(f"need at least two runs to compare, got {len(runs)}", where="compare",
                                 fix="give two or more runs, or arms with --arm NAME=RUN1,RUN2")
            preds, stored = load_run_predictions(runs, split)
            settings = resample_settings(stored, seed=seed, n_resamples=n_bootstrap, cluster=cluster)
            table = compare_predictions(preds, ref_name, findings=finding or None, alternative=alternative,
                                        family=family, ci_level=ci, fdr=fdr, **settings)
            paths, context = dict(zip(names, map(str, runs), strict=True)), None
        if out is not None:
            write_comparison(table, out, runs=paths, context=context, metrics=metrics)
        if not quiet:
            print_comparison(table)
            if out is not None:
                typer.echo(f"wrote {out}")


def parse_arms(specs: list[str], run_names: list[str]) -> dict[str, list[Path]]:
    """``--arm NAME=RUN1,RUN2,...`` values -> {name: [runs]}; names unique and not a plain run's name."""
    arms: dict[str, list[Path]] = {}
    for spec in specs:
        name, eq, members = spec.partition("=")
        name = name.strip()
        fix = "write the arm's name, '=', then its runs separated by commas: --arm dinov2=runs/d0,runs/d1"
        if not eq or not name:
            raise InputError("expected NAME=RUN1,RUN2 (runs separated by commas)", where=f"--arm {spec}",
                             fix=fix)
        parts = [m.strip() for m in members.split(",")]
        if not members.strip():
            raise InputError(f"arm {name!r} has no runs", where=f"--arm {spec}", fix=fix)
        if any(not m for m in parts):
            raise InputError(f"arm {name!r} has an empty run name in {members!r}", where=f"--arm {spec}",
                             fix=fix)
        if name in arms or name in run_names:
            raise InputError(f"arm name {name!r} is used twice", where=f"--arm {spec}",
                             fix="give every arm (and plain run) its own name")
        arms[name] = [Path(m) for m in parts]
    return arms


def _reference_name(reference: str | None, runs: list[Path], names: list[str],
                    arms: list[str] | None = None) -> str | None:
    if reference is None:
        return None
    if reference in names or reference in (arms or []):
        return reference
    resolved = Path(reference).resolve()
    for run, name in zip(runs, names, strict=True):
        if Path(run).resolve() == resolved:
            return name
    raise InputError(f"--reference {reference!r} is not one of the compared runs", where="--reference",
                     fix=f"use one of {', '.join(names + list(arms or []))}")


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
        seeds = _seeds(rows)
        title = f"A = {a}  vs  B = {b}"
        caption = (f"{boot.get('n_resamples')} paired {boot.get('cluster')} resamples "
                   f"(seed {boot.get('seed')}), {attrs.get('alternative')}; BH family: {attrs.get('family')}")
        cols = ["finding", "AUROC A", "AUROC B", "diff [CI]", "p bootstrap", "p DeLong", "p adjusted"]
        if seeds:
            title = f"A = {a} ({_n(seeds[0])})  vs  B = {b} ({_n(seeds[1])})"
            caption += ("; AUROC = mean over seeds, CI and p from a two-level bootstrap "
                        "(images shared, seeds drawn per arm)")
            cols[3:3] = ["seed SD A", "seed SD B"]
        t = Table(title=escape(title), caption=caption)
        for col in cols:
            t.add_column(col, justify="left" if col == "finding" else "right", no_wrap=True)
        for r in rows.itertuples(index=False):
            if isinstance(r.auroc_a, float) and math.isnan(r.auroc_a):
                t.add_row(escape(r.finding), "-", "-", *(["-", "-"] if seeds else []), escape(r.note or "-"),
                          "-", "-", "-")
                continue
            diff = f"{r.diff:+.3f} [{r.diff_lo:+.3f}, {r.diff_hi:+.3f}]"
            sds = [_num(r.seed_sd_a, 4), _num(r.seed_sd_b, 4)] if seeds else []
            t.add_row(escape(r.finding), _num(r.auroc_a), _num(r.auroc_b), *sds, escape(diff),
                      _p(r.p_bootstrap, r.n_resamples_used), _p(r.p_delong, 0),
                      _p(r.p_adjusted, r.n_resamples_used),
                      style="bold" if r.finding == "mean" else None)
        console.print(t)


def _seeds(rows) -> tuple[int, int] | None:
    """(seeds of A, seeds of B) for a table of arms where a side has several seeds, else None."""
    if "n_seeds_a" not in rows.columns:
        return None
    na, nb = int(rows["n_seeds_a"].max()), int(rows["n_seeds_b"].max())
    return (na, nb) if max(na, nb) > 1 else None


def _n(seeds: int) -> str:
    return f"{seeds} seed" + ("s" if seeds != 1 else "")

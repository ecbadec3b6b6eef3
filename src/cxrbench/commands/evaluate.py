"""`cxrbench evaluate`: predictions + per-finding metrics with bootstrap CIs for one run and split."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path

import typer

from cxrbench.commands._help import fold_paragraphs
from cxrbench.common.errors import InputError

HELP = """Evaluate a trained run on one split: write RUN/eval/SPLIT/predictions.parquet and metrics.json.

Predictions are made with the run's best weights when the file is missing or older than the
weights (or with --repredict); predictions written by another tool in Contract-4 format are used
as they are. Metrics per finding (unknown labels masked): AUROC, average precision, and at a
decision threshold accuracy, sensitivity, specificity, PPV, NPV, F1 and balanced accuracy; each
with a bootstrap percentile CI and mean +- std over the resamples, plus the macro average.

Thresholds: Youden's J chosen on the validation split (default), or --threshold-from test to
reproduce the reference study (chosen on each test resample; labelled as such in every output),
or fixed values: --threshold 0.5 and/or --threshold cardiomegaly=0.3.

Resamples are a function of (--seed, --bootstrap, --cluster, the images): every run evaluated on
the same images gets the same resamples, so `cxrbench compare` can pair them. The default unit is
the patient (all images of a drawn patient), as in `cxrbench study`.

An existing metrics.json computed with other settings is not replaced: evaluate with its settings,
write the new metrics elsewhere with --out-json (metrics.json is then left as it is), or pass
--overwrite.
"""


def parse_thresholds(values: list[str] | None) -> float | dict[str, float] | None:
    """``["0.5", "cardiomegaly=0.3"]`` -> ``{"*": 0.5, "cardiomegaly": 0.3}`` (None when empty)."""
    if not values:
        return None
    out: dict[str, float] = {}
    for item in values:
        name, _, value = item.rpartition("=")
        try:
            number = float(value)
        except ValueError:
            raise InputError(f"--threshold got {item!r}", where="--threshold",
                             fix="give a number (0.5) or finding=number (cardiomegaly=0.3)") from None
        if not math.isfinite(number):
            raise InputError(f"--threshold got {item!r}", where="--threshold", fix="give a finite number")
        out[name.strip() or "*"] = number
    return out


def register(app: typer.Typer) -> None:
    """Add the command to app."""

    @app.command("evaluate", help=fold_paragraphs(HELP))
    def evaluate_cmd(
        run: Path = typer.Argument(..., help="Run folder (from `cxrbench train`, or any folder holding "
                                             "eval/SPLIT/predictions.parquet)."),
        split: str = typer.Option("test", "--split", help="Split to evaluate: test, val or train."),
        n_bootstrap: int = typer.Option(1000, "--bootstrap", min=0,
                                        help="Bootstrap resamples (0 = point estimates only)."),
        seed: int = typer.Option(0, "--seed", help="Bootstrap seed (stored in metrics.json)."),
        cluster: str = typer.Option("patient", "--cluster",
                                    help="Resampling unit: patient (all images of a drawn patient) or "
                                         "image."),
        threshold_from: str | None = typer.Option(
            None, "--threshold-from",
            help="Where Youden's threshold is chosen: val (default) or test (reference-study reproduction)."),
        threshold: list[str] | None = typer.Option(
            None, "--threshold",
            help="Fixed threshold: a number for every finding, or finding=number; repeatable."),
        ci: float = typer.Option(0.95, "--ci", min=0.5, max=0.999, help="Confidence level of the intervals."),
        repredict: bool = typer.Option(False, "--repredict",
                                       help="Re-make predictions even when up to date."),
        cache: Path | None = typer.Option(None, "--cache",
                                          help="Cache to predict from (default: the run's)."),
        batch_size: int = typer.Option(64, "--batch-size", min=1, help="Inference batch size."),
        device: str | None = typer.Option(None, "--device",
                                          help="Inference device (default: cuda if available)."),
        out_json: str | None = typer.Option(None, "--out-json",
                                            help="Also write the metrics JSON to this file ('-' = stdout)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No table, only warnings and errors."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace a metrics.json computed with other settings."),
    ) -> None:
        from cxrbench.common.fileio import atomic_write_text, json_safe
        from cxrbench.evaluate.predictions import METRICS_FILE, eval_dir
        from cxrbench.evaluate.run_eval import evaluate_run

        if out_json and out_json != "-":
            from cxrbench.common.fileio import check_writable

            check_writable(out_json)  # before the evaluation writes anything
        fixed = parse_thresholds(threshold)
        predict_kwargs = {"cache_dir": cache, "batch_size": batch_size, "device": device}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_run(run, split, n_resamples=n_bootstrap, seed=seed, cluster=cluster,
                                  threshold_from=threshold_from, thresholds=fixed, ci_level=ci,
                                  repredict=repredict, predict_kwargs=predict_kwargs,
                                  on_conflict="overwrite" if overwrite
                                  else ("keep" if out_json else "refuse"))
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        written = result.pop("written", True)
        if out_json:
            text = json.dumps(json_safe(result), indent=2) + "\n"
            if out_json == "-":
                sys.stdout.write(text)
            else:
                atomic_write_text(out_json, text)
        path = eval_dir(run, split) / METRICS_FILE
        if not written:
            typer.echo(f"kept {path} (computed with other settings); the new metrics are in {out_json}",
                       err=True)
        if not quiet and out_json != "-":
            print_metrics(result)
            if written:
                typer.echo(f"wrote {path}")


def _fmt(summary: dict, digits: int = 3, ci: bool = True) -> str:
    value = summary.get("value")
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    lo, hi = summary.get("ci_low"), summary.get("ci_high")
    if ci and lo is not None and not (isinstance(lo, float) and math.isnan(lo)):
        text += f" [{lo:.{digits}f}, {hi:.{digits}f}]"
    return text


def print_metrics(result: dict) -> None:
    """A rich table of the metrics dict (one row per finding, plus the macro average)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    policy = result["threshold_policy"]
    boot = result.get("bootstrap")
    title = (f"{result.get('run', '')} [{result.get('split', '')}]: {result['n_images']} images, "
             + (f"{boot['n_resamples']} {boot['cluster']} resamples (seed {boot['seed']}), "
                f"{round(100 * result['ci']['level'])}% percentile CI" if boot else "no bootstrap"))
    table = Table(title=escape(title), caption=escape(f"threshold: {policy['description']}"))
    for col in ("finding", "n", "pos", "AUROC [CI]", "AP", "threshold", "sens", "spec", "F1"):
        table.add_column(col, justify="left" if col == "finding" else "right", no_wrap=True)
    for f, entry in result["per_finding"].items():
        m = entry["metrics"]
        if not entry["estimable"]:
            table.add_row(escape(f), str(entry["n"]), str(entry["n_positive"]),
                          f"not estimable ({entry['not_estimable_reason']})", "", "", "", "", "")
            continue
        thr = entry["threshold"]
        thr_text = "-" if thr is None else f"{thr:.3g}" if isinstance(thr, float) else str(thr)
        table.add_row(escape(f), str(entry["n"]), str(entry["n_positive"]), _fmt(m["auroc"]),
                      _fmt(m["average_precision"], ci=False), thr_text,
                      _fmt(m["sensitivity"], ci=False), _fmt(m["specificity"], ci=False),
                      _fmt(m["f1"], ci=False))
    mm = result["macro"]["metrics"]
    table.add_row("macro", "", "", _fmt(mm["auroc"]), _fmt(mm["average_precision"], ci=False), "",
                  _fmt(mm["sensitivity"], ci=False), _fmt(mm["specificity"], ci=False),
                  _fmt(mm["f1"], ci=False),
                  style="bold")
    Console(width=None if sys.stdout.isatty() else 160).print(table)

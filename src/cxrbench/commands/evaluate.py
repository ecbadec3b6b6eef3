"""`cxrbench evaluate`: predictions + per-finding metrics with bootstrap CIs for one run and split."""

from __future__ import annotations

import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import typer

from cxrbench.commands import _localization as loc
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

Subgroups (written to subgroups.json): per sex, age band, view and dataset (those the metadata
has; --subgroups to choose, --subgroup COLUMN to add any index column) AUROC, AP, sensitivity and
specificity at the same thresholds with patient-cluster bootstrap CIs, the largest gap between
subgroups with its CI and p, and underdiagnosis (the false-positive rate of no_finding among images
with a finding). Metadata is read from the run's cache (or --cache / --metadata INDEX) by image_id.

Calibration (written to calibration.json, when scores are probabilities): ECE over equal-mass bins
with its bootstrap CI, Brier score, calibration slope and intercept, reliability curves; with
--recalibrate temperature|platt|isotonic the same after a map fitted on the validation split.

External validation: --external CACHE --out DIR scores the run on SPLIT of another dataset's cache
(prepared with the run's recipe) over the findings both have, with the thresholds chosen on the
run's own validation split, and writes predictions.parquet, metrics.json and operating.json (the
source threshold against the other site's own Youden optimum) into DIR, as a study's external
validation does.

  cxrbench evaluate runs/nih-dinov2 --external cache/vindr --out external/nih-on-vindr
"""
HELP += "\n" + loc.HELP + "\n"


def parse_list(value: str | None, where: str) -> tuple[str, ...] | None:
    """``"sex, age"`` -> ``("sex", "age")``; None when not given."""
    if value is None:
        return None
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise InputError(f"{where} got an empty list", where=where, fix="e.g. sex,age,view")
    return items


def parse_edges(value: str | None) -> tuple[float, ...] | None:
    """``"40,60,80"`` -> ``(40.0, 60.0, 80.0)`` (increasing numbers)."""
    items = parse_list(value, "--age-bands")
    if items is None:
        return None
    try:
        edges = tuple(float(v) for v in items)
    except ValueError:
        raise InputError(f"--age-bands got {value!r}", where="--age-bands",
                         fix="give increasing ages in years, e.g. 40,60,80") from None
    if any(b <= a for a, b in zip(edges, edges[1:], strict=False)) or not all(map(math.isfinite, edges)):
        raise InputError(f"--age-bands got {value!r}: edges must increase", where="--age-bands",
                         fix="e.g. 40,60,80 (bands <40, 40-60, 60-80, >=80)")
    return edges


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
        subgroups: str | None = typer.Option(
            None, "--subgroups",
            help="Subgroup variables, comma-separated (default: those of sex,age,view,dataset present)."),
        subgroup: list[str] | None = typer.Option(
            None, "--subgroup", help="Add an index column as a subgroup variable (e.g. site); repeatable."),
        age_bands: str | None = typer.Option(
            None, "--age-bands", help="Age band edges in years (default 40,60,80: <40, 40-60, 60-80, >=80)."),
        min_positives: int = typer.Option(10, "--min-positives", min=0,
                                          help="Subgroups with fewer positives (or negatives) are marked "
                                               "too_few and left out of the gaps."),
        prevalence_matched: bool = typer.Option(
            False, "--prevalence-matched",
            help="Re-weight each subgroup's positives to the overall prevalence (AP, PPV, NPV comparable)."),
        metadata: Path | None = typer.Option(
            None, "--metadata", help="Cache or index .parquet holding the images' metadata (default: the "
                                     "run's cache)."),
        no_subgroups: bool = typer.Option(False, "--no-subgroups", help="Skip the subgroup analysis."),
        calibration_bins: int = typer.Option(10, "--calibration-bins", min=2,
                                             help="Equal-mass bins of the ECE and reliability curves."),
        recalibrate: str | None = typer.Option(
            None, "--recalibrate",
            help="Fit temperature, platt or isotonic on the val split; report before and after."),
        force_recalibration: bool = typer.Option(
            False, "--force-recalibration",
            help="Fit --recalibrate even where the val split has fewer than 10 positives or negatives."),
        no_calibration: bool = typer.Option(False, "--no-calibration", help="Skip the calibration analysis."),
        overwrite: bool = typer.Option(False, "--overwrite",
                                       help="Replace a metrics.json computed with other settings."),
        external: Path | None = typer.Option(None, "--external",
                                             help="External validation: score the run on this other cache "
                                                  "(needs --out)."),
        out: Path | None = typer.Option(None, "--out", help="With --external: the folder its "
                                        "predictions.parquet, metrics.json and operating.json go to."),
        localization: bool = typer.Option(False, "--localization", help=loc.OPTION_HELP["localization"]),
        saliency_method: str = typer.Option("gradcam", "--saliency-method", help=loc.OPTION_HELP["method"]),
        localization_level: list[float] | None = typer.Option(None, help=loc.OPTION_HELP["level"]),
        hit_iou: float = typer.Option(0.1, "--hit-iou", help=loc.OPTION_HELP["hit_iou"]),
        study_level: str | None = typer.Option(None, "--study-level", help=loc.OPTION_HELP["study_level"]),
    ) -> None:
        from cxrbench.evaluate.run_eval import evaluate_run

        fixed = parse_thresholds(threshold)
        loc_opts = loc.localization_options(run, localization, saliency_method, localization_level, hit_iou)
        boot = {"n_resamples": n_bootstrap, "seed": seed, "cluster": cluster, "ci_level": ci}
        if external is not None or out is not None:
            result = evaluate_external_cmd(run, external, out, split=split, threshold_from=threshold_from,
                                           thresholds=fixed, batch_size=batch_size, device=device, **boot)
            if not quiet:
                print_metrics(result)
                typer.echo(f"wrote {out}")
            loc.score_localization(run, split, loc_opts, external, out, device, quiet, boot)
            return
        if out_json and out_json != "-":
            from cxrbench.common.fileio import check_writable

            check_writable(out_json)  # before the evaluation writes anything
        predict_kwargs = {"cache_dir": cache, "batch_size": batch_size, "device": device}
        sub_opts, cal_opts = analysis_options(
            subgroups=subgroups, subgroup=subgroup, age_bands=age_bands, min_positives=min_positives,
            prevalence_matched=prevalence_matched, metadata=metadata, no_subgroups=no_subgroups,
            calibration_bins=calibration_bins, recalibrate=recalibrate, no_calibration=no_calibration,
            force_recalibration=force_recalibration)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = evaluate_run(run, split, n_resamples=n_bootstrap, seed=seed, cluster=cluster,
                                  threshold_from=threshold_from, thresholds=fixed, ci_level=ci,
                                  repredict=repredict, predict_kwargs=predict_kwargs,
                                  subgroups=sub_opts, calibration=cal_opts,
                                  on_conflict="overwrite" if overwrite
                                  else ("keep" if out_json else "refuse"), study_level=study_level)
        for w in caught:
            typer.echo(f"warning: {w.message}", err=True)
        _write_and_print(result, run, split, out_json, quiet, no_subgroups)
        # with the evaluation's bootstrap settings (its own files: also when metrics.json was kept)
        loc.score_localization(run, split, loc_opts, cache, None, device, quiet or out_json == "-", boot)


def _write_and_print(result: dict[str, Any], run: Path, split: str, out_json: str | None, quiet: bool,
                     no_subgroups: bool) -> None:
    """The evaluation's metrics to ``out_json`` ('-' = stdout) and its table and extras to the terminal."""
    from cxrbench.common.fileio import atomic_write_text, json_safe
    from cxrbench.evaluate.predictions import METRICS_FILE, eval_dir

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
            print_extras(run, split, no_subgroups)
            loc.print_study_level(run, split)


def analysis_options(*, subgroups: str | None, subgroup: list[str] | None, age_bands: str | None,
                     min_positives: int, prevalence_matched: bool, metadata: Path | None, no_subgroups: bool,
                     calibration_bins: int, recalibrate: str | None, no_calibration: bool,
                     force_recalibration: bool = False) -> tuple[Any, Any]:
    """The subgroup and calibration options of ``evaluate_run`` from the command line (False = skip)."""
    from cxrbench.evaluate.analysis import CalibrationOptions, SubgroupOptions

    variables = parse_list(subgroups, "--subgroups")
    asked = (variables is not None or bool(subgroup) or age_bands is not None or metadata is not None
             or prevalence_matched)
    sub_opts: SubgroupOptions | bool = False
    if not no_subgroups:
        sub_opts = SubgroupOptions(variables=variables, extra=tuple(subgroup or ()),
                                   age_edges=parse_edges(age_bands) or SubgroupOptions().age_edges,
                                   min_positives=min_positives, min_negatives=min_positives,
                                   prevalence_matched=prevalence_matched,
                                   metadata=str(metadata) if metadata is not None else None, required=asked)
    cal_opts: CalibrationOptions | bool = False
    if not no_calibration:
        cal_opts = CalibrationOptions(n_bins=calibration_bins, recalibrate=recalibrate,
                                      required=recalibrate is not None, force=force_recalibration)
    return sub_opts, cal_opts


def evaluate_external_cmd(run: Path, cache: Path | None, out: Path | None, **settings: Any) -> dict:
    """``evaluate RUN --external CACHE --out DIR``: external validation into DIR."""
    from cxrbench.evaluate.external import evaluate_external

    if cache is None or out is None:
        raise InputError("--external and --out go together" if cache is not None else
                         "--out is for external validation", where="--external" if cache is None else "--out",
                         fix="evaluate on another cache with --external CACHE --out DIR (the run's own "
                             "evaluation goes to RUN/eval/SPLIT)")
    if out.exists() and not out.is_dir():
        raise InputError("--out is a file, not a folder", where=str(out), fix="give a folder for the results")
    from cxrbench.common.fileio import check_writable
    from cxrbench.common.layout import METRICS_FILE

    check_writable(out / METRICS_FILE)
    source = settings.pop("threshold_from")
    if source is None and settings.get("thresholds") is None:
        source = "val"
    return evaluate_external(run, cache, out, threshold_from=source, **settings)


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


def print_extras(run: Path, split: str, no_subgroups: bool) -> None:
    """A few lines on subgroups.json and calibration.json (largest AUROC gaps, ECE per finding)."""
    from cxrbench.common.fileio import read_json
    from cxrbench.common.layout import calibration_path, subgroups_path

    sub = subgroups_path(run, split)
    if sub.is_file():
        doc = read_json(sub)
        few = sum(1 for r in doc["table"] if r["too_few"])
        gaps = sorted((g for g in doc["gaps"] if g["metric"] == "auroc" and g.get("gap") is not None),
                      key=lambda g: -g["gap"])[:3]
        text = "; ".join(f"{g['variable']} {g['gap']:.3f} on {g['finding']} ({g['high_group']} vs "
                         f"{g['low_group']}, p_bonferroni {g['p_bonferroni']:.3g})"
                         if g.get("p_bonferroni") is not None else
                         f"{g['variable']} {g['gap']:.3f} on {g['finding']}" for g in gaps)
        typer.echo(f"subgroups ({', '.join(doc['settings']['variables'])}): {few} subgroup row(s) with too "
                   f"few cases marked; largest AUROC gaps: {text or 'none'}")
        typer.echo(f"wrote {sub}")
    elif not no_subgroups:
        typer.echo("subgroups: skipped (no metadata: give --metadata INDEX.parquet or --cache CACHE)")
    path = calibration_path(run, split)
    if path.is_file():
        doc = read_json(path)
        parts = []
        for f, e in doc["per_finding"].items():
            v = e["ece"]["value"]
            after = (e.get("recalibrated") or {}).get("ece", {}).get("value")
            parts.append(f"{f} {v:.3f}" + (f" -> {after:.3f}" if after is not None else "") if v is not None
                         else f"{f} -")
        typer.echo("calibration, ECE: " + ", ".join(parts))
        typer.echo(f"wrote {path}")

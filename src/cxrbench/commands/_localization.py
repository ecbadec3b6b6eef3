"""The localization and study-level parts of `cxrbench evaluate` (--localization, --study-level): their
options, the library calls and the lines printed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import typer

HELP = """Localization (--localization, written to localization.json and localization.parquet): the
run's saliency maps (--saliency-method gradcam or rollout, from the run's own classifier; a kNN run has
none) of every image of the split with a box or mask of a predicted finding in the cache, scored
against the region per finding: pointing game (the map's maximum inside the region), energy inside the
region, IoU of the map binarized at each --localization-level and hit (that IoU at least --hit-iou),
each with a patient-bootstrap CI beside its chance level (the same map at a random position; for the
pointing game and the energy the region's share of the image). With --external the other cache's
regions are scored and the files go to --out.

Study level (--study-level max|mean, written to study_metrics.json): the image scores aggregated per
study (the index's study_id; frontal and lateral of one visit, CheXpert's test set is labelled per
study) and the same metrics at that level."""


OPTION_HELP = {
    "localization": "Score saliency maps against the cache's boxes and masks (localization.json).",
    "method": "With --localization: gradcam or rollout (ViTs).",
    "level": "With --localization: map level in (0, 1] at which IoU and hit are scored (default 0.5); "
             "repeatable.",
    "hit_iou": "With --localization: the IoU a binarized map needs to count as a hit.",
    "study_level": "Also score the image scores aggregated per study: max or mean (study_metrics.json).",
}


def localization_options(run: Path, enabled: bool, method: str, levels: list[float] | None,
                         hit_iou: float) -> Any:
    """The :class:`~cxrbench.evaluate.localization.LocalizationOptions` asked for (None when not);
    a run without a classifier to draw saliency maps of is refused before anything is computed."""
    if not enabled:
        return None
    from cxrbench.evaluate.localization import DEFAULT_LEVELS, LocalizationOptions, check_classifier
    from cxrbench.train.checkpoint import read_best_meta

    options = LocalizationOptions(method=method, levels=tuple(levels or DEFAULT_LEVELS), hit_iou=hit_iou)
    check_classifier(read_best_meta(run), str(run))
    return options


def score_localization(run: Path, split: str, options: Any, cache: Path | None, out: Path | None,
                       device: str | None, quiet: bool, boot: dict[str, Any]) -> dict[str, Any] | None:
    """``evaluate_localization`` with the evaluation's bootstrap settings (``boot``: n_resamples, seed,
    cluster, ci_level) into ``out`` (None: ``RUN/eval/SPLIT``), the summary printed; nothing when
    ``options`` is None (not asked for)."""
    if options is None:
        return None
    from cxrbench.common.layout import LOCALIZATION_FILE, eval_dir
    from cxrbench.evaluate.localization import evaluate_localization

    doc = evaluate_localization(run, split, cache_dir=cache, options=options, device=device, out_dir=out,
                                **boot)
    if not quiet:
        print_localization(doc)
        typer.echo(f"wrote {(out if out is not None else eval_dir(run, split)) / LOCALIZATION_FILE}")
    return doc


def _num(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def print_localization(doc: dict[str, Any]) -> None:
    """One line per finding and metric: value [CI] against chance, and p."""
    typer.echo(f"localization ({doc['method']}; levels {', '.join(f'{t:g}' for t in doc['levels'])}, hit at "
               f"IoU >= {doc['hit_iou']:g}):")
    for r in doc["table"]:
        typer.echo(f"  {r['finding']:<22} {r['metric']:<9} {_num(r['value'])} [{_num(r['lo'])}, "
                   f"{_num(r['hi'])}]  chance {_num(r['chance'])}  p {_num(r['p'])}  ({r['n_images']} "
                   "images)")
    cov = doc.get("coverage") or {}
    if cov.get("no_regions_in_split"):
        typer.echo(f"  no region in the split: {', '.join(cov['no_regions_in_split'])}")
    if cov.get("regions_of_unpredicted_findings"):
        typer.echo("  regions of findings the run does not predict: "
                   + ", ".join(f"{k} ({v})" for k, v in cov["regions_of_unpredicted_findings"].items()))


def print_study_level(run: Path, split: str) -> None:
    """The study-level line of study_metrics.json, when written."""
    from cxrbench.common.fileio import read_json
    from cxrbench.common.layout import STUDY_METRICS_FILE, eval_dir
    from cxrbench.evaluate.studylevel import study_summary

    path = eval_dir(run, split) / STUDY_METRICS_FILE
    if path.is_file():
        typer.echo(study_summary(read_json(path)))
        typer.echo(f"wrote {path}")

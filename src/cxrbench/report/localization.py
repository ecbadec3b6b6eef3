"""Report tables of saliency scored against the localization ground truth: per init and finding the
pointing game, the energy inside the region, IoU and hit at the stated levels, each beside its chance
level; and the paired tests between inits.

Input: :attr:`cxrbench.report.results.Analyses.localization` (summary rows of
:func:`cxrbench.evaluate.localization_stats.summarize_localization` keyed by dataset, recipe,
adaptation, seed, init) and ``.localization_tests`` (rows of ``compare_localization``).
"""

from __future__ import annotations

import pandas as pd

from cxrbench.common.validation import as_float
from cxrbench.report.subgroups import fmt_ci
from cxrbench.report.tables import Cell, Table, fmt_p

MEAN = "mean"
_LABELS = {"pointing": "pointing game", "energy": "energy inside"}


def metric_label(metric: str) -> str:
    """``pointing game``, ``energy inside``, ``IoU at 0.5``, ``hit at 0.5``."""
    if metric in _LABELS:
        return _LABELS[metric]
    kind, _, level = metric.partition("@")
    return f"{'IoU' if kind == 'iou' else kind} at {level}"


def _style(r: dict) -> str:
    lo, hi = as_float(r.get("diff_lo")), as_float(r.get("diff_hi"))
    return "sig" if lo > 0 else "sigworse" if hi < 0 else ""


def localization_table(summary: pd.DataFrame, caption: str) -> Table:
    """One row per init and finding (the mean over findings last): images, then per metric the mean
    with its CI and the chance level; green where the CI of the difference to chance lies above 0.
    ``method`` and ``hit_iou`` columns, when present, name the saliency method and the hit criterion."""
    method = str(summary["method"].iloc[0]) if "method" in summary.columns and len(summary) else "gradcam"
    hit_iou = as_float(summary["hit_iou"].iloc[0]) if "hit_iou" in summary.columns and len(summary) else None
    metrics = list(dict.fromkeys(summary["metric"]))
    header = ["init", "finding", "images"]
    for m in metrics:
        header += [metric_label(m), "chance"]
    rows = []
    for (init, finding), g in summary.groupby(["init", "finding"], sort=False):
        by_metric = {r["metric"]: r for r in g.to_dict(orient="records")}
        first = next(iter(by_metric.values()))
        row = [Cell(str(init)), Cell(str(finding).replace("_", " "), "mean" if finding == MEAN else ""),
               Cell(str(int(first["n_images"])))]
        for m in metrics:
            r = by_metric.get(m)
            if r is None:
                row += [Cell(""), Cell("")]
                continue
            diff = fmt_ci(r["diff"], r["diff_lo"], r["diff_hi"], signed=True)
            row += [Cell(fmt_ci(r["value"], r["lo"], r["hi"]), _style(r),
                         f"difference to chance {diff}, p {fmt_p(r['p'])}"),
                    Cell(f"{as_float(r['chance']):.3f}", "muted")]
        rows.append(row)
    how = "Grad-CAM" if method == "gradcam" else "attention rollout"
    notes = [
        f"{how} maps of the images with a box or mask of the finding, scored against it (several regions of "
        "one image united): pointing game = the map's maximum inside the region; energy inside = the share "
        "of the map's sum inside it; IoU at t = the map binarized at t (maps scaled to [0, 1]) against the "
        "region; hit at t = that IoU reaches "
        + (f"{hit_iou:g}" if hit_iou is not None and hit_iou == hit_iou else "the stated criterion")
        + ". Chance = the same map at a uniformly "
        "random position (for the pointing game and the energy: the region's share of the image). 95% "
        "patient-bootstrap CIs; green: the CI of the difference to chance lies above 0 (red: below)."
    ]
    return Table(caption, header, rows, notes)


def localization_tests_table(tests: pd.DataFrame, caption: str, alpha: float = 0.05) -> Table:
    """Paired differences between inits per metric (the mean over findings, or the single finding)."""
    several = tests["finding"].eq(MEAN).any()
    sel = tests[tests["finding"] == MEAN] if several else tests
    header = ["init", "versus", "finding", "metric", "difference (CI)", "p", "p (BH)"]
    rows = []
    for r in sel.to_dict(orient="records"):
        p_adj = as_float(r.get("p_adjusted"))
        style = ("sig" if as_float(r["diff"]) > 0 else "sigworse") if p_adj < alpha else ""
        rows.append([Cell(str(r["model_a"])), Cell(str(r["model_b"])),
                     Cell(str(r["finding"]).replace("_", " ")),
                     Cell(metric_label(str(r["metric"]))),
                     Cell(fmt_ci(r["diff"], r["diff_lo"], r["diff_hi"], signed=True), style),
                     Cell(fmt_p(r["p"])), Cell(fmt_p(r["p_adjusted"]) if r["finding"] != MEAN else "")])
    notes = ["Paired bootstrap over the same patient resamples of the same images; Benjamini-Hochberg over "
             "the findings of each pair and metric (the mean over findings is its own test)."]
    return Table(caption, header, rows, notes)

"""The pure evaluation: one split's predictions -> the metrics dict written to ``metrics.json``.

Per finding (unknown labels masked): AUROC and average precision, and at a decision threshold
(Youden's J on the validation split by default, the test split to reproduce the reference study,
or fixed values) the confusion-matrix metrics; each with a bootstrap percentile CI, plus the macro
average. Findings with one class are reported as not estimable (NaN plus a warning), never a crash.
Keys and formulas: docs/statistics.md.
"""


from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError, spell, warn
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.metrics_table import Metrics
from cxrbench.evaluate.predictions import PredictionSet
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt
from cxrbench.stats.significance import delong_auroc_ci

METRICS_FORMAT = "cxrbench.metrics/1"


THRESHOLD_SOURCES: tuple[str, ...] = ("val", "test", "fixed")


CURVE_METRICS: tuple[str, ...] = ("auroc", "average_precision")


THRESHOLD_DESCRIPTIONS = {
    "val": "Youden's J threshold chosen on the validation predictions, applied unchanged to the "
           "evaluated split and to every bootstrap resample",
    "test": "REFERENCE-STUDY REPRODUCTION: Youden's J threshold chosen on the evaluated split itself "
            "and re-chosen on each bootstrap resample (optimistic; not a held-out estimate)",
    "fixed": "fixed threshold(s) given by the user, applied to the evaluated split and every resample",
}


def resolve_thresholds(findings: list[str], thresholds: float | Mapping[str, float] | None,
                       where: str | None = None) -> np.ndarray:
    """Per-finding fixed thresholds from one number or a ``{finding: t}`` mapping (key ``"*"`` = default)."""
    where = where or spell("--threshold", "thresholds")
    if thresholds is None:
        return np.full(len(findings), np.nan)
    if not isinstance(thresholds, Mapping):
        thresholds = {"*": float(thresholds)}
    unknown = [k for k in thresholds if k != "*" and k not in findings]
    if unknown:
        from cxrbench.common.validation import closest

        hint = closest(unknown[0], findings)
        raise InputError(f"threshold given for unknown finding {unknown[0]!r}", where=where,
                         fix=(f"did you mean {hint!r}? " if hint else "")
                         + f"findings: {', '.join(findings)}")
    default = thresholds.get("*")
    missing = [f for f in findings if f not in thresholds and default is None]
    if missing:
        raise InputError(f"no threshold for finding(s) {', '.join(missing)}", where=where,
                         fix=spell("give a default (--threshold 0.5) besides the per-finding ones "
                                   "(--threshold name=0.3)",
                                   'give a default besides the per-finding ones: thresholds={"*": 0.5, '
                                   '"name": 0.3}'))
    values = np.array([float(thresholds[f]) if f in thresholds else float(str(default)) for f in findings])
    if not np.all(np.isfinite(values)):
        raise InputError("thresholds must be finite numbers", where=where,
                         fix=spell("e.g. --threshold 0.5", "e.g. thresholds=0.5"))
    return values


def threshold_source(threshold_from: str | None, thresholds) -> str:
    if thresholds is not None:
        if threshold_from not in (None, "fixed"):
            given = spell(f"--threshold-from {threshold_from}", f"threshold_from={threshold_from!r}")
            raise InputError(f"{given} conflicts with fixed {spell('--threshold', 'thresholds=')} values",
                             where="thresholds",
                             fix=f"give either {spell('--threshold-from', 'threshold_from=')} or "
                                 f"{spell('--threshold', 'thresholds=')}")
        return "fixed"
    source = "val" if threshold_from is None else threshold_from
    check_choice("--threshold-from", source, ("val", "test"))
    return source


def _val_thresholds(test: PredictionSet, val: PredictionSet | None) -> tuple[np.ndarray, dict[str, str]]:
    """Youden thresholds chosen on the validation set; reasons for findings without one."""
    if val is None:
        raise InputError("thresholds are chosen on the validation split, "
                         "but no validation predictions were given",
                         where=spell("--threshold-from val", "threshold_from='val'"),
                         fix="evaluate a run that has a val split, or use "
                             + spell("--threshold-from test (reference-study reproduction) or --threshold X",
                                     "threshold_from='test' (reference-study reproduction) or thresholds=X"))
    out = np.full(len(test.findings), np.nan)
    reasons: dict[str, str] = {}
    for j, f in enumerate(test.findings):
        if f not in val.findings:
            reasons[f] = "finding absent from the validation predictions"
            continue
        k = val.column(f)
        why = mt.not_estimable_reason(val.labels[:, k])
        if why:
            reasons[f] = f"validation split has {why}"
            continue
        out[j] = mt.youden_threshold(val.labels[:, k], val.scores[:, k])[0]
    return out, reasons


def evaluate_predictions(test: pd.DataFrame | PredictionSet,
                         val: pd.DataFrame | PredictionSet | None = None, *,
                         n_resamples: int = 1000, seed: int = 0, cluster: str = "patient",
                         threshold_from: str | None = None,
                         thresholds: float | Mapping[str, float] | None = None,
                         ci_level: float = 0.95, memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> Metrics:
    """Metrics of one split's predictions with bootstrap CIs, as the dict written to metrics.json.

    Args:
        test: the evaluated split's Contract-4 predictions (``image_id``, ``patient_id``,
            ``p_<finding>`` scores, ``y_<finding>`` labels 1/0/NaN = unknown), a DataFrame.
        val: the validation split's predictions, where the thresholds are chosen (Youden's J).
        n_resamples: bootstrap resamples (0: point estimates only). seed: their seed.
        cluster: the resampling unit, ``"patient"`` (default) or ``"image"``.
        threshold_from: ``"val"`` (default; Youden's J on ``val``), ``"test"`` (the reference study:
            Youden's J on the evaluated split, re-chosen on each resample; optimistic), or None.
        thresholds: fixed thresholds instead, one probability in [0, 1] or ``{finding: t}``
            (``"*"`` = the default).
        ci_level: the confidence level of the percentile intervals, in (0, 1).
        memory_bytes: bound of the bootstrap's working memory, bytes.

    Returns:
        :class:`~cxrbench.evaluate.metrics_table.Metrics`, the metrics.json dict (``per_finding``:
        AUROC, AP, sensitivity, specificity, ... with ``value``, ``ci_low``, ``ci_high``; ``macro``;
        ``bootstrap``; ``warnings``), whose ``.table()`` is the same as a tidy DataFrame. Findings
        with one class are not estimable (NaN plus an
        :class:`~cxrbench.stats.metrics.UndefinedMetricWarning` at the caller's line).

    Example::

        m = cxrbench.evaluate_predictions(test_df, val_df, n_resamples=1000)
        m["macro"]["metrics"]["auroc"]["value"], m.table().query("metric == 'auroc'")
    """
    check_choice("cluster", cluster, bs.CLUSTERS)
    if not 0.0 < ci_level < 1.0:
        raise InputError(f"CI level {ci_level} is not in (0, 1)", where="ci_level", fix="e.g. 0.95")
    if int(n_resamples) < 0:
        raise InputError(f"bootstrap count {n_resamples} is negative",
                         where=spell("--bootstrap", "n_resamples"),
                         fix="give 0 (no bootstrap) or a positive count, e.g. 1000")
    where = test.attrs.get("where") if isinstance(test, pd.DataFrame) else None  # not .where: a method
    ps = PredictionSet.from_frame(test, where=where or "test predictions")
    source = threshold_source(threshold_from, thresholds)
    reasons: dict[str, str] = {}
    if source == "fixed":
        thr = resolve_thresholds(ps.findings, thresholds)
    elif source == "val":
        vs = PredictionSet.from_frame(val, where="validation predictions") if val is not None else None
        thr, reasons = _val_thresholds(ps, vs)
    else:
        thr = np.array([mt.youden_threshold(ps.labels[:, j], ps.scores[:, j])[0]
                        if not mt.not_estimable_reason(ps.labels[:, j]) else np.nan
                        for j in range(len(ps.findings))])
    names = list(CURVE_METRICS) + list(mt.THRESHOLD_METRICS)
    points, per_finding, not_estimable, warn_list = _point_estimates(ps, thr, source, reasons, names,
                                                                     ci_level)
    boot = None
    resamples = None
    if n_resamples > 0:
        resamples = ps.resamples(int(n_resamples), int(seed), cluster)
        raw = bs.bootstrap_metrics(ps.labels, ps.scores, resamples, memory_bytes=memory_bytes,
                                   thresholds=None if source == "test" else thr, youden=source == "test")
        boot = {"auroc": raw["auroc"], "average_precision": raw["average_precision"]}
        tm = mt.threshold_metrics(raw["tp"], raw["fp"], raw["tn"], raw["fn"])
        boot.update(tm)
        if source == "test":
            boot_thr = raw["threshold"]
    estimable = [j for j, f in enumerate(ps.findings) if f not in not_estimable]
    one_class: list[str] = []
    for j, f in enumerate(ps.findings):
        entry = per_finding[f]
        entry["metrics"] = {}
        for i, name in enumerate(names):
            values = boot[name][:, j] if boot is not None else np.zeros(0)
            entry["metrics"][name] = bs.summarize(values, points[i, j], ci_level)
        if boot is not None and f not in not_estimable:
            excluded = int(np.isnan(boot["auroc"][:, j]).sum())
            entry["resamples_one_class"] = excluded
            if excluded:
                one_class.append(f"{f} {excluded}")
            if source == "test":
                finite = np.where(np.isfinite(boot_thr[:, j]), boot_thr[:, j], np.nan)
                entry["threshold_bootstrap"] = bs.summarize(finite, thr[j], ci_level)
    if one_class:  # one line for the whole evaluation, not one per finding (counts in each finding's entry)
        msg = (f"resamples with only one class, excluded for that finding (of {n_resamples}): "
               f"{', '.join(one_class)}")
        warn_list.append(msg)
        warn(msg, mt.UndefinedMetricWarning)
    # Macro average per metric over the findings where it is defined on the full split; a resample
    # where one of them is undefined is excluded (and counted) rather than averaged over fewer findings.
    macro: dict[str, Any] = {"findings": [ps.findings[j] for j in estimable], "metrics": {}}
    for i, name in enumerate(names):
        cols = [j for j in estimable if np.isfinite(points[i, j])]
        point = float(np.mean(points[i, cols])) if cols else float("nan")
        values = boot[name][:, cols].mean(axis=1) if boot is not None and cols else np.zeros(0)
        macro["metrics"][name] = {**bs.summarize(values, point, ci_level), "n_findings": len(cols)}
    return Metrics({
        "format": METRICS_FORMAT,
        "n_images": ps.n,
        "n_patients": int(np.unique(ps.patient_ids).size),
        "image_order_hash": bs.ids_hash(ps.image_ids),
        "findings": list(ps.findings),
        "threshold_policy": {"source": source, "rule": "youden" if source != "fixed" else "fixed",
                             "description": THRESHOLD_DESCRIPTIONS[source]},
        "ci": {"level": ci_level, "method": "bootstrap percentile (linear interpolation)",
               "spread": "mean and std (ddof=1) over the usable resamples"},
        "bootstrap": resamples.describe() if resamples is not None else None,
        "per_finding": per_finding,
        "macro": macro,
        "not_estimable": not_estimable,
        "warnings": warn_list,
    })


def _point_estimates(ps: PredictionSet, thr: np.ndarray, source: str, reasons: dict[str, str],
                     names: list[str], ci_level: float,
                     ) -> tuple[np.ndarray, dict[str, dict], dict[str, str], list[str]]:
    """``(points [metric, finding], per-finding entries, not estimable: finding -> why, warnings)``
    on the whole split; a finding with one class is warned about and left NaN."""
    warn_list: list[str] = []
    not_estimable: dict[str, str] = {}
    points = np.full((len(names), len(ps.findings)), np.nan)
    per_finding: dict[str, dict] = {}
    for j, f in enumerate(ps.findings):
        y, s = ps.labels[:, j], ps.scores[:, j]
        why = mt.not_estimable_reason(y)
        entry: dict[str, Any] = {**mt.class_counts(y)}
        entry["prevalence"] = entry["n_positive"] / entry["n"] if entry["n"] else float("nan")
        entry["estimable"] = why is None
        entry["not_estimable_reason"] = why
        entry["threshold"] = None if np.isnan(thr[j]) else float(thr[j])
        entry["threshold_source"] = source
        entry["threshold_note"] = reasons.get(f)
        if why:
            not_estimable[f] = why
            msg = f"{f}: not estimable ({why}); its metrics are NaN and it is left out of the macro average"
            warn_list.append(msg)
            warn(msg, mt.UndefinedMetricWarning)
        else:
            pm = mt.point_metrics(y, s, threshold=float(thr[j]))
            points[:, j] = [pm[name] for name in names]
            _, lo, hi = delong_auroc_ci(y, s, ci_level)
            entry["auroc_delong_ci"] = [lo, hi]
        per_finding[f] = entry
    return points, per_finding, not_estimable, warn_list


"""Operating points on external validation: does the source site's threshold transfer?

A model trained and thresholded at a source site (Youden's J on the source's validation split) is
applied at a target site. :func:`operating_points` puts, per finding, the sensitivity and
specificity on the target at the **source's** threshold next to those at the **target's own**
Youden optimum (chosen on the target itself: optimistic, the best this model could do there with a
re-tuned threshold), and the Youden's J lost by not re-tuning, ``J(target optimum) - J(source
threshold)`` with its paired bootstrap CI (the target optimum is re-chosen on each resample, as
``evaluate --threshold-from test`` does). Formulas: docs/statistics.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.evaluate.predictions import PredictionSet
from cxrbench.evaluate.scoring import resolve_thresholds
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt

OPERATING_COLUMNS: tuple[str, ...] = (
    "finding", "n", "n_positive", "n_negative", "source_threshold",
    "sensitivity_at_source", "sensitivity_at_source_lo", "sensitivity_at_source_hi",
    "specificity_at_source", "specificity_at_source_lo", "specificity_at_source_hi",
    "target_threshold", "sensitivity_at_target", "sensitivity_at_target_lo", "sensitivity_at_target_hi",
    "specificity_at_target", "specificity_at_target_lo", "specificity_at_target_hi",
    "youden_at_source", "youden_at_target", "youden_loss", "youden_loss_lo", "youden_loss_hi", "note",
)


def source_thresholds(source_val: pd.DataFrame | PredictionSet, findings: list[str]) -> dict[str, float]:
    """Youden thresholds of ``findings`` chosen on the source's validation predictions (NaN: none)."""
    vs = PredictionSet.from_frame(source_val, where="source validation predictions")
    out: dict[str, float] = {}
    for f in findings:
        if f not in vs.findings:
            raise InputError(f"finding {f!r} is not in the source validation predictions",
                             where="source validation predictions",
                             fix=f"the source predicts: {', '.join(vs.findings)}")
        j = vs.column(f)
        ok = mt.not_estimable_reason(vs.labels[:, j]) is None
        out[f] = mt.youden_threshold(vs.labels[:, j], vs.scores[:, j])[0] if ok else float("nan")
    return out


def operating_points(target: pd.DataFrame | PredictionSet,
                     source_val: pd.DataFrame | PredictionSet | None = None, *,
                     thresholds: float | Mapping[str, float] | None = None, n_resamples: int = 1000,
                     seed: int = 0, cluster: str = "image", ci_level: float = 0.95,
                     memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> pd.DataFrame:
    """One row per target finding (columns :data:`OPERATING_COLUMNS`).

    The source threshold comes from ``source_val`` (Youden on the source's validation predictions)
    or from ``thresholds`` (e.g. the source run's ``metrics.json`` thresholds, ``{finding: t}``).
    ``n_resamples=0``: point estimates only.
    """
    ps = PredictionSet.from_frame(target, where="target predictions")
    if (source_val is None) == (thresholds is None):
        raise InputError("give the source validation predictions or the source thresholds (one of them)",
                         where="operating_points", fix="source_val=... or thresholds={finding: t}")
    if source_val is not None:
        src = source_thresholds(source_val, ps.findings)
        thr = np.array([src[f] for f in ps.findings])
    else:
        thr = resolve_thresholds(ps.findings, thresholds, where="source thresholds")
    rows: list[dict[str, Any]] = []
    own = np.full(len(ps.findings), np.nan)
    for j, f in enumerate(ps.findings):
        y, s = ps.labels[:, j], ps.scores[:, j]
        row: dict[str, Any] = {"finding": f, **mt.class_counts(y), "source_threshold": float(thr[j])}
        row.pop("n_unknown")
        why = mt.not_estimable_reason(y)
        if why:
            row["note"] = f"not estimable on the target: {why}"
            rows.append(row)
            continue
        own[j] = mt.youden_threshold(y, s)[0]
        row["target_threshold"] = float(own[j])
        for where, t in (("source", thr[j]), ("target", own[j])):
            if np.isnan(t):
                continue
            tm = mt.threshold_metrics(*mt.confusion(y, s, float(t)))
            row[f"sensitivity_at_{where}"] = float(tm["sensitivity"])
            row[f"specificity_at_{where}"] = float(tm["specificity"])
        row["youden_at_target"] = row["sensitivity_at_target"] + row["specificity_at_target"] - 1.0
        if np.isnan(thr[j]):
            row["note"] = "no source threshold (the finding had one class on the source's validation split)"
        else:
            row["youden_at_source"] = row["sensitivity_at_source"] + row["specificity_at_source"] - 1.0
            row["youden_loss"] = row["youden_at_target"] - row["youden_at_source"]
            row["note"] = "target optimum chosen on the target itself (optimistic)"
        rows.append(row)
    if n_resamples > 0:
        _add_cis(rows, ps, thr, int(n_resamples), int(seed), cluster, ci_level, memory_bytes)
    out = pd.DataFrame(rows)
    for col in OPERATING_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
    out["note"] = out["note"].astype(object).where(out["note"].notna(), "")
    return out[list(OPERATING_COLUMNS)]


def _add_cis(rows: list[dict], ps: PredictionSet, thr: np.ndarray, n_resamples: int, seed: int, cluster: str,
             ci_level: float, memory_bytes: int) -> None:
    resamples = ps.resamples(n_resamples, seed, cluster)
    at_src = bs.bootstrap_metrics(ps.labels, ps.scores, resamples, thresholds=thr, memory_bytes=memory_bytes)
    at_own = bs.bootstrap_metrics(ps.labels, ps.scores, resamples, youden=True, memory_bytes=memory_bytes)
    src_m = mt.threshold_metrics(at_src["tp"], at_src["fp"], at_src["tn"], at_src["fn"])
    own_m = mt.threshold_metrics(at_own["tp"], at_own["fp"], at_own["tn"], at_own["fn"])
    for j, row in enumerate(rows):
        if "target_threshold" not in row:
            continue
        for where, m in (("source", src_m), ("target", own_m)):
            for name in ("sensitivity", "specificity"):
                s = bs.summarize(m[name][:, j], np.nan, ci_level)
                row[f"{name}_at_{where}_lo"], row[f"{name}_at_{where}_hi"] = s["ci_low"], s["ci_high"]
        if "youden_loss" in row:
            loss = (own_m["sensitivity"][:, j] + own_m["specificity"][:, j]
                    - src_m["sensitivity"][:, j] - src_m["specificity"][:, j])
            s = bs.summarize(loss, row["youden_loss"], ci_level)
            row["youden_loss_lo"], row["youden_loss_hi"] = s["ci_low"], s["ci_high"]

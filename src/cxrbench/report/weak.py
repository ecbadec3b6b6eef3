"""Where a number is weak, say so where it is read: the small-sample mark (few positives or negatives,
a CI touching 0 or 1, a mean over such findings), the difference a non-significant comparison could have
detected (its power), and the arms that ran once because every seed gives the same run. Plain helpers on
results rows, used by :mod:`cxrbench.report.tables` and the other report modules."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cxrbench.report.results import MEAN, StudyResults, stars

MIN_POSITIVES = 10  # fewer labelled positives (or negatives) of a finding: a small-sample mark
SMALL = "\u2020"  # the mark on a small-sample or boundary-CI cell


def counts_of(rows: list[dict | None]) -> tuple[int, int] | None:
    """(labelled images, positives) of a finding: the same for every init (one test split)."""
    for r in rows:
        if r is None:
            continue
        n, pos = r.get("n"), r.get("n_positive")
        if n is not None and pos is not None and np.isfinite(float(n)) and np.isfinite(float(pos)):
            return int(n), int(pos)
    return None


def small_sample_reasons(row: dict | None, counts: tuple[int, int] | None) -> list[str]:
    """Why an AUROC cell deserves caution: few positives/negatives, or a CI touching 0 or 1."""
    out = []
    if counts is not None:
        n, pos = counts
        if pos < MIN_POSITIVES:
            out.append(f"{pos} positive test image(s), fewer than {MIN_POSITIVES}")
        if n - pos < MIN_POSITIVES:
            out.append(f"{n - pos} negative test image(s), fewer than {MIN_POSITIVES}")
    if row is not None:
        lo, hi = row.get("auroc_lo"), row.get("auroc_hi")
        if lo is not None and np.isfinite(float(lo)) and round(float(lo), 3) <= 0.0:
            out.append("its CI reaches 0")
        if hi is not None and np.isfinite(float(hi)) and round(float(hi), 3) >= 1.0:
            out.append("its CI reaches 1 (the bootstrap cannot show the uncertainty above)")
    return out


def mean_small_reasons(t: pd.DataFrame, dataset: str, init: str) -> list[str]:
    """Why a mean AUROC deserves the small-sample mark: the findings it averages that have fewer than
    :data:`MIN_POSITIVES` positive or negative test images."""
    rows = t[(t["dataset"] == dataset) & (t["init"] == init) & (t["finding"] != MEAN)]
    few = [r["finding"] for r in rows.to_dict(orient="records")
           if small_sample_reasons(None, counts_of([r]))]
    return [f"averages {len(few)} finding(s) with fewer than {MIN_POSITIVES} positive or negative test "
            f"images ({', '.join(few)})"] if few else []


def fmt_mdd(row: pd.Series | dict | None) -> str:
    """``0.043``: the smallest difference the comparison could detect (80% power), or empty."""
    v = (row or {}).get("min_detectable_diff") if isinstance(row, dict) else (
        row.get("min_detectable_diff") if row is not None else None)
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return ""
    return f"{x:.3f}" if math.isfinite(x) else ""


def not_significant(row: dict | pd.Series, alpha: float) -> bool:
    """A comparison with a finite p that is not significant after adjustment."""
    p = row.get("p_adjusted")
    p = row.get("p_vs_reference") if p is None or not np.isfinite(float(p)) else p
    return p is not None and np.isfinite(float(p)) and not stars(float(p), alpha)


def power_lines(res: StudyResults, t: pd.DataFrame) -> list[str]:
    """One line per non-significant mean comparison of ``t`` with the difference it could have detected:
    "not significant" read as "could not tell" where that is the truth."""
    if not res.reference or "min_detectable_diff" not in t.columns:
        return []
    out = []
    for r in t[t["finding"] == MEAN].to_dict(orient="records"):
        if r["init"] == res.reference or not not_significant(r, res.alpha) or not fmt_mdd(r):
            continue
        d = float(r.get("diff_vs_reference") or float("nan"))
        tell = ("could not tell" if abs(d) < float(r["min_detectable_diff"]) else "a real difference this "
                "large would usually have been detected")
        out.append(f"{r['init']} vs {res.reference} on {r['dataset']}: not significant (difference "
                   f"{d:+.3f}); "
                   f"this test set detects {fmt_mdd(r)} or more with 80% power at the 5% level: {tell}.")
    return out


def is_deterministic(row: dict | pd.Series) -> bool:
    """A row of an arm that ran once because every seed gives the same run (kNN on fixed weights)."""
    v = row.get("deterministic")
    return bool(v) and not (isinstance(v, float) and not np.isfinite(v))

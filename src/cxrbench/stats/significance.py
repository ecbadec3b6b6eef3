"""Tests between models: paired bootstrap, DeLong for correlated AUROCs, Benjamini-Hochberg.

* Paired bootstrap: both models are scored on the same resamples (:mod:`cxrbench.bootstrap`); the
  difference ``d_b = AUROC_A(b) - AUROC_B(b)`` per resample gives the percentile CI and the p-value.
  Two-sided ``p = min(1, 2 * min(P(d <= 0), P(d >= 0)))`` with P the share of usable resamples: the
  smallest level at which the equal-tailed percentile interval excludes 0, so p < 0.05 exactly
  when the reported 95% percentile CI lies on one side of 0 (up to quantile interpolation).
  ``alternative="greater"`` (H1: A > B) gives the reference study's ``P(d <= 0)``.
* DeLong, DeLong & Clarke-Pearson (1988), with the O(n log n) mid-rank algorithm of Sun & Xu (2014),
  IEEE Signal Processing Letters 21(11):1389-1393; values agree with R's pROC ``roc.test``.
* Benjamini & Hochberg (1995) step-up adjusted p-values over a family of tests.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm, rankdata

from cxrbench.common.validation import check_choice

ALTERNATIVES: tuple[str, ...] = ("two-sided", "greater")


def bootstrap_p_value(diffs: np.ndarray, alternative: str = "two-sided") -> float:
    """p-value from paired bootstrap differences ``A - B`` (NaN resamples ignored).

    ``two-sided``: ``min(1, 2 min(P(d <= 0), P(d >= 0)))``; ``greater``: ``P(d <= 0)`` (H1: A > B).
    A value of 0 means no resample fell on the other side: report it as ``p < 1/B``.
    """
    check_choice("alternative", alternative, ALTERNATIVES)
    d = np.asarray(diffs, dtype=np.float64)
    d = d[~np.isnan(d)]
    if d.size == 0:
        return float("nan")
    le = float(np.mean(d <= 0))
    if alternative == "greater":
        return le
    return float(min(1.0, 2.0 * min(le, float(np.mean(d >= 0)))))


def paired_bootstrap(auc_a: np.ndarray, auc_b: np.ndarray, point_a: float, point_b: float,
                     alternative: str = "two-sided", ci_level: float = 0.95) -> dict:
    """Paired bootstrap comparison of one metric from resample arrays (B,) of two models.

    Returns the difference of the point estimates, its percentile CI, the mean and std of the
    resampled differences, the p-value (:func:`bootstrap_p_value`) and the resamples used.
    """
    d = np.asarray(auc_a, dtype=np.float64) - np.asarray(auc_b, dtype=np.float64)
    used = d[~np.isnan(d)]
    alpha = (1.0 - ci_level) / 2.0
    lo, hi = np.quantile(used, [alpha, 1.0 - alpha]) if used.size else (np.nan, np.nan)
    return {"diff": float(point_a - point_b), "diff_lo": float(lo), "diff_hi": float(hi),
            "diff_mean": float(used.mean()) if used.size else float("nan"),
            "diff_std": float(used.std(ddof=1)) if used.size > 1 else float("nan"),
            "p_bootstrap": bootstrap_p_value(used, alternative),
            "n_resamples_used": int(used.size), "n_resamples_excluded": int(d.size - used.size)}


def delong_placements(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUROCs and DeLong structural components for M score vectors on the same known labels.

    ``y``: (n,) 0/1 (no NaN); ``scores``: (M, n). Returns ``auc`` (M,), ``v10`` (M, n_pos), ``v01``
    (M, n_neg), computed with mid-ranks over all, positive-only and negative-only scores (Sun & Xu
    2014, O(n log n)): ``v10 = (rank_all - rank_pos) / n_neg``,
    ``v01 = 1 - (rank_all - rank_neg) / n_pos``.
    """
    y = np.asarray(y)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tz = rankdata(np.concatenate([pos, neg], axis=1), method="average", axis=1)
    tx = rankdata(pos, method="average", axis=1)
    ty = rankdata(neg, method="average", axis=1)
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2.0) / (m * n)
    v10 = (tz[:, :m] - tx) / n
    v01 = 1.0 - (tz[:, m:] - ty) / m
    return auc, v10, v01


def delong_covariance(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs (M,) and their DeLong covariance matrix (M, M): ``S10 / n_pos + S01 / n_neg``."""
    auc, v10, v01 = delong_placements(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    s10 = np.atleast_2d(np.cov(v10, ddof=1)) if m > 1 else np.zeros((auc.size, auc.size))
    s01 = np.atleast_2d(np.cov(v01, ddof=1)) if n > 1 else np.zeros((auc.size, auc.size))
    return auc, s10 / m + s01 / n


def delong_test(y: np.ndarray, s_a: np.ndarray, s_b: np.ndarray, alternative: str = "two-sided",
                ci_level: float = 0.95) -> dict:
    """DeLong's test for two correlated AUROCs on the same images (labels 1/0/NaN, NaN masked).

    Returns ``auroc_a``, ``auroc_b``, ``diff``, ``se``, ``z``, ``p_delong`` and the Wald CI of the
    difference ``delong_lo``/``delong_hi``. ``greater`` tests H1: A > B. Identical score orderings
    give z = 0 and p = 1; NaN everywhere when a class is missing.
    """
    check_choice("alternative", alternative, ALTERNATIVES)
    y = np.asarray(y, dtype=np.float64)
    mask = ~np.isnan(y)
    yk = y[mask]
    keys = ("auroc_a", "auroc_b", "diff", "se", "z", "p_delong", "delong_lo", "delong_hi")
    if yk.size == 0 or yk.min() == yk.max():
        return dict.fromkeys(keys, float("nan"))
    auc, cov = delong_covariance(yk, np.stack([np.asarray(s_a, float)[mask], np.asarray(s_b, float)[mask]]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    se = float(np.sqrt(var)) if var > 0 else 0.0
    if se > 0:
        z = diff / se
    else:  # identical placements: no variance in the difference
        z = 0.0 if diff == 0 else float(np.copysign(np.inf, diff))
    p = float(norm.sf(z)) if alternative == "greater" else float(min(1.0, 2 * norm.sf(abs(z))))
    half = float(norm.ppf(0.5 + ci_level / 2.0)) * se
    return {"auroc_a": float(auc[0]), "auroc_b": float(auc[1]), "diff": diff, "se": se, "z": float(z),
            "p_delong": p, "delong_lo": diff - half, "delong_hi": diff + half}


def delong_auroc_ci(y: np.ndarray, s: np.ndarray, ci_level: float = 0.95) -> tuple[float, float, float]:
    """AUROC, and its DeLong Wald CI (clipped to [0, 1]); NaN when a class is missing."""
    y = np.asarray(y, dtype=np.float64)
    mask = ~np.isnan(y)
    yk = y[mask]
    if yk.size == 0 or yk.min() == yk.max():
        return float("nan"), float("nan"), float("nan")
    auc, cov = delong_covariance(yk, np.asarray(s, float)[mask][None])
    half = float(norm.ppf(0.5 + ci_level / 2.0)) * float(np.sqrt(max(cov[0, 0], 0.0)))
    a = float(auc[0])
    return a, max(0.0, a - half), min(1.0, a + half)


def benjamini_hochberg(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over one family of tests.

    ``q_(i) = min_{j >= i} min(1, p_(j) m / j)`` over the m finite p-values sorted ascending; NaN
    entries (tests that could not be run) stay NaN and are not counted in m. Equal to
    ``scipy.stats.false_discovery_control(p, method="bh")`` on the finite values.
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    vals = p[ok]
    m = vals.size
    if m == 0:
        return out
    if np.any((vals < 0) | (vals > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = np.argsort(vals, kind="stable")
    scaled = vals[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(q, 1.0)
    out[ok] = adjusted
    return out

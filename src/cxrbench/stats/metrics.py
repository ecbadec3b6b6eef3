"""Per-finding classification metrics on label and score arrays.

Conventions shared by every function here and by :mod:`cxrbench.bootstrap`:

* ``y``: float array (n,) holding 1.0 (positive), 0.0 (negative) or NaN (unknown). Unknown labels
  are masked out per finding, never treated as negative.
* ``s``: float array (n,) of scores, higher = more likely positive (probabilities or logits: every
  metric here depends on the order of the scores only, plus the threshold for threshold metrics).
* A threshold ``t`` predicts positive when ``s >= t`` (scikit-learn's ``roc_curve`` convention);
  ``t = +inf`` predicts nothing positive.
* A metric that is undefined (a finding with one class only) is NaN and an
  :class:`UndefinedMetricWarning` is emitted, as scikit-learn does; callers count them.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.stats import rankdata

from cxrbench.common.errors import CxrbenchWarning, InputError, warn

THRESHOLD_METRICS: tuple[str, ...] = (
    "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "balanced_accuracy",
)
"""Metrics computed from the confusion matrix at a decision threshold."""


class UndefinedMetricWarning(CxrbenchWarning):
    """A metric is undefined for the given labels (only one class present); its value is NaN."""


def check_labels_scores(y: np.ndarray, s: np.ndarray, where: str = "predictions",
                        ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate one finding's labels and scores; return them as float64 arrays.

    Labels must be 1, 0 or NaN. Scores must be finite wherever the label is known (a score next to
    an unknown label is never used, so it may be anything). Raises InputError naming the first bad
    row (or image id when ``ids`` is given).
    """
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    if y.ndim != 1 or s.shape != y.shape:
        raise InputError(f"labels {y.shape} and scores {s.shape} must be 1-D arrays of the same length",
                         where=where, fix="pass one value per image for this finding")
    bad = ~(np.isnan(y) | (y == 0.0) | (y == 1.0))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"label {float(y[i])!r} at {_row(i, ids)} is not 1, 0 or NaN "
                         f"({int(bad.sum())} in total)",
                         where=where, fix="labels hold 1.0 (positive), 0.0 (negative) or NaN (unknown)")
    bad = ~np.isfinite(s) & ~np.isnan(y)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(f"score {float(s[i])!r} at {_row(i, ids)} is not finite ({int(bad.sum())} in total)",
                         where=where, fix="every image with a known label needs a finite score; re-run "
                                          "the predictions (a NaN score usually means a diverged model)")
    return y, s


def _row(i: int, ids: np.ndarray | None) -> str:
    return f"image {str(ids[i])!r}" if ids is not None else f"row {i + 1}"


def known(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels (as int8 0/1) and scores of the images whose label is known."""
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64)
    mask = ~np.isnan(y)
    return y[mask].astype(np.int8), s[mask]


def class_counts(y: np.ndarray) -> dict[str, int]:
    """``n`` (known labels), ``n_positive``, ``n_negative``, ``n_unknown`` of one finding."""
    y = np.asarray(y, dtype=np.float64)
    pos, neg = int((y == 1.0).sum()), int((y == 0.0).sum())
    return {"n": pos + neg, "n_positive": pos, "n_negative": neg, "n_unknown": int(np.isnan(y).sum())}


def not_estimable_reason(y: np.ndarray) -> str | None:
    """Why AUROC is undefined for these labels (``"no positives"`` ...), or None when it is defined."""
    c = class_counts(y)
    if c["n"] == 0:
        return "no known labels"
    if c["n_positive"] == 0:
        return "no positives"
    if c["n_negative"] == 0:
        return "no negatives"
    return None


def _undefined(what: str, reason: str) -> float:
    warn(f"{what} is undefined ({reason}); returning NaN", UndefinedMetricWarning)  # at the caller's line
    return float("nan")


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney probability P(s+ > s-) + 0.5 P(s+ = s-).

    Computed from mid-ranks (ties count one half), equal to ``sklearn.metrics.roc_auc_score`` on the
    known labels. NaN plus an :class:`UndefinedMetricWarning` when one class is missing.
    """
    reason = not_estimable_reason(y)
    if reason:
        return _undefined("AUROC", reason)
    yk, sk = known(y, s)
    ranks = rankdata(sk, method="average")
    n_pos = int(yk.sum())
    n_neg = yk.size - n_pos
    u = ranks[yk == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def mean_auroc(y: np.ndarray, s: np.ndarray) -> tuple[float, list[float]]:
    """Mean AUROC over the findings (columns of ``y``/``s``, ``[N, K]``) with both classes, and the AUROC
    of every finding (NaN where one class is missing: left out of the mean, without a warning). The
    figure that selects epochs, kNN's k and T, and tuning choices on the validation split."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        per = [float(auroc(y[:, j], s[:, j])) for j in range(y.shape[1])]
    finite = [v for v in per if np.isfinite(v)]
    return (float(np.mean(finite)) if finite else float("nan")), per


def binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false and true positives at each distinct score, highest first.

    Returns ``(fps, tps, thresholds)``, each (G,) with G distinct known scores: at ``thresholds[g]``
    (predict ``s >= thresholds[g]``) there are ``tps[g]`` true and ``fps[g]`` false positives.
    """
    yk, sk = known(y, s)
    order = np.argsort(-sk, kind="stable")
    sk, yk = sk[order], yk[order]
    last = np.r_[np.flatnonzero(np.diff(sk)), sk.size - 1]  # last index of each tie group
    tps = np.cumsum(yk, dtype=np.int64)[last]
    fps = (last + 1) - tps
    return fps, tps, sk[last]


def roc_curve(y: np.ndarray, s: np.ndarray, drop_intermediate: bool = True
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)`` as scikit-learn returns them (first threshold is +inf).

    With ``drop_intermediate`` the points in the interior of straight segments are dropped (the
    curve and its area are unchanged). NaN rates plus a warning when one class is missing.
    """
    fps, tps, thr = binary_clf_curve(y, s)
    if drop_intermediate and fps.size > 2:
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        fps, tps, thr = fps[keep], tps[keep], thr[keep]
    fps, tps = np.r_[0, fps], np.r_[0, tps]
    thr = np.r_[np.inf, thr]
    reason = not_estimable_reason(y)
    if reason:
        _undefined("the ROC curve", reason)
    with np.errstate(divide="ignore", invalid="ignore"):
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full(fps.shape, np.nan)
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full(tps.shape, np.nan)
    return fpr, tpr, thr


def average_precision(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision: sum over distinct thresholds of (recall step) x precision.

    The step-wise (non-interpolated) definition of ``sklearn.metrics.average_precision_score``.
    Undefined (NaN plus a warning) when a class is missing, to match the bootstrap, where a
    resample with one class is excluded for every metric of that finding.
    """
    reason = not_estimable_reason(y)
    if reason:
        return _undefined("average precision", reason)
    fps, tps, _ = binary_clf_curve(y, s)
    precision = tps / (tps + fps)
    recall_step = np.diff(np.r_[0, tps]) / tps[-1]
    return float(np.sum(recall_step * precision))


def youden_threshold(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """Threshold maximizing Youden's J = sensitivity + specificity - 1, and that J.

    Candidates are +inf and every distinct known score (predict ``s >= t``), as in
    ``np.argmax(tpr - fpr)`` over scikit-learn's ``roc_curve`` (the reference study's rule). J is
    compared exactly in integers (tp*N - fp*P), so the highest threshold wins a tie. Returns
    (NaN, NaN) plus a warning when a class is missing.
    """
    reason = not_estimable_reason(y)
    if reason:
        _undefined("Youden's threshold", reason)
        return float("nan"), float("nan")
    fps, tps, thr = binary_clf_curve(y, s)
    n_pos, n_neg = int(tps[-1]), int(fps[-1])
    j_scaled = np.r_[0, tps * n_neg - fps * n_pos]
    g = int(np.argmax(j_scaled))
    t = float(np.inf) if g == 0 else float(thr[g - 1])
    return t, float(j_scaled[g] / (n_pos * n_neg))


def confusion(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    """``(tp, fp, tn, fn)`` over the known labels when predicting ``s >= threshold``."""
    yk, sk = known(y, s)
    pred = sk >= threshold
    pos = yk == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    return tp, fp, int(np.sum(~pos)) - fp, int(np.sum(pos)) - tp


def threshold_metrics(tp, fp, tn, fn) -> dict[str, np.ndarray]:
    """Accuracy, sensitivity, specificity, PPV, NPV, F1, balanced accuracy from confusion counts.

    Element-wise over arrays of any shape (e.g. resamples x findings). A ratio with a zero
    denominator (PPV with no predicted positive, ...) is NaN, without a warning: the bootstrap
    counts such resamples per metric.
    """
    tp, fp, tn, fn = (np.asarray(v, dtype=np.float64) for v in (tp, fp, tn, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        sens = _ratio(tp, tp + fn)
        spec = _ratio(tn, tn + fp)
        return {
            "accuracy": _ratio(tp + tn, tp + fp + tn + fn),
            "sensitivity": sens,
            "specificity": spec,
            "ppv": _ratio(tp, tp + fp),
            "npv": _ratio(tn, tn + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "balanced_accuracy": (sens + spec) / 2.0,
        }


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def point_metrics(y: np.ndarray, s: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """AUROC, average precision and (when ``threshold`` is given) the threshold metrics of one finding.

    Every value is NaN when the finding is not estimable (one class).
    """
    out: dict[str, float] = {}
    if not_estimable_reason(y):
        names = ("auroc", "average_precision") + (THRESHOLD_METRICS if threshold is not None else ())
        return dict.fromkeys(names, float("nan"))
    out["auroc"] = auroc(y, s)
    out["average_precision"] = average_precision(y, s)
    if threshold is not None:
        if np.isnan(threshold):
            out.update(dict.fromkeys(THRESHOLD_METRICS, float("nan")))
        else:
            tm = threshold_metrics(*confusion(y, s, threshold))
            out.update({k: float(v) for k, v in tm.items()})
    return out

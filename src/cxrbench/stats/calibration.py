"""Calibration of predicted probabilities: ECE, Brier score, slope and intercept, reliability curves,
and recalibration maps (temperature scaling, Platt, isotonic) fitted on validation predictions.

Conventions (one finding; labels 1/0/NaN, NaN masked; ``p`` probabilities in [0, 1]):

* **Equal-mass bins**: ``n_bins`` bins whose edges are the quantiles of ``p``
  (``numpy.percentile``, linear interpolation), an image going to bin ``#(inner edges < p)``: the
  binning of ``sklearn.calibration.calibration_curve(strategy="quantile")``.
* **ECE** = ``sum over bins (n_b / n) |mean(y)_b - mean(p)_b| = sum_b |sum_b (y - p)| / n``.
  Bootstrap: the bins are re-made on each resample (the ECE of the resampled set; weights are
  counts, a weighted percentile equals the percentile of the repeated values).
* **Brier** = ``mean((p - y)^2)`` (``sklearn.metrics.brier_score_loss``).
* **Slope and intercept**: the maximum-likelihood logistic fit ``logit P(y=1) = a + b logit(p)``
  (``p`` clipped to ``[1e-9, 1 - 1e-9]``); perfect calibration is ``a = 0, b = 1``; ``b < 1`` means
  over-confident predictions. Newton-Raphson, equal to an unpenalized scikit-learn fit.
* **Recalibration** maps, fitted on validation only and applied to the evaluated split:
  ``temperature`` ``sigmoid(logit(p) / T)`` (T minimizing the log loss), ``platt``
  ``sigmoid(a + b logit(p))`` (the fit above), ``isotonic`` (``sklearn.isotonic.IsotonicRegression``,
  clipped outside the fitted range, applied by linear interpolation between its thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxrbench.common.validation import check_choice
from cxrbench.stats import bootstrap as bs

RECALIBRATION_METHODS: tuple[str, ...] = ("temperature", "platt", "isotonic")
DEFAULT_BINS = 10
RECALIBRATION_MIN = 10  # fewer validation positives or negatives: recalibration refused (unless forced)
RECALIBRATION_WARN = 30  # fewer: fitted with a warning (the map follows a handful of images)
SLOPE_RANGE = (0.1, 10.0)  # a calibration slope outside it is flagged unstable
INTERCEPT_MAX = 5.0  # |intercept| above it is flagged unstable
MIN_FIT_CLASS = 10  # fewer positives or negatives: slope and intercept flagged unstable
EPS = 1e-9


def _known(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    m = ~np.isnan(y)
    return y[m], p[m]


def is_probability(p: np.ndarray) -> bool:
    """True when every value is a probability in [0, 1] (calibration is undefined for other scores)."""
    p = np.asarray(p, dtype=np.float64)
    return bool(p.size == 0 or (np.nanmin(p) >= 0.0 and np.nanmax(p) <= 1.0))


def _quantile_q(n_bins: int) -> np.ndarray:
    return np.true_divide(np.linspace(0.0, 1.0, n_bins + 1) * 100, 100)  # as numpy.percentile does


def bin_ids(p: np.ndarray, n_bins: int = DEFAULT_BINS) -> np.ndarray:
    """Equal-mass bin of each probability (``calibration_curve(strategy="quantile")``'s binning)."""
    p = np.asarray(p, dtype=np.float64)
    edges = np.percentile(p, _quantile_q(n_bins) * 100)
    return np.searchsorted(edges[1:-1], p)


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, np.ndarray]:
    """Per non-empty equal-mass bin: ``n``, ``mean_predicted``, ``fraction_positive`` (known labels only).

    ``fraction_positive``/``mean_predicted`` equal scikit-learn's ``prob_true``/``prob_pred``.
    """
    yk, pk = _known(y, p)
    if yk.size == 0:
        return {"n": np.zeros(0, int), "mean_predicted": np.zeros(0), "fraction_positive": np.zeros(0)}
    ids = bin_ids(pk, n_bins)
    total = np.bincount(ids, minlength=n_bins)
    sums = np.bincount(ids, weights=pk, minlength=n_bins)
    true = np.bincount(ids, weights=yk, minlength=n_bins)
    nz = total > 0
    return {"n": total[nz], "mean_predicted": sums[nz] / total[nz], "fraction_positive": true[nz] / total[nz]}


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error over equal-mass bins (NaN without known labels)."""
    curve = reliability_curve(y, p, n_bins)
    n = curve["n"].sum()
    if n == 0:
        return float("nan")
    return float(np.sum(curve["n"] * np.abs(curve["fraction_positive"] - curve["mean_predicted"])) / n)


def brier_score(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared difference between probability and label over the known labels."""
    yk, pk = _known(y, p)
    return float(np.mean((pk - yk) ** 2)) if yk.size else float("nan")


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` with ``p`` clipped to ``[1e-9, 1 - 1e-9]``."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def logistic_fit(x: np.ndarray, y: np.ndarray, max_iter: int = 100,
                 tol: float = 1e-10) -> tuple[float, float]:
    """Unpenalized maximum-likelihood ``(intercept, slope)`` of ``logit P(y=1) = a + b x``.

    Newton-Raphson with step halving (the log-likelihood is concave). NaN, NaN when a class is
    missing or the fit does not converge (separable data: the slope grows without bound).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.size == 0 or y.min() == y.max():
        return float("nan"), float("nan")
    X = np.column_stack([np.ones_like(x), x])

    def nll(beta: np.ndarray) -> float:
        eta = X @ beta
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta))

    beta = np.zeros(2)
    current = nll(beta)
    for _ in range(max_iter):
        mu = sigmoid(X @ beta)
        hess = (X * (mu * (1.0 - mu))[:, None]).T @ X
        try:
            step = np.linalg.solve(hess, X.T @ (y - mu))
        except np.linalg.LinAlgError:
            return float("nan"), float("nan")
        scale = 1.0
        while scale > 1e-8 and nll(beta + scale * step) > current + 1e-12 * (1.0 + abs(current)):
            scale /= 2.0
        beta = beta + scale * step
        current = nll(beta)
        if np.max(np.abs(scale * step)) < tol * (1.0 + np.max(np.abs(beta))):
            break
    else:
        return float("nan"), float("nan")
    if not np.all(np.isfinite(beta)) or np.max(np.abs(beta)) > 1e4:
        return float("nan"), float("nan")
    return float(beta[0]), float(beta[1])


def calibration_slope_intercept(y: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """``(slope, intercept)`` of the logistic recalibration fit on ``logit(p)``."""
    yk, pk = _known(y, p)
    a, b = logistic_fit(logit(pk), yk)
    return b, a


# -- bootstrap ------------------------------------------------------------------------------------


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's quantile interpolation, bit for bit (``a + (b - a) t``, from ``b`` when ``t >= 0.5``)."""
    d = b - a
    return np.where(t >= 0.5, b - d * (1 - t), a + d * t)


def _chunk_calibration(p_sorted: np.ndarray, resid_sorted: np.ndarray, sq_sorted: np.ndarray,
                       w: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """ECE and Brier of each resample (rows of ``w``: counts of the known images in ascending p order)."""
    c, m = w.shape
    cum_w = np.cumsum(w, axis=1, dtype=np.int64)
    total = cum_w[:, -1]
    # weighted (repeated-value) percentiles of the inner edges, as numpy.percentile on the resample
    q = _quantile_q(n_bins)[1:-1]
    virtual = (total[:, None] - 1).astype(np.float64) * q[None, :]
    lo = np.floor(virtual)
    gamma = virtual - lo
    hi = np.minimum(lo + 1, (total - 1)[:, None])
    over = virtual >= (total - 1)[:, None]
    lo = np.where(over, (total - 1)[:, None], lo)
    hi = np.where(over, (total - 1)[:, None], hi)
    offset = (np.arange(c, dtype=np.int64) * (int(total.max(initial=0)) + 1))[:, None]
    flat = (cum_w + offset).ravel()

    def value_at(rank: np.ndarray) -> np.ndarray:
        targets = (rank.astype(np.int64) + offset).ravel()
        pos = np.searchsorted(flat, targets, side="right").reshape(rank.shape)
        return p_sorted[np.clip(pos - np.arange(c)[:, None] * m, 0, m - 1)]

    edges = _lerp(value_at(lo), value_at(hi), gamma)
    # bin b holds the images with edges[b-1] < p <= edges[b]: boundaries in the sorted order
    bounds = np.searchsorted(p_sorted, edges.ravel(), side="right").reshape(c, -1)
    bounds = np.concatenate([np.zeros((c, 1), dtype=np.int64), bounds, np.full((c, 1), m)], axis=1)
    cum_r = np.zeros((c, m + 1))
    np.cumsum(w * resid_sorted[None, :], axis=1, out=cum_r[:, 1:])
    per_bin = np.diff(np.take_along_axis(cum_r, bounds, axis=1), axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.where(total > 0, np.abs(per_bin).sum(axis=1) / total, np.nan)
        brier = np.where(total > 0, (w @ sq_sorted) / total, np.nan)
    return e, brier


def bootstrap_calibration(labels: np.ndarray, probs: np.ndarray, resamples: bs.Resamples,
                          n_bins: int = DEFAULT_BINS,
                          memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> dict[str, np.ndarray]:
    """ECE and Brier score of every finding on every resample: ``{"ece": (B, K), "brier": (B, K)}``.

    Each value equals :func:`ece` / :func:`brier_score` on the explicitly resampled set.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64)
    n, k = labels.shape
    if resamples.n_items != n:
        raise ValueError(f"resamples cover {resamples.n_items} images but the arrays have {n}")
    prepared = []
    for j in range(k):
        idx = np.flatnonzero(~np.isnan(labels[:, j]))
        order = idx[np.argsort(probs[idx, j], kind="stable")]
        p, y = probs[order, j], labels[order, j]
        prepared.append((order, p, y - p, (p - y) ** 2))
    out = {name: np.full((resamples.n_resamples, k), np.nan) for name in ("ece", "brier")}
    # per image and resample: counts, int64 cumsum, float64 residual cumsum and product (~ 30 bytes)
    chunk = max(1, min(resamples.n_resamples, memory_bytes // max(1, n * 32)))
    for start, counts in resamples.chunks(chunk):
        rows = slice(start, start + counts.shape[0])
        for j, (order, p, resid, sq) in enumerate(prepared):
            if order.size == 0:
                continue
            w = np.take(counts, order, axis=1)
            out["ece"][rows, j], out["brier"][rows, j] = _chunk_calibration(p, resid, sq, w, n_bins)
    return out


# -- recalibration --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recalibration:
    """A fitted recalibration map of one finding: ``apply(p) -> p'``; ``params`` JSON-ready."""

    method: str
    params: dict[str, Any] = field(default_factory=dict)

    def apply(self, p: np.ndarray) -> np.ndarray:
        """Recalibrated probabilities (same shape); the identity when the fit failed (params empty)."""
        p = np.asarray(p, dtype=np.float64)
        if not self.params:
            return p
        if self.method == "temperature":
            return sigmoid(logit(p) / self.params["temperature"])
        if self.method == "platt":
            return sigmoid(self.params["intercept"] + self.params["slope"] * logit(p))
        x, y = np.asarray(self.params["x"]), np.asarray(self.params["y"])
        return np.interp(np.clip(p, x[0], x[-1]), x, y)


def fit_temperature(y: np.ndarray, p: np.ndarray) -> float:
    """Temperature T > 0 minimizing the log loss of ``sigmoid(logit(p) / T)`` (NaN with one class)."""
    from scipy.optimize import minimize_scalar

    yk, pk = _known(y, p)
    if yk.size == 0 or yk.min() == yk.max():
        return float("nan")
    z = logit(pk)

    def nll(log_t: float) -> float:
        x = z / np.exp(log_t)
        return float(np.sum(np.logaddexp(0.0, x) - yk * x))

    res = minimize_scalar(nll, bounds=(np.log(1e-2), np.log(1e2)), method="bounded",
                          options={"xatol": 1e-10})
    return float(np.exp(res.x))


def fit_recalibration(method: str, y: np.ndarray, p: np.ndarray) -> Recalibration:
    """Fit ``method`` (temperature, platt, isotonic) on validation labels ``y`` and probabilities ``p``.

    A fit that is impossible (one class on validation, separable data) gives the identity map
    (``params`` empty).
    """
    check_choice("--recalibrate", method, RECALIBRATION_METHODS)
    yk, pk = _known(y, p)
    if yk.size == 0 or yk.min() == yk.max():
        return Recalibration(method)
    if method == "temperature":
        t = fit_temperature(yk, pk)
        return Recalibration(method, {"temperature": t} if np.isfinite(t) else {})
    if method == "platt":
        a, b = logistic_fit(logit(pk), yk)
        return Recalibration(method, {"intercept": a, "slope": b} if np.isfinite(a) else {})
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(pk, yk)
    return Recalibration(method, {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()})


def fit_instability(slope: float, intercept: float, n_pos: int, n_neg: int) -> str:
    """Why a calibration slope and intercept should not be read (empty when they can be): the fit did
    not converge (separable labels), an implausible value (slope outside :data:`SLOPE_RANGE`, |intercept|
    above :data:`INTERCEPT_MAX`), or fewer than :data:`MIN_FIT_CLASS` positives or negatives."""
    if not (np.isfinite(slope) and np.isfinite(intercept)):
        return "the logistic fit did not converge (separable labels)"
    why = []
    if not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1]:
        why.append(f"slope {slope:.3g} outside {SLOPE_RANGE[0]:g}-{SLOPE_RANGE[1]:g}")
    if abs(intercept) > INTERCEPT_MAX:
        why.append(f"|intercept| {abs(intercept):.3g} above {INTERCEPT_MAX:g}")
    if min(n_pos, n_neg) < MIN_FIT_CLASS:
        why.append(f"fitted on {n_pos} positive(s) and {n_neg} negative(s)")
    return "unstable: " + "; ".join(why) if why else ""


def recalibration_check(method: str, n_pos: int, n_neg: int, force: bool = False) -> tuple[bool, str]:
    """``(fit it, warning)`` for a recalibration map on ``n_pos``/``n_neg`` validation images: refused
    below :data:`RECALIBRATION_MIN` of either class unless ``force``, warned below
    :data:`RECALIBRATION_WARN`."""
    few = min(n_pos, n_neg)
    counts = f"{n_pos} validation positive(s) and {n_neg} negative(s)"
    if few < RECALIBRATION_MIN and not force:
        return False, (f"{method} recalibration refused: {counts}, fewer than {RECALIBRATION_MIN} of a class "
                       "(force it with --force-recalibration)")
    if few < RECALIBRATION_WARN:
        return True, (f"{method} recalibration fitted on only {counts} (fewer than {RECALIBRATION_WARN} of a "
                      "class): the map follows a handful of images and its 'after' ECE is optimistic")
    return True, ""


def calibration_point(y: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """ECE, Brier, slope, intercept and the reliability curve of one finding (point estimates), and
    ``unstable``: why the slope and intercept should not be read (empty when they can)."""
    slope, intercept = calibration_slope_intercept(y, p)
    curve = reliability_curve(y, p, n_bins)
    yk = np.asarray(y, dtype=np.float64)
    n_pos, n_neg = int((yk == 1).sum()), int((yk == 0).sum())
    return {"ece": ece(y, p, n_bins), "brier": brier_score(y, p), "slope": slope, "intercept": intercept,
            "unstable": fit_instability(slope, intercept, n_pos, n_neg),
            "reliability": {k: v.tolist() for k, v in curve.items()}}


def summarize_columns(values: np.ndarray, points: Sequence[float], ci_level: float) -> list[dict]:
    """:func:`cxrbench.stats.bootstrap.summarize` of each column of (B, K) ``values``."""
    return [bs.summarize(values[:, j], points[j], ci_level) for j in range(values.shape[1])]

"""Power of a paired AUROC comparison: the smallest difference a test set could detect, and the test
set a planned comparison needs.

Two models scored on the same ``n_pos`` positive and ``n_neg`` negative images (the paired design of
every cxrbench comparison). The variance of one AUROC ``A`` is the exact variance of the Mann-Whitney
statistic in Hanley & McNeil's form (Radiology 1982)::

    V(A) = [A(1 - A) + (n_pos - 1)(Q1 - A^2) + (n_neg - 1)(Q2 - A^2)] / (n_pos n_neg)

with ``Q1 = P(two negatives both score below a positive)`` and ``Q2 = P(a negative scores below two
positives)`` taken from the binormal model of Obuchowski's sample-size work (equal variances):
``Q1 = Q2 = Phi2(h, h; 1/2) = Phi(h) - 2 T(h, 1/sqrt(3))``, ``h = Phi^-1(A)`` (T: Owen's T). Hanley and
McNeil's exponential values ``Q1 = A / (2 - A)``, ``Q2 = 2 A^2 / (1 + A)`` are available
(``shape="exponential"``; larger, so more conservative, when the classes are unbalanced). ``V(A) =
V(1 - A)``. The variance of the paired difference of ``A0`` (the
reference) and ``A1 = A0 + d`` with the correlation ``r`` of the two AUROC estimates is
``V(d) = V(A0) + V(A1) - 2 r sqrt(V(A0) V(A1))`` (Obuchowski & McClish, Stat Med 1997). With the
variance under the alternative ``V1 = V(d)``, the Wald test at level ``alpha`` that cxrbench's tests
are (DeLong's and the paired bootstrap's critical values come from the variance at the observed AUROCs;
two-sided: ``z = z_{1-alpha/2}``) has power

    power(d) = Phi(d / sqrt(V1) - z) [+ Phi(-d / sqrt(V1) - z) two-sided]

(``critical="null"``: Obuchowski's form with the null variance ``V0 = 2 V(A0)(1 - r)`` in the critical
value, ``Phi((d - z sqrt(V0)) / sqrt(V1))``, a little more conservative)

and the minimum detectable difference at ``power`` (80% by default) is the ``d > 0`` solving
``power(d) = power`` (bisection; NaN when even ``A1 = 1`` falls short). For a macro mean over K
findings the variance of each model's mean is ``(1/K^2) sum_jk c_jk sqrt(V_j V_k)`` with ``c`` the
correlation of the findings' AUROC estimates (identity when unknown), and the difference shifts every
finding by ``d``. Pooled seeds add each arm's seed variance ``sd^2 / S`` to its AUROC variance.

Images are counted as independent: with several images per patient the true variance is larger, so
the minimum detectable difference is a lower bound (what the test set could detect at best).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import norm

POWER = 0.8  # the power the minimum detectable difference is stated at
_MAX_PATIENTS = 10_000_000


def _q_binormal(a: np.ndarray) -> np.ndarray:
    from scipy.special import owens_t

    h = norm.ppf(a)
    return norm.cdf(h) - 2.0 * owens_t(h, 1.0 / math.sqrt(3.0))


def auroc_variance(auroc: Any, n_pos: Any, n_neg: Any,
                   shape: str = "binormal") -> np.ndarray:
    """Variance of an AUROC estimate on ``n_pos``/``n_neg`` images (element-wise; NaN without both
    classes): Hanley and McNeil's form with the binormal (default) or exponential ``Q1``, ``Q2``."""
    a = np.asarray(auroc, dtype=np.float64)
    a = np.clip(np.where(a < 0.5, 1.0 - a, a), 0.5, 1.0 - 1e-9)
    p, n = np.asarray(n_pos, dtype=np.float64), np.asarray(n_neg, dtype=np.float64)
    if shape == "exponential":
        q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    elif shape == "binormal":
        q1 = q2 = _q_binormal(a)
    else:
        raise ValueError(f"unknown shape {shape!r}: binormal or exponential")
    with np.errstate(divide="ignore", invalid="ignore"):
        v = (a * (1 - a) + (p - 1) * (q1 - a * a) + (n - 1) * (q2 - a * a)) / (p * n)
    return np.where((p > 0) & (n > 0), np.maximum(v, 1e-12), np.nan)


def hanley_mcneil_variance(auroc: Any, n_pos: Any, n_neg: Any) -> np.ndarray:
    """Hanley and McNeil's own variance (exponential ``Q1``, ``Q2``)."""
    return auroc_variance(auroc, n_pos, n_neg, "exponential")


def _mean_variance(v: np.ndarray, cross: np.ndarray | None) -> float:
    """Variance of the mean of K estimates with variances ``v`` and correlation matrix ``cross``."""
    s = np.sqrt(v)
    c = np.eye(v.size) if cross is None else np.asarray(cross, dtype=np.float64)
    return float(s @ c @ s) / v.size**2


def _z(alpha: float, alternative: str) -> float:
    return float(norm.ppf(1 - alpha / 2 if alternative == "two-sided" else 1 - alpha))


def power_of(diff: float, auroc: Any, n_pos: Any, n_neg: Any, r: float, *, alpha: float = 0.05,
             alternative: str = "two-sided", cross: np.ndarray | None = None,
             extra_var: tuple[float, float] = (0.0, 0.0), shape: str = "binormal",
             critical: str = "observed") -> float:
    """Power of the paired test at level ``alpha`` to detect ``diff`` (model minus reference) when the
    reference scores ``auroc`` (one value, or one per finding of a mean) on ``n_pos``/``n_neg``
    (``shape``: the variance model of :func:`auroc_variance`; ``critical``: ``observed`` for a Wald test
    whose critical value uses the variance at the observed AUROCs, as DeLong's test and the paired
    bootstrap do, or ``null`` for Obuchowski's variance under the null)."""
    a0 = np.atleast_1d(np.asarray(auroc, dtype=np.float64))
    a1 = np.clip(a0 + diff, 0.0, 1.0)
    v0 = auroc_variance(a0, n_pos, n_neg, shape)
    v1 = auroc_variance(a1, n_pos, n_neg, shape)
    if not (np.all(np.isfinite(v0)) and np.all(np.isfinite(v1))):
        return float("nan")
    va = _mean_variance(v1, cross) + extra_var[0]
    vb = _mean_variance(v0, cross) + extra_var[1]
    rho = float(np.clip(r, -0.999, 0.999)) if math.isfinite(r) else 0.0
    alt = max(va + vb - 2.0 * rho * math.sqrt(va * vb), 1e-15)
    null = max(2.0 * vb * (1.0 - rho), 1e-15) if critical == "null" else alt
    z = _z(alpha, alternative)
    d = abs(float(np.mean(a1 - a0)))
    out = float(norm.cdf((d - z * math.sqrt(null)) / math.sqrt(alt)))
    if alternative == "two-sided":
        out += float(norm.cdf((-d - z * math.sqrt(null)) / math.sqrt(alt)))
    return out


def min_detectable_difference(auroc: Sequence[float] | float, n_pos: Sequence[float] | float,
                              n_neg: Sequence[float] | float, r: float = 0.0, *, alpha: float = 0.05,
                              power: float = POWER, alternative: str = "two-sided",
                              cross: np.ndarray | None = None,
                              extra_var: tuple[float, float] = (0.0, 0.0), shape: str = "binormal",
                              critical: str = "observed") -> float:
    """The smallest AUROC improvement over the reference the paired test detects with ``power``
    (NaN when the counts are missing or no improvement up to an AUROC of 1 is detectable)."""
    a0 = np.atleast_1d(np.asarray(auroc, dtype=np.float64))
    if not np.all(np.isfinite(a0)) or a0.size == 0:
        return float("nan")
    top = float(1.0 - a0.max())
    kw: dict[str, Any] = {"alpha": alpha, "alternative": alternative, "cross": cross, "extra_var": extra_var,
                          "shape": shape, "critical": critical}
    hi_power = power_of(top, a0, n_pos, n_neg, r, **kw)
    if not math.isfinite(hi_power) or hi_power < power:
        return float("nan")
    lo, hi = 0.0, top
    for _ in range(60):
        mid = (lo + hi) / 2
        if power_of(mid, a0, n_pos, n_neg, r, **kw) >= power:
            hi = mid
        else:
            lo = mid
    return hi


def patients_needed(diff: float, auroc: float, prevalence: float, r: float = 0.5, *, alpha: float = 0.05,
                    power: float = POWER, alternative: str = "two-sided",
                    images_per_patient: float = 1.0) -> int | None:
    """Test patients a paired comparison needs to detect ``diff`` at ``auroc`` with ``power``, when a
    share ``prevalence`` of the images is positive (``images_per_patient`` images each, counted as
    independent). None when no test set under ten million patients is enough."""
    if not (0 < prevalence < 1 and diff > 0 and auroc + diff <= 1):
        return None

    def enough(n: int) -> bool:
        images = n * images_per_patient
        return power_of(diff, auroc, images * prevalence, images * (1 - prevalence), r, alpha=alpha,
                        alternative=alternative) >= power

    if not enough(_MAX_PATIENTS):
        return None
    lo, hi = 1, 2
    while not enough(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return hi


def implied_correlation(se_diff: float, auroc_a: float, auroc_b: float, n_pos: float,
                        n_neg: float) -> float:
    """The correlation of two AUROC estimates that makes the Hanley-McNeil variances give the observed
    standard error of their difference (binormal variances), for comparisons stored without it; clipped
    to [-1, 1]."""
    va, vb = (float(auroc_variance(x, n_pos, n_neg)) for x in (auroc_a, auroc_b))
    if not all(math.isfinite(v) and v > 0 for v in (va, vb, se_diff)):
        return float("nan")
    return float(np.clip((va + vb - se_diff**2) / (2 * math.sqrt(va * vb)), -1.0, 1.0))


def simulate_binormal(auroc_a: float, auroc_b: float, n_pos: int, n_neg: int, rho: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One paired test set under the binormal model: labels ``y`` and the scores of two models whose
    AUROCs are ``auroc_a`` and ``auroc_b`` (unit-variance normals, separation ``sqrt(2) Phi^-1(A)``),
    their scores correlated ``rho`` within each class. For checking the power formulas."""
    mu_a, mu_b = (math.sqrt(2.0) * float(norm.ppf(a)) for a in (auroc_a, auroc_b))
    cov = np.array([[1.0, rho], [rho, 1.0]])
    neg = rng.multivariate_normal([0.0, 0.0], cov, size=n_neg)
    pos = rng.multivariate_normal([mu_a, mu_b], cov, size=n_pos)
    y = np.r_[np.zeros(n_neg), np.ones(n_pos)]
    s = np.vstack([neg, pos])
    return y, s[:, 0], s[:, 1]

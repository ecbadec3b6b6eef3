"""The power of a paired AUROC comparison (stats.power), checked against its formulas and a simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm

from cxrbench.stats import power as pw
from cxrbench.stats.metrics import auroc
from cxrbench.stats.significance import delong_test


def test_variances_follow_hanley_mcneil_and_the_binormal_model():
    # A = 0.5: Q1 = Q2 = 1/3 under both models, so V = (1/4 + (p + n - 2) / 12) / (p n)
    for shape in ("binormal", "exponential"):
        v = float(pw.auroc_variance(0.5, 40, 60, shape))
        assert v == pytest.approx((0.25 + (40 + 60 - 2) / 12) / (40 * 60))
    # the binormal Q is the bivariate normal probability Phi2(h, h; 1/2)
    a, p, n = 0.83, 50, 200
    h = norm.ppf(a)
    q = multivariate_normal(mean=[0, 0], cov=[[1, 0.5], [0.5, 1]]).cdf([h, h])
    want = (a * (1 - a) + (p - 1) * (q - a * a) + (n - 1) * (q - a * a)) / (p * n)
    assert float(pw.auroc_variance(a, p, n)) == pytest.approx(want, rel=1e-6)
    assert float(pw.auroc_variance(1 - a, p, n)) == pytest.approx(want, rel=1e-9)  # symmetric
    assert float(pw.hanley_mcneil_variance(a, p, n)) > want  # exponential tails: more conservative
    assert np.isnan(pw.auroc_variance(0.8, 0, 10))


def test_the_minimum_detectable_difference_has_the_stated_power_and_moves_the_right_way():
    mdd = pw.min_detectable_difference(0.8, 100, 300, 0.5)
    assert 0 < mdd < 0.2
    assert pw.power_of(mdd, 0.8, 100, 300, 0.5) == pytest.approx(0.8, abs=1e-6)
    assert pw.min_detectable_difference(0.8, 400, 1200, 0.5) < mdd  # more images: smaller
    assert pw.min_detectable_difference(0.8, 100, 300, 0.8) < mdd  # more correlated: smaller
    assert pw.min_detectable_difference(0.8, 100, 300, 0.5, alpha=0.01) > mdd
    assert pw.min_detectable_difference(0.8, 100, 300, 0.5, alternative="greater") < mdd
    assert pw.min_detectable_difference(0.8, 100, 300, 0.5, extra_var=(1e-3, 1e-3)) > mdd  # seed variance
    assert np.isnan(pw.min_detectable_difference(0.99, 3, 3, 0.0))  # nothing up to AUROC 1 is detectable
    # a mean over findings that are independent is easier to move than one finding
    assert pw.min_detectable_difference([0.8, 0.8, 0.8], [100] * 3, [300] * 3, 0.5) < mdd
    # ... and no easier than one finding when they are perfectly correlated
    same = pw.min_detectable_difference([0.8, 0.8], [100] * 2, [300] * 2, 0.5, cross=np.ones((2, 2)))
    assert same == pytest.approx(mdd, rel=1e-6)


def test_patients_needed_is_the_smallest_test_set_that_detects_the_difference():
    n = pw.patients_needed(0.05, 0.8, 0.2, 0.5)
    assert n is not None and n > 100
    assert pw.min_detectable_difference(0.8, 0.2 * n, 0.8 * n, 0.5) <= 0.05 + 1e-9
    assert pw.min_detectable_difference(0.8, 0.2 * (n - 1), 0.8 * (n - 1), 0.5) > 0.05
    assert pw.patients_needed(0.05, 0.8, 0.2, 0.5, images_per_patient=2) == pytest.approx(n / 2, abs=1)
    assert pw.patients_needed(0.3, 0.8, 0.2) is None  # beyond AUROC 1


def test_implied_correlation_recovers_the_correlation_behind_a_standard_error():
    va, vb = (float(pw.auroc_variance(a, 80, 320)) for a in (0.84, 0.8))
    se = np.sqrt(va + vb - 2 * 0.6 * np.sqrt(va * vb))
    assert pw.implied_correlation(se, 0.84, 0.8, 80, 320) == pytest.approx(0.6)


def test_the_minimum_detectable_difference_has_about_80_percent_power_in_a_simulation():
    """Binormal test sets: the correlation of the two AUROCs is measured under the null, then DeLong's
    test at the minimum detectable difference rejects in about 80% of 300 simulated studies."""
    rng = np.random.default_rng(7)
    n_pos, n_neg, a0, rho = 80, 240, 0.8, 0.6
    null = np.array([[auroc(y, a), auroc(y, b)] for y, a, b in
                     (pw.simulate_binormal(a0, a0, n_pos, n_neg, rho, rng) for _ in range(200))])
    r = float(np.corrcoef(null.T)[0, 1])
    mdd = pw.min_detectable_difference(a0, n_pos, n_neg, r)
    hits = [delong_test(*pw.simulate_binormal(a0 + mdd, a0, n_pos, n_neg, rho, rng))["p_delong"] < 0.05
            for _ in range(300)]
    assert 0.72 <= float(np.mean(hits)) <= 0.90

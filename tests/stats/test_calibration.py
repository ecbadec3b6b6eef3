"""cxrbench.stats.calibration against scikit-learn (calibration_curve, brier_score_loss, an unpenalized
LogisticRegression on logit(p), IsotonicRegression), a brute-force temperature, and a slow bootstrap loop."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss

from cxrbench.common.errors import InputError
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import calibration as cal


def make(seed: int = 0, n: int = 400, decimals: int | None = 2, shift: float = -0.3, scale: float = 1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    p = cal.sigmoid(scale * (1.5 * (2 * y - 1) + rng.normal(size=n) * 1.2) + shift)
    return y, (np.round(p, decimals) if decimals is not None else p)


@pytest.mark.parametrize("n_bins", [4, 10, 15])
@pytest.mark.parametrize("decimals", [None, 2, 1])
def test_reliability_and_ece_equal_sklearn_quantile_bins(n_bins, decimals):
    y, p = make(1, decimals=decimals)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy="quantile")
    curve = cal.reliability_curve(y, p, n_bins)
    np.testing.assert_allclose(curve["fraction_positive"], prob_true, atol=1e-12)
    np.testing.assert_allclose(curve["mean_predicted"], prob_pred, atol=1e-12)
    edges = np.percentile(p, np.linspace(0, 1, n_bins + 1) * 100)
    counts = np.bincount(np.searchsorted(edges[1:-1], p), minlength=n_bins)
    counts = counts[counts > 0]
    np.testing.assert_array_equal(curve["n"], counts)
    expected = np.sum(counts * np.abs(prob_true - prob_pred)) / len(y)
    assert cal.ece(y, p, n_bins) == pytest.approx(expected, abs=1e-12)


def test_ece_hand_case_and_unknown_labels():
    y = np.array([0, 0, 1, 1, np.nan])
    p = np.array([0.1, 0.3, 0.6, 0.8, 0.99])
    # two equal-mass bins over the four known: {0.1, 0.3} (0 positives), {0.6, 0.8} (2 positives)
    assert cal.ece(y, p, 2) == pytest.approx((2 * 0.2 + 2 * 0.3) / 4)
    assert cal.brier_score(y, p) == pytest.approx(np.mean([0.01, 0.09, 0.16, 0.04]))
    assert np.isnan(cal.ece(np.full(3, np.nan), np.ones(3)))


def test_brier_equals_sklearn():
    y, p = make(2)
    assert cal.brier_score(y, p) == pytest.approx(brier_score_loss(y, p), abs=1e-15)


@pytest.mark.parametrize("seed,scale,shift", [(3, 1.0, -0.3), (4, 0.4, 0.5), (5, 2.5, -1.0)])
def test_slope_and_intercept_equal_an_unpenalized_logistic_fit(seed, scale, shift):
    y, p = make(seed, decimals=None, scale=scale, shift=shift)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(cal.logit(p)[:, None], y)
    slope, intercept = cal.calibration_slope_intercept(y, p)
    assert slope == pytest.approx(lr.coef_[0][0], abs=1e-6)
    assert intercept == pytest.approx(lr.intercept_[0], abs=1e-6)


def test_perfect_calibration_gives_slope_one_and_separable_data_nan():
    rng = np.random.default_rng(6)
    p = rng.uniform(0.02, 0.98, 20_000)
    y = (rng.random(p.size) < p).astype(float)
    slope, intercept = cal.calibration_slope_intercept(y, p)
    assert abs(slope - 1) < 0.06 and abs(intercept) < 0.06
    separable = cal.calibration_slope_intercept(np.array([0, 0, 1, 1.0]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert np.isnan(separable[0])
    assert np.isnan(cal.calibration_slope_intercept(np.zeros(4), np.full(4, 0.5))[0])


@pytest.mark.parametrize("cluster", ["image", "patient"])
def test_bootstrap_ece_and_brier_equal_a_slow_loop(cluster):
    rng = np.random.default_rng(7)
    y1, p1 = make(8, n=300)
    y2 = np.where(rng.random(300) < 0.1, np.nan, (rng.random(300) < 0.5).astype(float))
    labels, probs = np.stack([y1, y2], 1), np.stack([p1, np.round(rng.random(300), 1)], 1)
    ids = [f"i{i:04d}" for i in range(300)]
    r = bs.make_resamples(ids, [f"p{i // 3:03d}" for i in range(300)], 40, seed=2, cluster=cluster)
    got = cal.bootstrap_calibration(labels, probs, r, n_bins=10, memory_bytes=300 * 32 * 7)  # several chunks
    worst = 0.0
    for b in range(40):
        idx = r.indices(b)
        for j in range(2):
            worst = max(worst, abs(got["ece"][b, j] - cal.ece(labels[idx, j], probs[idx, j], 10)),
                        abs(got["brier"][b, j] - cal.brier_score(labels[idx, j], probs[idx, j])))
    assert worst < 1e-12


def test_platt_and_isotonic_equal_sklearn_and_temperature_minimizes_the_log_loss():
    rng = np.random.default_rng(9)
    z = 1.5 * rng.normal(size=2000)
    y = (rng.random(z.size) < cal.sigmoid(z)).astype(float)
    p = cal.sigmoid(2.5 * z)  # over-confident: the right temperature is about 2.5
    yv, pv, pt = y[:1000], p[:1000], p[1000:]
    platt = cal.fit_recalibration("platt", yv, pv)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(cal.logit(pv)[:, None], yv)
    np.testing.assert_allclose(platt.apply(pt), lr.predict_proba(cal.logit(pt)[:, None])[:, 1], atol=1e-6)
    iso = cal.fit_recalibration("isotonic", yv, pv)
    ref = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(pv, yv)
    np.testing.assert_allclose(iso.apply(np.r_[pt, 0.0, 1.0]), ref.predict(np.r_[pt, 0.0, 1.0]), atol=1e-12)
    temp = cal.fit_recalibration("temperature", yv, pv)
    t = temp.params["temperature"]
    z = cal.logit(pv)
    grid = t * np.exp(np.linspace(-0.01, 0.01, 2001))
    nll = [np.sum(np.logaddexp(0, z / g) - yv * z / g) for g in grid]
    assert abs(grid[int(np.argmin(nll))] - t) / t < 2e-5 and 2.0 < t < 3.0
    assert cal.ece(y[1000:], temp.apply(pt)) < 0.5 * cal.ece(y[1000:], pt)
    np.testing.assert_allclose(temp.apply(pt), cal.sigmoid(cal.logit(pt) / t))


def test_recalibration_without_two_classes_is_the_identity_and_bad_method_is_refused():
    r = cal.fit_recalibration("platt", np.zeros(5), np.full(5, 0.3))
    assert r.params == {} and np.array_equal(r.apply(np.array([0.2, 0.7])), [0.2, 0.7])
    with pytest.raises(InputError, match="did you mean 'platt'"):
        cal.fit_recalibration("plat", np.zeros(2), np.zeros(2))
    assert cal.is_probability(np.array([0.0, 1.0, np.nan])) and not cal.is_probability(np.array([-0.1, 0.5]))

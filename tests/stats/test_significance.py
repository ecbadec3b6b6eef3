"""cxrbench.stats: DeLong against pROC's published aSAH results, BH against scipy, bootstrap tests."""

import numpy as np
import pytest
from scipy import stats as sps

from cxrbench.stats import bootstrap as bs
from cxrbench.stats import significance as st

# pROC's `aSAH` data set (113 patients with aneurysmal subarachnoid haemorrhage; Turck et al. 2010,
# Intensive Care Med 36:107), in pROC's row order: outcome (1 = Poor, the positive class), WFNS
# grade, s100b and ndka. Reference values below are from pROC's tests/testthat (roc.test, var).
ASAH_POOR = (
    "000011010010110010111010000000001001101100000000011000100010"
    "10011101101111000110100000010000000000001111110001000"
)
ASAH_WFNS = """
    1 1 1 1 3 2 5 4 1 2 5 2 5 5 1 2 5 2 2 5 2 1 1 1 1 2 1 2 1 1 3 4 2 1 4 5 4 1 4 2 5 5 1 1 2 4 1 1
    2 5 5 2 1 2 5 1 2 2 2 1 5 1 1 2 5 2 1 4 5 2 4 4 1 4 1 2 1 4 2 1 2 3 2 4 2 1 4 5 1 1 5 4 2 2 1 1
    1 3 1 2 5 2 2 5 5 5 2 4 4 5 1 1 1
"""
ASAH_S100B = """
    0.13 0.14 0.1 0.04 0.13 0.1 0.47 0.16 0.18 0.1 0.12 0.1 0.44 0.71 0.04 0.08 0.49 0.04 0.07 0.33
    0.09 0.09 0.07 0.11 0.07 0.17 0.07 0.11 0.13 0.19 0.05 0.16 0.41 0.14 0.34 0.35 0.48 0.09 0.96
    0.25 0.5 0.46 0.16 0.07 0.43 0.45 0.11 0.08 0.09 0.86 0.52 0.08 0.06 0.13 2.07 0.1 0.14 0.15
    0.07 0.06 0.77 0.05 0.09 0.3 0.03 0.09 0.04 0.23 0.7 0.09 0.27 0.71 0.08 0.26 0.08 0.16 0.09
    0.13 0.1 0.08 0.11 0.33 0.11 0.28 0.07 0.1 0.32 0.22 0.07 0.05 0.24 0.38 0.1 0.15 0.08 0.14 0.1
    0.07 0.04 0.19 0.56 0.14 0.58 0.32 0.82 0.74 0.15 0.47 0.17 0.44 0.15 0.5 0.48
"""
ASAH_NDKA = """
    3.01 8.54 8.09 10.42 17.4 12.75 6.0 13.2 15.54 6.01 15.96 17.86 5.18 8.9 13.41 20.75 11.6 16.11
    32.37 54.82 32.41 49.94 40.34 9.47 6.29 12.53 6.54 6.3 80.3 12.8 9.8 9.81 9.85 18.21 5.03 14.04
    21.93 8.02 7.42 8.38 6.59 9.63 13.12 7.96 14.34 41.43 7.63 7.06 12.59 13.56 3.87 9.44 7.66 12.98
    419.19 27.19 22.27 9.95 21.22 11.73 10.4 58.83 6.39 11.09 12.22 13.67 17.21 22.63 12.9 9.7 21.57
    8.23 72.57 15.54 10.51 10.6 14.57 5.19 9.63 4.61 21.48 17.3 12.71 9.44 11.07 19.46 10.83 5.37
    11.97 7.75 9.83 10.55 28.49 8.53 12.57 12.9 46.83 11.68 12.67 9.01 9.57 34.06 11.72 14.26 47.61
    11.67 24.58 10.33 13.87 15.89 22.43 6.79 13.45
"""
Y = np.array([float(c) for c in ASAH_POOR])
MARKERS = {name: np.array(text.split(), dtype=float)
           for name, text in (("wfns", ASAH_WFNS), ("s100b", ASAH_S100B), ("ndka", ASAH_NDKA))}


def test_asah_data_is_complete():
    assert Y.size == 113 and Y.sum() == 41
    assert all(v.size == 113 for v in MARKERS.values())


@pytest.mark.parametrize("a,b,z,p,lo,hi", [
    ("wfns", "s100b", 2.20898359144091, 0.0271757822291882, 0.0104061769564846, 0.174214419249478),
    ("wfns", "ndka", 2.79777591868904, 0.00514557970691098, 0.0634011709339876, 0.3600405634833566),
    ("ndka", "s100b", -1.39077002573558, 0.164295175223054, -0.2876917446341914, 0.0488706064228094),
])
def test_delong_reproduces_proc_roc_test(a, b, z, p, lo, hi):
    r = st.delong_test(Y, MARKERS[a], MARKERS[b])
    assert r["z"] == pytest.approx(z, rel=1e-10)
    assert r["p_delong"] == pytest.approx(p, rel=1e-10)
    assert r["delong_lo"] == pytest.approx(lo, rel=1e-10)
    assert r["delong_hi"] == pytest.approx(hi, rel=1e-10)
    assert st.delong_test(Y, MARKERS[b], MARKERS[a])["z"] == pytest.approx(-z, rel=1e-10)


def test_delong_one_sided_aucs_and_variances_match_proc():
    r = st.delong_test(Y, MARKERS["wfns"], MARKERS["s100b"], alternative="greater")
    assert r["p_delong"] == pytest.approx(0.0135878911145941, rel=1e-10)
    auc, cov = st.delong_covariance(Y, np.stack([MARKERS["wfns"], MARKERS["ndka"], MARKERS["s100b"]]))
    np.testing.assert_allclose(auc[:2], [0.823678861788618, 0.611957994579946], rtol=1e-12)
    np.testing.assert_allclose(np.diag(cov), [0.00146991470882363, 0.0031908105493913, 0.00266868245717244],
                               rtol=1e-10)
    same = st.delong_test(Y, MARKERS["wfns"], MARKERS["wfns"])
    assert same["z"] == 0.0 and same["p_delong"] == 1.0


def brute_force_delong(y, a, b):
    """DeLong et al. (1988) structural components by explicit pairwise kernels, O(n^2)."""
    comps = []
    for s in (a, b):
        pos, neg = s[y == 1], s[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        comps.append((psi.mean(axis=1), psi.mean(axis=0)))
    m, n = comps[0][0].size, comps[0][1].size
    s10 = np.cov([comps[0][0], comps[1][0]])
    s01 = np.cov([comps[0][1], comps[1][1]])
    cov = s10 / m + s01 / n
    diff = comps[0][0].mean() - comps[1][0].mean()
    return diff / np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])


@pytest.mark.parametrize("seed", range(3))
def test_fast_delong_equals_quadratic_definition_with_ties_and_masking(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(200) < 0.35).astype(float)
    a = np.round(rng.normal(size=200) + y, 1)
    b = np.round(0.5 * a + rng.normal(size=200) + 0.5 * y, 1)
    z = brute_force_delong(y, a, b)
    assert st.delong_test(y, a, b)["z"] == pytest.approx(z, rel=1e-10)
    y_nan = y.copy()
    y_nan[:20] = np.nan  # unknown labels are masked out, not treated as negatives
    assert st.delong_test(y_nan, a, b)["z"] == pytest.approx(brute_force_delong(y[20:], a[20:], b[20:]),
                                                              rel=1e-10)
    assert np.isnan(st.delong_test(np.zeros(10), a[:10], b[:10])["z"])


def test_single_auroc_delong_ci():
    auc, lo, hi = st.delong_auroc_ci(Y, MARKERS["ndka"])
    # pROC: ci(r.ndka) with the DeLong method
    assert (lo, hi) == pytest.approx((0.501244999271703, 0.722670989888189), rel=1e-10)
    assert lo < auc < hi


@pytest.mark.parametrize("seed", range(4))
def test_bh_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    p = rng.random(25) ** 3
    p[:3] = p[3]  # ties
    np.testing.assert_allclose(st.benjamini_hochberg(p), sps.false_discovery_control(p, method="bh"),
                               rtol=0, atol=1e-15)


def test_bh_nan_entries_stay_out_of_the_family():
    p = np.array([0.01, np.nan, 0.04, 0.03])
    q = st.benjamini_hochberg(p)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[[0, 2, 3]], sps.false_discovery_control([0.01, 0.04, 0.03]))
    assert np.isnan(st.benjamini_hochberg(np.array([np.nan]))).all()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        st.benjamini_hochberg(np.array([0.5, 1.5]))


def test_bootstrap_p_value_constructions():
    d = np.r_[np.full(90, 0.02), np.full(10, -0.01), np.nan]
    assert st.bootstrap_p_value(d, "greater") == pytest.approx(0.10)
    assert st.bootstrap_p_value(d) == pytest.approx(0.20)
    assert st.bootstrap_p_value(-d) == pytest.approx(0.20)
    assert st.bootstrap_p_value(np.zeros(50)) == 1.0  # identical models
    assert st.bootstrap_p_value(np.full(50, 0.1)) == 0.0  # report as p < 1/B
    assert np.isnan(st.bootstrap_p_value(np.full(3, np.nan)))


def test_paired_bootstrap_identical_models_and_ci():
    diff = st.paired_bootstrap(np.full(20, 0.8), np.full(20, 0.8), 0.8, 0.8)
    assert (diff["diff"], diff["diff_lo"], diff["diff_hi"], diff["p_bootstrap"]) == (0.0, 0.0, 0.0, 1.0)
    a = np.linspace(0.7, 0.9, 101)
    out = st.paired_bootstrap(a, np.full(101, 0.75), 0.8, 0.75)
    assert out["diff"] == pytest.approx(0.05)
    assert out["diff_lo"] == pytest.approx(np.quantile(a - 0.75, 0.025))
    assert out["p_bootstrap"] == pytest.approx(2 * np.mean(a - 0.75 <= 0))


def test_paired_bootstrap_and_delong_agree_on_a_large_set():
    """Two routes to the same question: their p-values should be close when n is large."""
    rng = np.random.default_rng(0)
    n = 3000
    y = (rng.random(n) < 0.3).astype(float)
    a = rng.normal(size=n) + 1.0 * y
    b = a + rng.normal(size=n) * 0.2  # a slightly noisier copy: a small, correlated difference
    r = bs.make_resamples([str(i) for i in range(n)], n_resamples=1000, seed=1)
    boot = bs.bootstrap_auroc(y[:, None], np.stack([a, b])[:, :, None], r)
    dl = st.delong_test(y, a, b)
    pb = st.paired_bootstrap(boot[0, :, 0], boot[1, :, 0], dl["auroc_a"], dl["auroc_b"])
    assert 0.05 < dl["p_delong"] < 0.5  # a case where the p-value is informative
    assert abs(pb["diff_std"] - dl["se"]) < 0.15 * dl["se"]
    assert abs(pb["p_bootstrap"] - dl["p_delong"]) < 0.06

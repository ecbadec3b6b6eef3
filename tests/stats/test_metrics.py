"""cxrbench.metrics against scikit-learn, brute-force definitions, invariances and hand answers."""

import numpy as np
import pytest
from sklearn import metrics as skm

from cxrbench.common.errors import InputError
from cxrbench.stats import metrics as mt


def tied_data(seed: int, n: int = 300, prevalence: float = 0.3, nan_rate: float = 0.1):
    """Labels with NaN and scores rounded to one decimal (many ties, also across classes)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(float)
    s = np.round(rng.normal(size=n) + y, 1)
    y[rng.random(n) < nan_rate] = np.nan
    return y, s


def known(y, s):
    m = ~np.isnan(y)
    return y[m].astype(int), s[m]


def brute_force_auroc(y, s):
    yk, sk = known(y, s)
    pos, neg = sk[yk == 1], sk[yk == 0]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size


def test_toy_auroc_hand_answer():
    # scikit-learn's documentation example: 3 of 4 positive-negative pairs ordered correctly
    assert mt.auroc(np.array([0, 0, 1, 1.0]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert mt.auroc(np.array([0, 1.0]), np.array([0.5, 0.5])) == 0.5


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_and_mann_whitney_with_ties(seed):
    y, s = tied_data(seed)
    yk, sk = known(y, s)
    assert abs(mt.auroc(y, s) - skm.roc_auc_score(yk, sk)) < 1e-12
    assert abs(mt.auroc(y, s) - brute_force_auroc(y, s)) < 1e-12


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("drop", [True, False])
def test_roc_curve_matches_sklearn(seed, drop):
    y, s = tied_data(seed)
    fpr, tpr, thr = mt.roc_curve(y, s, drop_intermediate=drop)
    efpr, etpr, ethr = skm.roc_curve(*known(y, s), drop_intermediate=drop)
    np.testing.assert_allclose(fpr, efpr, atol=1e-15)
    np.testing.assert_allclose(tpr, etpr, atol=1e-15)
    np.testing.assert_array_equal(thr, ethr)


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_sklearn(seed):
    y, s = tied_data(seed, prevalence=0.15)
    assert abs(mt.average_precision(y, s) - skm.average_precision_score(*known(y, s))) < 1e-12


@pytest.mark.parametrize("seed", range(4))
def test_threshold_metrics_match_sklearn(seed):
    y, s = tied_data(seed)
    yk, sk = known(y, s)
    t = float(np.median(sk))
    pred = (sk >= t).astype(int)
    tp, fp, tn, fn = mt.confusion(y, s, t)
    etn, efp, efn, etp = skm.confusion_matrix(yk, pred).ravel()
    assert (tp, fp, tn, fn) == (etp, efp, etn, efn)
    got = mt.threshold_metrics(tp, fp, tn, fn)
    expected = {
        "accuracy": skm.accuracy_score(yk, pred),
        "sensitivity": skm.recall_score(yk, pred),
        "specificity": skm.recall_score(yk, pred, pos_label=0),
        "ppv": skm.precision_score(yk, pred),
        "npv": skm.precision_score(yk, pred, pos_label=0),
        "f1": skm.f1_score(yk, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(yk, pred),
    }
    assert set(got) == set(mt.THRESHOLD_METRICS)
    for name, value in expected.items():
        assert abs(float(got[name]) - value) < 1e-12, name


def test_threshold_metrics_zero_denominator_is_nan_elementwise():
    got = mt.threshold_metrics(np.array([0, 3]), np.array([0, 1]), np.array([5, 2]), np.array([2, 0]))
    assert np.isnan(got["ppv"][0]) and got["ppv"][1] == 0.75
    assert got["sensitivity"][0] == 0.0 and got["npv"][0] == 5 / 7


@pytest.mark.parametrize("seed", range(4))
def test_youden_matches_reference_study_rule(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.3).astype(float)
    s = rng.normal(size=400) + y  # continuous: no ties of J
    fpr, tpr, thr = skm.roc_curve(y, s)
    t, j = mt.youden_threshold(y, s)
    assert t == thr[np.argmax(tpr - fpr)]
    assert abs(j - np.max(tpr - fpr)) < 1e-12
    tp, fp, tn, fn = mt.confusion(y, s, t)
    assert abs(tp / (tp + fn) + tn / (tn + fp) - 1 - j) < 1e-12


def test_youden_tie_takes_highest_threshold_and_inf_when_useless():
    # J = 0.5 at t=0.8 (tpr .5, fpr 0) and at t=0.3 (tpr 1, fpr .5): the higher threshold wins
    y = np.array([1, 1, 0, 0.0])
    assert mt.youden_threshold(y, np.array([0.8, 0.3, 0.3, 0.1]))[0] == 0.8
    # a score that ranks every negative above every positive: J <= 0, nothing predicted positive
    t, j = mt.youden_threshold(y, np.array([0.1, 0.2, 0.8, 0.9]))
    assert t == np.inf and j == 0.0


@pytest.mark.parametrize("seed", range(3))
def test_invariance_to_monotone_transform_and_permutation(seed):
    y, s = tied_data(seed)
    base_auc, base_ap = mt.auroc(y, s), mt.average_precision(y, s)
    transformed = 1 / (1 + np.exp(-3 * s))  # strictly increasing: same order, same ties
    assert abs(mt.auroc(y, transformed) - base_auc) < 1e-12
    assert abs(mt.average_precision(y, transformed) - base_ap) < 1e-12
    perm = np.random.default_rng(seed + 10).permutation(y.size)
    assert abs(mt.auroc(y[perm], s[perm]) - base_auc) < 1e-12
    assert abs(mt.average_precision(y[perm], s[perm]) - base_ap) < 1e-12
    assert abs(mt.auroc(y, -s) - (1 - base_auc)) < 1e-12


def test_nan_labels_are_masked_not_negative():
    y = np.array([1, 0, np.nan, 1, 0])
    s = np.array([0.9, 0.1, 0.95, 0.8, 0.85])
    assert mt.auroc(y, s) == mt.auroc(np.array([1, 0, 1, 0.0]), np.array([0.9, 0.1, 0.8, 0.85]))
    assert mt.class_counts(y) == {"n": 4, "n_positive": 2, "n_negative": 2, "n_unknown": 1}


def test_one_class_is_nan_with_warning_not_a_crash():
    y = np.array([0, 0, np.nan, 0.0])
    s = np.array([0.1, 0.2, 0.3, 0.4])
    assert mt.not_estimable_reason(y) == "no positives"
    assert mt.not_estimable_reason(np.array([1.0, np.nan])) == "no negatives"
    with pytest.warns(mt.UndefinedMetricWarning, match="no positives"):
        assert np.isnan(mt.auroc(y, s))
    with pytest.warns(mt.UndefinedMetricWarning):
        assert np.isnan(mt.youden_threshold(y, s)[0])
    pm = mt.point_metrics(y, s, threshold=0.5)
    assert set(pm) == {"auroc", "average_precision", *mt.THRESHOLD_METRICS}
    assert all(np.isnan(v) for v in pm.values())


def test_check_labels_scores_messages():
    ids = np.array(["a", "b", "c"])
    with pytest.raises(InputError, match=r"label 2\.0 at image 'b'"):
        mt.check_labels_scores(np.array([1, 2, 0.0]), np.array([0.1, 0.2, 0.3]), ids=ids)
    with pytest.raises(InputError, match=r"score nan at image 'c' is not finite"):
        mt.check_labels_scores(np.array([1, 0, 0.0]), np.array([0.1, 0.2, np.nan]), ids=ids)
    with pytest.raises(InputError, match=r"score inf at row 1"):
        mt.check_labels_scores(np.array([1, 0.0]), np.array([np.inf, 0.2]))
    # a score next to an unknown label is never used, so it may be missing
    y, s = mt.check_labels_scores(np.array([1, np.nan, 0.0]), np.array([0.1, np.nan, 0.3]))
    assert y.dtype == np.float64 and np.isnan(s[1])
    with pytest.raises(InputError, match="same length"):
        mt.check_labels_scores(np.zeros(3), np.zeros(2))

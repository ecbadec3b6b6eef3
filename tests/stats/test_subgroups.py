"""cxrbench.stats.subgroups: per-subgroup metrics equal scikit-learn on each subgroup and on every
explicit resample; gaps, underdiagnosis, too-few marking and prevalence matching by hand."""

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from cxrbench.stats import bootstrap as bs
from cxrbench.stats import subgroups as sg
from cxrbench.stats.significance import bootstrap_p_value

FINDINGS = ["cardiomegaly", "no_finding"]


def make_set(seed: int = 0, n: int = 300, decimals: int = 2):
    """Labels with NaN, rounded scores (ties), sex/view/age groups with different signal strength."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["F", "M"], n)
    view = rng.choice(["PA", "AP", "LATERAL"], n, p=[0.5, 0.4, 0.1])
    age = rng.uniform(20, 95, n)
    age[rng.random(n) < 0.05] = np.nan
    y = (rng.random((n, 2)) < [0.3, 0.5]).astype(float)
    signal = np.where(sex == "F", 2.0, 0.7)[:, None]
    s = np.round(1 / (1 + np.exp(-(signal * (2 * y - 1) + rng.normal(size=(n, 2))))), decimals)
    y[rng.random((n, 2)) < 0.06] = np.nan
    ids = [f"img{i:04d}" for i in range(n)]
    pids = [f"pat{i // 3:04d}" for i in range(n)]
    groups = {"sex": sex, "view": view, "age": sg.age_bands(age)}
    return y, s, ids, pids, groups


def test_age_bands_and_labels():
    got = sg.age_bands([12, 40, 59.9, 60, 80, 95, np.nan, None])
    assert list(got) == ["<40", "40-60", "40-60", "60-80", ">=80", ">=80", "unknown", "unknown"]
    assert list(sg.age_bands([30, 50.5], edges=(50.5,))) == ["<50.5", ">=50.5"]
    assert list(sg.subgroup_labels(["PA", None, np.nan, " ", "AP "])) == ["PA", "unknown", "unknown",
                                                                           "unknown", "AP"]
    with pytest.raises(ValueError, match="increasing"):
        sg.age_bands([1.0], edges=(60, 40))


def test_point_estimates_equal_sklearn_on_each_subgroup():
    y, s, ids, pids, groups = make_set(0)
    thr = np.array([0.5, 0.45])
    res = sg.subgroup_metrics(y, s, FINDINGS, groups, None, thr, min_positives=1, min_negatives=1)
    t = res.table
    assert set(t["variable"]) == {"sex", "view", "age"}
    bands = list(t[t["variable"] == "age"]["subgroup"].unique())
    assert bands == ["<40", "40-60", "60-80", ">=80", "unknown"]
    checked = 0
    for row in t.to_dict(orient="records"):
        j = FINDINGS.index(row["finding"])
        m = (groups[row["variable"]] == row["subgroup"]) & ~np.isnan(y[:, j])
        yy, ss = y[m, j].astype(int), s[m, j]
        assert row["n"] == m.sum() and row["n_positive"] == yy.sum()
        assert row["prevalence"] == pytest.approx(yy.mean())
        if 0 < yy.sum() < yy.size:
            assert abs(row["auroc"] - skm.roc_auc_score(yy, ss)) < 1e-12
            assert abs(row["average_precision"] - skm.average_precision_score(yy, ss)) < 1e-12
            tn, fp, fn, tp = skm.confusion_matrix(yy, ss >= thr[j], labels=[0, 1]).ravel()
            assert row["sensitivity"] == pytest.approx(tp / (tp + fn))
            assert row["specificity"] == pytest.approx(tn / (tn + fp))
            if tp + fp:
                assert row["ppv"] == pytest.approx(tp / (tp + fp))
            checked += 1
    assert checked >= 15
    assert np.isnan(t["auroc_lo"]).all()  # no resamples: no CI


@pytest.mark.parametrize("cluster", ["image", "patient"])
def test_bootstrap_equals_a_slow_loop_over_explicit_resamples(cluster):
    y, s, ids, pids, groups = make_set(1, n=180)
    thr = np.array([0.4, 0.55])
    r = bs.make_resamples(ids, pids, n_resamples=25, seed=5, cluster=cluster)
    res = sg.subgroup_metrics(y, s, FINDINGS, groups, r, thr, min_positives=1, keep_samples=True)
    worst, compared = 0.0, 0
    for b in range(25):
        idx = r.indices(b)
        for v, vals in groups.items():
            for g in np.unique(vals):
                for j, f in enumerate(FINDINGS):
                    m = (vals[idx] == g) & ~np.isnan(y[idx, j])
                    yy, ss = y[idx, j][m].astype(int), s[idx, j][m]
                    got = {k: res.samples[(v, str(g), f, k)][b] for k in sg.SUBGROUP_METRICS}
                    if not 0 < yy.sum() < yy.size:
                        assert all(np.isnan(x) for x in got.values())
                        continue
                    pred = ss >= thr[j]
                    tp, fp = (pred & (yy == 1)).sum(), (pred & (yy == 0)).sum()
                    fn, tn = (yy == 1).sum() - tp, (yy == 0).sum() - fp
                    want = {"auroc": skm.roc_auc_score(yy, ss),
                            "average_precision": skm.average_precision_score(yy, ss),
                            "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp),
                            "ppv": tp / (tp + fp) if tp + fp else np.nan,
                            "npv": tn / (tn + fn) if tn + fn else np.nan}
                    for k in sg.SUBGROUP_METRICS:
                        if np.isnan(want[k]):
                            assert np.isnan(got[k])
                        else:
                            worst = max(worst, abs(got[k] - want[k]))
                            compared += 1
    assert compared > 1000 and worst < 1e-12


def test_every_subgroup_and_model_share_the_resamples():
    """The same resamples for every variable: a subgroup's AUROC on resample b is the whole-set engine's
    AUROC with the other images' labels hidden."""
    y, s, ids, pids, groups = make_set(2)
    r = bs.make_resamples(ids, pids, n_resamples=30, seed=1, cluster="patient")
    res = sg.subgroup_metrics(y, s, FINDINGS, groups, r, keep_samples=True)
    female = groups["sex"] == "F"
    masked = np.where(female[:, None], y, np.nan)
    np.testing.assert_allclose(res.samples[("sex", "F", "cardiomegaly", "auroc")],
                               bs.bootstrap_auroc(masked, s, r)[:, 0], atol=1e-12)


def test_largest_gap_ci_and_p_are_the_paired_differences():
    y, s, ids, pids, groups = make_set(3, n=600)
    r = bs.make_resamples(ids, pids, n_resamples=200, seed=0, cluster="patient")
    res = sg.subgroup_metrics(y, s, FINDINGS, groups, r, np.array([0.5, 0.5]), keep_samples=True)
    gap = res.gaps.set_index(["variable", "finding", "metric"]).loc[("sex", "cardiomegaly", "auroc")]
    t = res.table.set_index(["variable", "subgroup", "finding"])
    assert gap["high_group"] == "F" and gap["low_group"] == "M"  # F were drawn with the stronger signal
    assert gap["gap"] == pytest.approx(t.loc[("sex", "F", "cardiomegaly"), "auroc"]
                                       - t.loc[("sex", "M", "cardiomegaly"), "auroc"])
    d = (res.samples[("sex", "F", "cardiomegaly", "auroc")]
         - res.samples[("sex", "M", "cardiomegaly", "auroc")])
    lo, hi = np.quantile(d, [0.025, 0.975])
    assert gap["gap_lo"] == pytest.approx(lo) and gap["gap_hi"] == pytest.approx(hi)
    assert gap["p_value"] == bootstrap_p_value(d) and gap["p_value"] < 0.05 and gap["gap_lo"] > 0
    assert gap["p_bonferroni"] == gap["p_value"]  # two groups: one pair
    view = res.gaps.set_index(["variable", "finding", "metric"]).loc[("view", "cardiomegaly", "auroc")]
    assert view["n_groups"] == 3 and view["p_bonferroni"] == pytest.approx(min(1, 3 * view["p_value"]))


def test_too_few_positives_are_marked_not_hidden_and_left_out_of_gaps():
    y, s, ids, pids, groups = make_set(4)
    groups["view"] = np.where(np.arange(len(ids)) < 8, "AP_SUPINE", groups["view"])
    res = sg.subgroup_metrics(y, s, FINDINGS, groups, None, min_positives=5, min_negatives=5)
    few = res.table[(res.table["variable"] == "view") & (res.table["subgroup"] == "AP_SUPINE")]
    assert len(few) == 2 and few["too_few"].all() and few["note"].str.contains("too few").all()
    unknown = res.table[res.table["subgroup"] == "unknown"]
    assert len(unknown) == 2 and unknown["note"].str.contains("left out of the gaps").all()
    gap = res.gaps.set_index(["variable", "finding", "metric"]).loc[("view", "cardiomegaly", "auroc")]
    assert "AP_SUPINE" not in (gap["high_group"], gap["low_group"]) and gap["n_groups"] == 3


def test_a_gap_with_one_usable_subgroup_is_not_estimable_rather_than_none():
    y, s, ids, pids, groups = make_set(4)
    groups["view"] = np.where(np.arange(len(ids)) < 8, "AP_SUPINE", "PA")
    res = sg.subgroup_metrics(y, s, FINDINGS, {"view": groups["view"]}, None, min_positives=5,
                              min_negatives=5)
    gap = res.gaps.set_index(["variable", "finding", "metric"]).loc[("view", "cardiomegaly", "auroc")]
    assert gap["note"].startswith("not estimable") and "no gap" not in gap["note"]
    assert not np.isfinite(gap.get("gap", np.nan))


def test_underdiagnosis_is_the_no_finding_false_positive_rate_per_subgroup():
    y = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [0, 0], [0, 1], [0, 0], [0, 1]], dtype=float)
    s = np.array([[0.1, 0.9], [0.2, 0.2], [0.3, 0.8], [0.9, 0.1], [0.1, 0.7], [0.2, 0.9], [0.5, 0.1],
                  [0.4, 0.6]])
    sex = np.array(["F", "F", "F", "F", "M", "M", "M", "M"])
    res = sg.subgroup_metrics(y, s, FINDINGS, {"sex": sex}, None, np.array([0.5, 0.5]), min_positives=1,
                              min_negatives=1)
    u = res.underdiagnosis.set_index("subgroup")
    # F: images with a finding (no_finding = 0): rows 0, 1, 3 -> scored 0.9, 0.2, 0.1: one called "no finding"
    assert u.loc["F", "n_with_finding"] == 3 and u.loc["F", "underdiagnosis"] == pytest.approx(1 / 3)
    assert u.loc["M", "n_with_finding"] == 2 and u.loc["M", "underdiagnosis"] == pytest.approx(1 / 2)
    gap = res.gaps[res.gaps["metric"] == sg.UNDERDIAGNOSIS].iloc[0]
    assert gap["high_group"] == "M" and gap["gap"] == pytest.approx(1 / 2 - 1 / 3)


def test_prevalence_matching_reweights_positives_to_the_overall_prevalence():
    rng = np.random.default_rng(5)
    n = 400
    sex = np.where(np.arange(n) < 200, "F", "M")
    y = np.where(sex == "F", rng.random(n) < 0.1, rng.random(n) < 0.5).astype(float)[:, None]
    s = (y[:, 0] + rng.normal(size=n))[:, None]
    thr = np.array([0.5])
    plain = sg.subgroup_metrics(y, s, ["f"], {"sex": sex}, None, thr, min_positives=1)
    matched = sg.subgroup_metrics(y, s, ["f"], {"sex": sex}, None, thr, min_positives=1,
                                  prevalence_matched=True)
    a, b = plain.table.set_index("subgroup"), matched.table.set_index("subgroup")
    for col in ("auroc", "sensitivity", "specificity"):  # prevalence-free metrics unchanged
        np.testing.assert_allclose(a[col], b[col], atol=1e-12)
    pi = y.mean()
    for g in ("F", "M"):  # reference: weighted PPV and AP with weight r on the group's positives
        m = sex == g
        yy, ss = y[m, 0], s[m, 0]
        r = pi * (yy == 0).sum() / ((1 - pi) * (yy == 1).sum())
        w = np.where(yy == 1, r, 1.0)
        pred = ss >= 0.5
        ppv = (w * pred * yy).sum() / (w * pred).sum()
        assert b.loc[g, "ppv"] == pytest.approx(ppv)
        ap = skm.average_precision_score(yy, ss, sample_weight=w)
        assert b.loc[g, "average_precision"] == pytest.approx(ap)
    assert abs(b.loc["F", "ppv"] - b.loc["M", "ppv"]) < abs(a.loc["F", "ppv"] - a.loc["M", "ppv"])


def test_to_dict_and_shapes():
    y, s, ids, pids, groups = make_set(6, n=120)
    res = sg.subgroup_metrics(y, s, FINDINGS, {"sex": groups["sex"]}, bs.make_resamples(ids, n_resamples=10))
    doc = res.to_dict()
    assert set(doc) == {"settings", "table", "gaps", "underdiagnosis"} and len(doc["table"]) == 4
    assert doc["settings"]["bootstrap"]["n_resamples"] == 10
    assert isinstance(pd.DataFrame(doc["table"])["auroc"].iloc[0], float)
    with pytest.raises(ValueError, match="120 images"):
        sg.subgroup_metrics(y, s, FINDINGS, {"sex": groups["sex"][:10]})

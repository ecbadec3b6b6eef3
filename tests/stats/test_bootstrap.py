"""cxrbench.bootstrap: vectorized resample metrics equal scikit-learn on every explicit resample."""

import tracemalloc

import numpy as np
import pytest
from sklearn import metrics as skm

from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt


def make_set(seed: int, n: int = 240, k: int = 3, images_per_patient: int = 3, decimals: int = 1):
    """Labels (n, k) with NaN and rounded scores (ties within and across classes), plus ids."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.25).astype(float)
    s = np.round(rng.normal(size=(n, k)) + y, decimals)
    y[rng.random((n, k)) < 0.08] = np.nan
    ids = [f"img{i:05d}" for i in range(n)]
    pids = [f"pat{i // images_per_patient:05d}" for i in range(n)]
    return y, s, ids, pids


def explicit(y, s, idx, k):
    """The resampled set of finding k, unknown labels dropped (what the reference code scores)."""
    yy, ss = y[idx, k], s[idx, k]
    m = ~np.isnan(yy)
    return yy[m].astype(int), ss[m]


@pytest.mark.parametrize("cluster", ["image", "patient"])
def test_auroc_equals_sklearn_on_every_resample(cluster):
    y, s, ids, pids = make_set(0)
    r = bs.make_resamples(ids, pids, n_resamples=60, seed=7, cluster=cluster)
    got = bs.bootstrap_auroc(y, s, r)
    assert got.shape == (60, 3)
    worst = 0.0
    for b in range(60):
        idx = r.indices(b)
        for k in range(3):
            worst = max(worst, abs(got[b, k] - skm.roc_auc_score(*explicit(y, s, idx, k))))
    assert worst <= 1e-12


def test_auroc_equals_pairwise_mann_whitney_count():
    y, s, ids, _ = make_set(1, n=80, decimals=0)  # very coarse scores: mostly ties
    r = bs.make_resamples(ids, n_resamples=5, seed=1)
    got = bs.bootstrap_auroc(y, s, r)
    for b in range(5):
        yk, sk = explicit(y, s, r.indices(b), 0)
        d = sk[yk == 1][:, None] - sk[yk == 0][None, :]
        assert abs(got[b, 0] - ((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size) < 1e-12


@pytest.mark.parametrize("cluster", ["image", "patient"])
def test_ap_youden_and_confusion_equal_reference_on_every_resample(cluster):
    y, s, ids, pids = make_set(2)
    r = bs.make_resamples(ids, pids, n_resamples=40, seed=3, cluster=cluster)
    yd = bs.bootstrap_metrics(y, s, r, youden=True)
    thr = np.array([0.3, np.nan, 1.0])
    fx = bs.bootstrap_metrics(y, s, r, thresholds=thr)
    for b in range(40):
        idx = r.indices(b)
        for k in range(3):
            yk, sk = explicit(y, s, idx, k)
            assert abs(yd["average_precision"][b, k] - skm.average_precision_score(yk, sk)) < 1e-12
            assert abs(fx["auroc"][b, k] - skm.roc_auc_score(yk, sk)) < 1e-12
            t = mt.youden_threshold(yk.astype(float), sk)[0]
            assert yd["threshold"][b, k] == t
            got = tuple(yd[c][b, k] for c in ("tp", "fp", "tn", "fn"))
            assert got == mt.confusion(yk.astype(float), sk, t)
            if k == 1:
                assert np.isnan(fx["tp"][b, k])
            else:
                assert tuple(fx[c][b, k] for c in ("tp", "fp", "tn", "fn")) == mt.confusion(
                    yk.astype(float), sk, thr[k])


def test_youden_per_resample_matches_reference_study_code():
    """The reference study: np.argmax(tpr - fpr) over sklearn's roc_curve on each resample."""
    rng = np.random.default_rng(5)
    y = (rng.random((300, 1)) < 0.3).astype(float)
    s = rng.normal(size=(300, 1)) + y
    r = bs.make_resamples([str(i) for i in range(300)], n_resamples=30, seed=0)
    got = bs.bootstrap_metrics(y, s, r, youden=True)["threshold"][:, 0]
    for b in range(30):
        fpr, tpr, thr = skm.roc_curve(*explicit(y, s, r.indices(b), 0))
        assert got[b] == thr[np.argmax(tpr - fpr)]


def test_resamples_are_deterministic_and_independent_of_chunking():
    y, s, ids, pids = make_set(3)
    r = bs.make_resamples(ids, pids, n_resamples=50, seed=11, cluster="patient")
    whole = bs.bootstrap_metrics(y, s, r, youden=True)
    tiny = bs.bootstrap_metrics(y, s, r, youden=True, memory_bytes=1)  # one resample per chunk
    for name in whole:
        np.testing.assert_array_equal(whole[name], tiny[name])
    again = bs.make_resamples(ids, pids, n_resamples=20, seed=11, cluster="patient")
    np.testing.assert_array_equal(r.counts(0, 20), again.counts(0, 20))  # first B' of B are the same
    other = bs.make_resamples(ids, pids, n_resamples=20, seed=12, cluster="patient")
    assert not np.array_equal(r.counts(0, 20), other.counts(0, 20))


def test_image_counts_are_multinomial_draws():
    r = bs.make_resamples([f"i{i}" for i in range(500)], n_resamples=30, seed=0)
    c = r.counts(0, 30).astype(int)
    assert c.dtype.kind == "i" and (c.sum(axis=1) == 500).all()
    assert 0.55 < (c > 0).mean() < 0.71  # about 1 - 1/e of the images appear in a resample


def test_patient_cluster_takes_all_images_of_a_drawn_patient():
    sizes = [1, 2, 5, 3, 1, 4]
    pids = [f"p{j}" for j, m in enumerate(sizes) for _ in range(m)]
    ids = [f"i{i:02d}" for i in range(len(pids))]
    r = bs.make_resamples(ids, pids, n_resamples=25, seed=3, cluster="patient")
    assert r.n_units == len(sizes)
    c = r.counts(0, 25).astype(int)
    unit = r.unit_of_item
    for b in range(25):
        per_patient = np.bincount(unit, weights=c[b]) / np.bincount(unit)
        assert np.all(per_patient == np.round(per_patient))  # same count for every image of a patient
        assert per_patient.sum() == len(sizes)  # n_patients draws
        assert c[b].sum() == int(np.dot(per_patient, sizes))


def test_one_class_resamples_are_nan():
    y = np.zeros((30, 1))
    y[0, 0] = 1.0  # one positive: many resamples miss it
    s = np.linspace(0, 1, 30)[:, None]
    r = bs.make_resamples([str(i) for i in range(30)], n_resamples=100, seed=0)
    auc = bs.bootstrap_auroc(y, s, r)[:, 0]
    missing = np.array([r.counts(b, b + 1)[0, 0] == 0 for b in range(100)])
    assert missing.any() and not missing.all()
    np.testing.assert_array_equal(np.isnan(auc), missing)
    out = bs.bootstrap_metrics(y, s, r, youden=True)
    for name in out:
        np.testing.assert_array_equal(np.isnan(out[name][:, 0]), missing)


def test_several_models_at_once_equal_separate_calls():
    y, s, ids, _ = make_set(4)
    s2 = s + np.random.default_rng(0).normal(0, 0.5, s.shape)
    r = bs.make_resamples(ids, n_resamples=20, seed=2)
    both = bs.bootstrap_auroc(y, np.stack([s, s2]), r)
    assert both.shape == (2, 20, 3)
    np.testing.assert_array_equal(both[0], bs.bootstrap_auroc(y, s, r))
    np.testing.assert_array_equal(both[1], bs.bootstrap_auroc(y, s2, r))


def test_large_counts_take_the_wide_integer_path():
    """Counts above 255 (a patient drawn many times) use uint16 and int64 products."""
    rng = np.random.default_rng(1)
    y = (rng.random(400) < 0.4).astype(float)
    s = np.round(rng.normal(size=400) + y, 1)
    p = bs._prepare(y, s)
    w = rng.integers(0, 1000, size=(3, 400)).astype(np.uint16)
    auc = bs._auroc_chunk(p, w)[0]
    for b in range(3):
        assert abs(auc[b] - skm.roc_auc_score(y, s, sample_weight=w[b])) < 1e-12


def test_working_memory_stays_within_budget():
    rng = np.random.default_rng(0)
    n, budget = 20000, 16 * 2**20
    y = (rng.random((n, 1)) < 0.3).astype(float)
    s = rng.normal(size=(n, 1)) + y  # no ties: the largest working set
    r = bs.make_resamples(np.arange(n).astype(str), n_resamples=60, seed=0)
    tracemalloc.start()
    try:
        bs.bootstrap_metrics(y, s, r, youden=True, memory_bytes=budget)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert bs.chunk_size(n, 60, budget) < 60  # several chunks
    assert peak < budget + 30 * n  # chunk work + the sort order of the finding


def test_summarize_percentile_ci_and_counts():
    v = np.r_[np.arange(1, 101, dtype=float), np.nan, np.nan]
    out = bs.summarize(v, point=50.0)
    assert out["value"] == 50.0
    assert out["ci_low"] == pytest.approx(np.quantile(np.arange(1, 101), 0.025), abs=1e-12)
    assert out["ci_high"] == pytest.approx(np.quantile(np.arange(1, 101), 0.975), abs=1e-12)
    assert out["mean"] == 50.5 and abs(out["std"] - np.std(np.arange(1, 101), ddof=1)) < 1e-12
    assert out["n_resamples_used"] == 100 and out["n_resamples_excluded"] == 2
    empty = bs.summarize(np.full(3, np.nan), point=float("nan"))
    assert np.isnan(empty["ci_low"]) and empty["n_resamples_excluded"] == 3


def test_describe_and_hash_identify_the_set():
    ids = ["a", "b", "c"]
    r = bs.make_resamples(ids, n_resamples=10, seed=4)
    d = r.describe()
    assert (d["seed"], d["n_resamples"], d["cluster"], d["n_images"]) == (4, 10, "image", 3)
    assert d["image_order_hash"] == bs.ids_hash(ids) != bs.ids_hash(["a", "c", "b"])
    with pytest.raises(ValueError, match="patient_ids"):
        bs.make_resamples(ids, cluster="patient")


def test_patient_resamples_of_one_image_per_patient_are_the_image_resamples():
    """The patient default costs nothing where patients are unknown (patient id = image id)."""
    from cxrbench.stats.bootstrap import make_resamples

    ids = np.array(sorted(f"i{k:03d}" for k in range(60)))
    by_patient = make_resamples(ids, ids, 30, 3, "patient")
    by_image = make_resamples(ids, None, 30, 3, "image")
    np.testing.assert_array_equal(by_patient.counts(0, 30), by_image.counts(0, 30))


def test_resampling_settings_out_of_range_name_the_option():
    from cxrbench.common.errors import InputError
    from cxrbench.stats.seeds import seed_draws

    with pytest.raises(InputError, match=r"--bootstrap: got 0, expected a whole number of resamples >= 1"):
        bs.make_resamples(["a", "b"], n_resamples=0)
    with pytest.raises(InputError, match=r"--seed: got -1, expected a whole number >= 0"):
        bs.make_resamples(["a", "b"], n_resamples=5, seed=-1)
    with pytest.raises(InputError, match=r"--seed: got -2"):
        seed_draws(3, 5, seed=-2, stream=0)

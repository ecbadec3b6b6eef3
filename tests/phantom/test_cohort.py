"""Phantom cohorts: prevalence, co-occurrence, persistence, views, grades, determinism, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.phantom.cohort import FINDINGS, POSITIVE, grade, sample_cohort


@pytest.fixture(scope="module")
def big() -> pd.DataFrame:
    return sample_cohort(3000, np.random.default_rng(0), images_per_patient=2.0)


def _per_study(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop_duplicates("study_key")


def test_deterministic_for_a_seed():
    a = sample_cohort(50, np.random.default_rng(7))
    b = sample_cohort(50, np.random.default_rng(7))
    c = sample_cohort(50, np.random.default_rng(8))
    pd.testing.assert_frame_equal(a, b)
    assert not a[["cm", "eff_r", "view"]].equals(c[["cm", "eff_r", "view"]])


def test_requested_prevalence_is_met():
    prev = {
        "cardiomegaly": 0.3,
        "pleural_effusion": 0.25,
        "pneumothorax": 0.1,
        "nodule": 0.1,
        "mass": 0.05,
        "consolidation": 0.12,
        "pneumonia": 0.1,
        "atelectasis": 0.15,
        "edema": 0.12,
        "scoliosis": 0.05,
    }
    df = _per_study(sample_cohort(4000, np.random.default_rng(1), prevalence=prev, images_per_patient=1.0))
    for f, p in prev.items():
        got = df[f"label_{f}"].mean()
        assert abs(got - p) < 0.035, (f, got, p)


def test_co_occurrence_follows_clinical_sense(big):
    s = _per_study(big)
    cm, edema = s["label_cardiomegaly"] == 1, s["label_edema"] == 1
    eff, atel = s["label_pleural_effusion"] == 1, s["label_atelectasis"] == 1
    assert edema[cm].mean() > 2 * edema[~cm].mean()
    assert eff[edema].mean() > 2 * eff[~edema].mean()
    assert atel[eff].mean() > 1.8 * atel[~eff].mean()
    # Pneumonia draws a consolidation-like opacity; half of them also carry the consolidation label.
    pn = s["pneumonia"] == 1
    opacity = (s["cons_r"] >= POSITIVE) | (s["cons_l"] >= POSITIVE)
    assert opacity[pn].all()
    assert 0.35 < s.loc[pn, "consolidation_label"].mean() < 0.65
    # Bilateral effusions are mostly those that come with edema.
    both = (s["eff_r"] >= POSITIVE) & (s["eff_l"] >= POSITIVE)
    assert both[eff & edema].mean() > both[eff & ~edema].mean() + 0.2


def test_patient_level_findings_persist_across_studies(big):
    per_patient = big.groupby("patient")
    for col in ("label_cardiomegaly", "label_nodule", "label_mass", "nod_side", "sex"):
        assert (per_patient[col].nunique() == 1).all(), col
    multi = per_patient["study"].transform("max") > 0
    acute = big[multi].groupby("patient")["label_pleural_effusion"].nunique()
    assert (acute > 1).any()  # acute findings change between studies


def test_studies_images_views_and_ages(big):
    assert set(big["view"]) <= {"PA", "AP", "LATERAL"}
    assert 0.12 < (big["view"] == "LATERAL").mean() < 0.18
    assert (big.loc[big["image"] == 0, "view"] != "LATERAL").all()  # every study starts with a frontal
    assert (big.groupby("study_key")["image"].max() <= 1).all()
    per_study = big.drop_duplicates("study_key")
    days = per_study.groupby("patient")["days"]
    assert (days.apply(lambda d: bool(np.all(np.diff(d.to_numpy()) >= 0)))).all()
    assert big["age"].between(18, 120).all()
    assert 1.7 < len(big) / big["patient"].nunique() < 2.3
    assert set(big["sex"]) == {"M", "F"}


def test_no_mild_findings_by_default_and_grades_when_asked(big):
    for col in ("cm", "eff_r", "cons_l", "atel_r", "edema"):
        v = big[col].to_numpy()
        assert not ((v > 0) & (v < POSITIVE)).any(), col
    mild = sample_cohort(500, np.random.default_rng(2), mild_rate=0.2)
    g = grade(mild["eff_r"].to_numpy())
    assert set(np.unique(g)) == {0, 1, 2, 3, 4}
    np.testing.assert_array_equal(g >= 3, mild["eff_r"].to_numpy() >= POSITIVE)


def test_grade_edges():
    np.testing.assert_array_equal(
        grade(np.array([0.0, 0.1, 0.3, 0.46, 0.69, 0.71, 1.0])), [0, 1, 2, 3, 3, 4, 4]
    )


def test_one_image_options_and_disallowed_findings():
    one = sample_cohort(40, np.random.default_rng(3), one_image_per_patient=True)
    assert len(one) == 40 and (one["view"] != "LATERAL").all()
    per_study = sample_cohort(40, np.random.default_rng(3), one_image_per_study=True, images_per_patient=3)
    assert per_study["study_key"].is_unique
    limited = sample_cohort(300, np.random.default_rng(4), allowed=("cardiomegaly", "edema"))
    for f in FINDINGS:
        if f not in ("cardiomegaly", "edema"):
            assert limited[f"label_{f}"].sum() == 0, f


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prevalence": {"cardiomegally": 0.2}}, "did you mean 'cardiomegaly'"),
        ({"prevalence": {"edema": 1.5}}, "outside"),
        ({"prevalence": {"nodule": 0.1}, "allowed": ("edema",)}, "unsupported"),
        ({"views": {"PA": 0.5, "OBLIQUE": 0.5}}, "unknown view"),
        ({"views": {"LATERAL": 1.0}}, "frontal"),
        ({"images_per_patient": 0.5}, "images per patient"),
        ({"mild_rate": -0.1}, "mild_rate"),
    ],
)
def test_bad_arguments_raise_input_error(kwargs, match):
    with pytest.raises(InputError, match=match):
        sample_cohort(10, np.random.default_rng(0), **kwargs)


def test_bad_patient_count():
    with pytest.raises(InputError, match="patients"):
        sample_cohort(0, np.random.default_rng(0))

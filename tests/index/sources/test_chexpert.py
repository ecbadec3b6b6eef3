import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index
from cxrbench.index.sources.terms import CHEXPERT_TERMS

TERMS = list(CHEXPERT_TERMS)
HEADER = "Path,Sex,Age,Frontal/Lateral,AP/PA," + ",".join(TERMS)
P = "CheXpert-v1.0-small"


def row(path, sex="Female", age="60", fl="Frontal", appa="AP", **labels):
    values = [labels.get(t.replace(" ", "_"), "") for t in TERMS]
    return ",".join([path, sex, age, fl, appa, *values])


TRAIN = [
    row(f"{P}/train/patient00001/study1/view1_frontal.jpg", No_Finding="1.0", Support_Devices="1.0"),
    row(
        f"{P}/train/patient00002/study1/view1_frontal.jpg", Cardiomegaly="-1.0", Edema="1.0", Pneumonia="0.0"
    ),
    row(f"{P}/train/patient00002/study1/view2_lateral.jpg", fl="Lateral", appa="", Edema="1.0"),
    row(f"{P}/train/patient00003/study2/view1_frontal.jpg", appa="PA", sex="Male", Pleural_Effusion="1.0"),
    row(f"{P}/train/patient00004/study1/view1_frontal.jpg", appa="LL", sex="Unknown", Atelectasis="-1.0"),
]
VALID = [
    row(
        f"{P}/valid/patient64541/study1/view1_frontal.jpg",
        Cardiomegaly="1.0",
        No_Finding="0.0",
        **{t.replace(" ", "_"): "0.0" for t in TERMS if t not in ("Cardiomegaly", "No Finding")},
    ),
]


def layout(root, train=TRAIN, valid=VALID, test=None, nested=True):
    base = root / P if nested else root
    base.mkdir(parents=True, exist_ok=True)
    (base / "train.csv").write_text("\n".join([HEADER, *train]) + "\n")
    if valid is not None:
        (base / "valid.csv").write_text("\n".join([HEADER, *valid]) + "\n")
    if test is not None:
        (base / "test_labels.csv").write_text("\n".join(test) + "\n")
    return base


def by_id(df):
    return df.set_index("image_id")


def test_paths_patients_views_and_official_splits(tmp_path):
    layout(tmp_path)
    df, findings, report = build_index("chexpert", tmp_path, views="all")
    d = by_id(df)
    assert d.loc["patient00002/study1/view2_lateral", "view"] == "LATERAL"
    assert d.loc["patient00003/study2/view1_frontal", "view"] == "PA"
    assert d.loc["patient00004/study1/view1_frontal", "view"] == "OTHER"  # decubitus, still frontal
    assert (
        d.loc["patient00001/study1/view1_frontal", "path"]
        == f"{P}/train/patient00001/study1/view1_frontal.jpg"
    )
    assert d.loc["patient00003/study2/view1_frontal", "study_id"] == "patient00003/study2"
    assert d.loc["patient64541/study1/view1_frontal", "split"] == "val"
    assert set(df.loc[df["patient_id"] != "patient64541", "split"]) <= {"train", "test"}
    assert report["split"]["carved"] == ["test"]
    assert pd.isna(d.loc["patient00004/study1/view1_frontal", "sex"])
    assert findings == [f for f in findings if f in {t[0] for t in CHEXPERT_TERMS.values()}]


def test_default_views_keep_the_frontal_flag(tmp_path):
    layout(tmp_path)
    df, _, report = build_index("chexpert", tmp_path)
    assert "patient00002/study1/view2_lateral" not in set(df["image_id"])
    assert "patient00004/study1/view1_frontal" in set(df["image_id"])  # LL frontal kept
    assert report["dropped"]["views"] == {"LATERAL": 1}
    df2, _, _ = build_index("chexpert", tmp_path, views="PA,AP")
    assert "patient00004/study1/view1_frontal" not in set(df2["image_id"])


@pytest.mark.parametrize(
    "uncertain,blank,card,pneu_blank",
    [
        ("zeros", "zeros", 0.0, 0.0),
        ("ones", "zeros", 1.0, 0.0),
        ("ignore", "ignore", np.nan, np.nan),
    ],
)
def test_uncertain_and_blank_policies(tmp_path, uncertain, blank, card, pneu_blank):
    layout(tmp_path)
    df, _, _ = build_index("chexpert", tmp_path, uncertain=uncertain, blank=blank)
    d = by_id(df)
    r = d.loc["patient00002/study1/view1_frontal"]
    np.testing.assert_equal(r["cardiomegaly"], card)
    assert r["edema"] == 1 and r["pneumonia"] == 0  # explicit values never change
    np.testing.assert_equal(r["atelectasis"], pneu_blank)  # blank
    assert r["no_finding"] == 0  # blank, or unknown made negative by the positive edema


def test_no_finding_consistency_under_ignore(tmp_path):
    layout(tmp_path)
    df, _, report = build_index("chexpert", tmp_path, uncertain="ignore", blank="ignore")
    r = by_id(df).loc["patient00001/study1/view1_frontal"]
    # No Finding = 1: blank abnormal findings become negative, support devices stay as given
    assert r["no_finding"] == 1 and r["cardiomegaly"] == 0 and r["support_devices"] == 1
    assert report["no_finding"]["unknown_filled_by_no_finding"] > 0


def test_chexlocalize_test_labels_without_view_columns(tmp_path):
    test = [
        "Path," + ",".join(TERMS),
        "test/patient64741/study1/view1_frontal.jpg," + ",".join(["0"] * len(TERMS)),
        "test/patient64741/study1/view2_lateral.jpg," + ",".join(["0"] * len(TERMS)),
    ]
    layout(tmp_path, test=test, nested=False)
    df, _, report = build_index("chexpert", tmp_path)
    t = df[df["split"] == "test"]
    assert list(t["image_id"]) == ["patient64741/study1/view1_frontal"]  # lateral dropped, frontal kept
    assert t["view"].iloc[0] == "UNKNOWN" and t["path"].iloc[0].startswith("test/")
    assert "carved" not in report["split"]


@pytest.mark.parametrize(
    "bad,match",
    [
        (
            row(f"{P}/train/patient00009/study1/view1_frontal.jpg", Edema="2.0"),
            "line 7: unknown label value 2 in column 'Edema'",
        ),
        (
            row(f"{P}/train/patient00009/study1/view1_frontal.jpg", Edema="yes"),
            "line 7.*non-numeric value 'yes'",
        ),
        (row(f"{P}/train/../../etc/passwd.jpg"), "not <split>/patientN/studyN/<file>"),
        (TRAIN[0], "duplicated image"),
    ],
)
def test_bad_rows_are_named(tmp_path, bad, match):
    layout(tmp_path, train=TRAIN + [bad])
    with pytest.raises(InputError, match=match):
        build_index("chexpert", tmp_path)


def test_missing_train_csv(tmp_path):
    with pytest.raises(InputError, match="CheXpert train.csv not found.*--labels-file"):
        build_index("chexpert", tmp_path)


@pytest.fixture(scope="module")
def real_chexpert(xrv_data_dir):
    return build_index(
        "chexpert",
        xrv_data_dir,
        labels_file=xrv_data_dir / "chexpert_train.csv.gz",
        uncertain="ignore",
        blank="ignore",
        views="all",
    )


def test_real_chexpert_counts_match_the_documentation(real_chexpert):
    df, _, report = real_chexpert
    assert len(df) == 223_414 and df["patient_id"].nunique() == 64_540 and df["study_id"].nunique() == 187_641
    frontal = df["view"] != "LATERAL"
    assert (
        frontal.sum() == 191_027
        and (df["view"] == "AP").sum() == 161_590
        and (df["view"] == "PA").sum() == 29_420
    )
    # positives (1.0) per documentation; ignore keeps uncertain/blank unknown
    for f, n in {
        "pneumothorax": 19_448,
        "pleural_effusion": 86_187,
        "lung_lesion": 9_186,
        "fracture": 9_040,
    }.items():
        assert int((df[f] == 1).sum()) == n, f
    # Pneumothorax 0 / -1 / blank: 56,341 / 3,145 / 144,480; No Finding = 1 fills blanks with 0
    assert report["label_values"]["uncertain_values"] > 3_145
    assert (df["sex"] == "F").sum() == 90_777


def test_real_chexpert_default_frontal_count(xrv_data_dir):
    df, _, _ = build_index(
        "chexpert", xrv_data_dir, labels_file=xrv_data_dir / "chexpert_train.csv.gz", labels="study-chexpert"
    )
    assert len(df) == 191_027
    assert list(df.columns[9:]) == [
        "no_finding",
        "atelectasis",
        "cardiomegaly",
        "consolidation",
        "pleural_effusion",
        "pneumonia",
        "pneumothorax",
        "lung_opacity",
        "lung_lesion",
        "fracture",
    ]


def test_test_file_lacking_observations_leaves_them_unknown(tmp_path):
    test = ["Path,Cardiomegaly", "test/patient64741/study1/view1_frontal.jpg,1"]
    layout(tmp_path, test=test, nested=False)
    df, _, report = build_index("chexpert", tmp_path)  # --blank zeros: blanks become 0, absent columns do not
    r = df.set_index("image_id").loc["patient64741/study1/view1_frontal"]
    assert r["cardiomegaly"] == 1 and np.isnan(r["edema"]) and r["no_finding"] == 0
    assert any("test_labels.csv lacks" in w for w in report["warnings"])
    assert report["label_values"]["not_labelled"] == len(TERMS) - 1


def test_a_labels_file_outside_the_root_is_read_not_a_traceback(tmp_path):
    """The docs recommend --labels-file for a CSV kept elsewhere; it ended in a relative_to traceback."""
    elsewhere = layout(tmp_path / "labels")  # the CSVs outside --root
    root = tmp_path / "data"
    (root / P / "train").mkdir(parents=True)  # the images' release folder under --root
    df, _, report = build_index("chexpert", root, labels_file=elsewhere / "train.csv", views="all")
    assert df["path"].str.startswith(f"{P}/train/").any()
    assert report["files"]["train"] == str(elsewhere / "train.csv")

import gzip

import numpy as np
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index
from cxrbench.index.sources.terms import CHEXPERT_TERMS

# the label files' real header order is alphabetical; read by name
TERMS = sorted(CHEXPERT_TERMS)
META_HEADER = (
    "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns,StudyDate,"
    "StudyTime,ProcedureCodeSequence_CodeMeaning,ViewCodeSequence_CodeMeaning,"
    "PatientOrientationCodeSequence_CodeMeaning"
)
IMAGES = [  # dicom_id, subject, study, ViewPosition, ViewCode, split
    ("aa-1", "10000032", "50414267", "PA", "postero-anterior", "train"),
    ("aa-2", "10000032", "50414267", "LATERAL", "lateral", "train"),
    ("bb-1", "10000764", "57375967", "AP", "antero-posterior", "validate"),
    ("cc-1", "10000898", "50771383", "", "postero-anterior", "test"),
    ("cc-2", "10000898", "54205396", "AP AXIAL", "", "test"),
    ("dd-1", "11000011", "59999999", "AP", "antero-posterior", "test"),
]


def label_row(subject, study, **v):
    return ",".join([subject, study, *(v.get(t.replace(" ", "_"), "") for t in TERMS)])


LABELS = [
    label_row("10000032", "50414267", No_Finding="1.0"),
    label_row("10000764", "57375967", Edema="-1.0", Pleural_Effusion="1.0"),
    label_row("10000898", "50771383", Pneumonia="0.0", Cardiomegaly="1.0"),
    label_row("10000898", "54205396", Support_Devices="1.0"),
]


def write(path, lines, gz=True):
    text = "\n".join(lines) + "\n"
    if gz:
        with gzip.open(str(path) + ".gz", "wt") as f:
            f.write(text)
    else:
        path.write_text(text)


def layout(root, labels=LABELS, split=True, labeler="chexpert", extra_meta=()):
    root.mkdir(parents=True, exist_ok=True)
    meta = (
        [META_HEADER]
        + [
            f"{d},{s},{st},CHEST,{vp},3056,2544,21800506,213014.531,CHEST,{vc},Erect"
            for d, s, st, vp, vc, _ in IMAGES
        ]
        + list(extra_meta)
    )
    write(root / "mimic-cxr-2.0.0-metadata.csv", meta)
    write(root / f"mimic-cxr-2.0.0-{labeler}.csv", ["subject_id,study_id," + ",".join(TERMS), *labels])
    if split:
        write(
            root / "mimic-cxr-2.0.0-split.csv",
            ["dicom_id,study_id,subject_id,split"] + [f"{d},{st},{s},{sp}" for d, s, st, _, _, sp in IMAGES],
        )


def test_join_paths_views_and_official_split(tmp_path):
    layout(tmp_path)
    df, findings, report = build_index("mimic", tmp_path, views="all", uncertain="ignore")
    d = df.set_index("image_id")
    assert d.loc["aa-1", "path"] == "files/p10/p10000032/s50414267/aa-1.jpg"
    assert d.loc["aa-2", "view"] == "LATERAL" and d.loc["cc-2", "view"] == "OTHER"
    assert d.loc["cc-1", "view"] == "PA"  # ViewPosition missing: ViewCodeSequence decides
    assert d.loc["bb-1", "split"] == "val" and d.loc["aa-1", "split"] == "train"
    assert d.loc["aa-2", "no_finding"] == 1  # images inherit their study's labels
    assert np.isnan(d.loc["bb-1", "edema"]) and d.loc["bb-1", "pleural_effusion"] == 1
    assert np.isnan(d.loc["dd-1", "cardiomegaly"])  # no label row (no report): unknown, whatever --blank
    assert report["images_without_label_row"] == 1 and report["views_from_view_code"] == 1
    assert d.loc["aa-1", "patient_id"] == "10000032" and d.loc["aa-1", "study_id"] == "50414267"


def test_default_views_are_pa_and_ap(tmp_path):
    layout(tmp_path)
    df, _, report = build_index("mimic", tmp_path)
    assert set(df["view"]) == {"PA", "AP"}
    assert report["dropped"]["views"] == {"LATERAL": 1, "OTHER": 1}


def test_negbio_and_hash_split_without_split_file(tmp_path):
    layout(tmp_path, split=False, labeler="negbio")
    df, _, report = build_index("mimic", tmp_path, labeler="negbio", split_seed=3)
    assert report["split"]["method"].startswith("stratified")
    assert df.groupby("patient_id")["split"].nunique().max() == 1


def test_radiologist_test_set(tmp_path):
    layout(tmp_path)
    rad_terms = [t if t != "Lung Opacity" else "Airspace Opacity" for t in TERMS]
    row = {t: "" for t in rad_terms}
    row.update({"Airspace Opacity": "1.0", "Cardiomegaly": "0.0"})
    write(
        tmp_path / "mimic-cxr-2.1.0-test-set-labeled.csv",
        ["study_id," + ",".join(rad_terms), "50771383," + ",".join(row[t] for t in rad_terms)],
        gz=False,
    )
    df, _, report = build_index("mimic", tmp_path, radiologist_test=True, views="all")
    test = df[df["split"] == "test"].set_index("image_id")
    assert list(test.index) == ["cc-1"]  # only studies with radiologist labels stay in test
    assert test.loc["cc-1", "lung_opacity"] == 1 and test.loc["cc-1", "cardiomegaly"] == 0
    assert report["radiologist_test"]["test_images_dropped"] == 2
    assert (df["split"] == "train").sum() == 2  # other splits untouched


@pytest.mark.parametrize(
    "labels,extra,match",
    [
        (LABELS + [label_row("10000032", "50414267")], (), "duplicated subject_id\\+study_id"),
        (
            LABELS[:1] + [label_row("10000764", "57375967", Edema="3.0")],
            (),
            "unknown label value 3 in column 'Edema'",
        ),
        (LABELS, ("aa-1,10000032,50414267,CHEST,PA,1,1,1,1,CHEST,,Erect",), "duplicated dicom_id 'aa-1'"),
        (
            LABELS,
            ("zz-9,12345678,51111111,CHEST,PA,1,1,1,1,CHEST,,Erect",),
            "'zz-9' of the metadata is not in the split",
        ),
    ],
)
def test_bad_input(tmp_path, labels, extra, match):
    layout(tmp_path, labels=labels, extra_meta=extra)
    with pytest.raises(InputError, match=match):
        build_index("mimic", tmp_path)


def test_missing_files_are_named(tmp_path):
    tmp_path.joinpath("x").mkdir()
    with pytest.raises(InputError, match="MIMIC-CXR metadata file not found"):
        build_index("mimic", tmp_path / "x")
    layout(tmp_path / "y")
    with pytest.raises(InputError, match="radiologist test labels not found"):
        build_index("mimic", tmp_path / "y", radiologist_test=True)

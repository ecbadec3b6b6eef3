"""Phantom datasets on disk: official layouts, headers and conventions, read back; truth frames."""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import resolve_inside
from cxrbench.index.schema import check_no_leakage, read_index, validate_index
from cxrbench.phantom import generate, truth_findings

SIZE = 64
OPTIONS = {
    "nih": {"rgba_rate": 0.1},
    "chexpert": {"test_set": True, "uncertain_rate": 0.3},
    "mimic": {"missing_view_rate": 0.1},
    "padchest": {},
    "vindr": {"kaggle": True},
    "csv": {},
}
PATIENTS = {"nih": 14, "chexpert": 24, "mimic": 16, "padchest": 40, "vindr": 20, "csv": 16}


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, tuple[Path, pd.DataFrame]]:
    out = {}
    for fmt, opts in OPTIONS.items():
        root = tmp_path_factory.mktemp(fmt)
        truth = generate(
            root,
            fmt,
            PATIENTS[fmt],
            size=SIZE,
            seed=5,
            quiet=True,
            prevalence=None if fmt == "csv" else {"cardiomegaly": 0.3, "pleural_effusion": 0.3},
            **opts,
        )
        out[fmt] = (root, truth)
    return out


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "phantom.json":
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _raw_header(path: Path) -> str:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return f.readline().rstrip("\n")


# ---- every format ----------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(OPTIONS))
def test_truth_is_a_valid_index_matching_the_files(made, fmt):
    root, truth = made[fmt]
    findings = list(truth_findings(fmt))
    validate_index(truth, findings)
    check_no_leakage(truth)
    back, back_findings = read_index(root / "_phantom" / "truth.parquet")
    assert back_findings == findings
    pd.testing.assert_frame_equal(
        back.reset_index(drop=True), truth.reset_index(drop=True), check_dtype=False
    )
    assert (truth["dataset"] == fmt).all()
    for rel in truth["path"]:
        assert resolve_inside(root, rel).is_file(), rel
    files = [p for p in root.rglob("*") if p.suffix in (".png", ".jpg", ".dicom")]
    assert len(files) == len(truth)
    values = truth[findings].to_numpy()
    assert set(np.unique(values)) <= {0.0, 1.0}
    others = [f for f in findings if f != "no_finding" and not f.endswith(("_left", "_right"))]
    none_positive = truth[others].sum(axis=1).to_numpy() == 0
    if fmt == "csv":  # healthy = every grade 0; faint grade 1-2 findings are neither healthy nor positive
        assert not (truth["no_finding"].to_numpy() == 1)[~none_positive].any()
    else:
        np.testing.assert_array_equal(truth["no_finding"].to_numpy() == 1, none_positive)
    assert truth[others].to_numpy().sum() > 0 and truth["no_finding"].sum() > 0


def test_same_seed_same_bytes_other_seed_other_bytes(made, tmp_path):
    for fmt in ("padchest", "vindr"):
        root, _ = made[fmt]
        again = tmp_path / f"{fmt}-again"
        generate(
            again,
            fmt,
            PATIENTS[fmt],
            size=SIZE,
            seed=5,
            quiet=True,
            batch_size=7,
            prevalence={"cardiomegaly": 0.3, "pleural_effusion": 0.3},
            **OPTIONS[fmt],
        )
        assert _tree_digest(again) == _tree_digest(root)
    other = tmp_path / "other"
    generate(
        other,
        "vindr",
        PATIENTS["vindr"],
        size=SIZE,
        seed=6,
        quiet=True,
        prevalence={"cardiomegaly": 0.3, "pleural_effusion": 0.3},
        **OPTIONS["vindr"],
    )
    assert _tree_digest(other) != _tree_digest(made["vindr"][0])


# ---- NIH -------------------------------------------------------------------------------------------


def test_nih_layout_header_quirk_and_lists(made):
    root, truth = made["nih"]
    path = root / "Data_Entry_2017_v2020.csv"
    assert _raw_header(path) == (
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
    )
    df = pd.read_csv(path)
    assert list(df.columns) == [
        "Image Index",
        "Finding Labels",
        "Follow-up #",
        "Patient ID",
        "Patient Age",
        "Patient Gender",
        "View Position",
        "OriginalImage[Width",
        "Height]",
        "OriginalImagePixelSpacing[x",
        "y]",
    ]
    assert df["Patient ID"].dtype.kind == "i"
    assert (df["Image Index"].str[:8].astype(int) == df["Patient ID"]).all()
    assert df["Image Index"].str.fullmatch(r"\d{8}_\d{3}\.png").all()
    assert set(df["View Position"]) <= {"PA", "AP"}
    spelled = {
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Effusion",
        "Mass",
        "Nodule",
        "Pneumonia",
        "Pneumothorax",
        "No Finding",
    }
    tokens = {t for s in df["Finding Labels"] for t in s.split("|")}
    assert tokens <= spelled and {"Effusion", "Cardiomegaly", "No Finding"} <= tokens
    assert not df["Finding Labels"].str.contains("No Finding\\|").any()
    train = (root / "train_val_list.txt").read_text().split()
    test = (root / "test_list.txt").read_text().split()
    assert sorted(train + test) == sorted(df["Image Index"]) and train and test
    assert not {n[:8] for n in train} & {n[:8] for n in test}  # patient-disjoint
    assert set(truth.loc[truth["split"] == "test", "image_id"]) == set(test)
    assert all(re.fullmatch(r"images_0(0[1-9]|1[0-2])/images/\d{8}_\d{3}\.png", p) for p in truth["path"])
    modes = {Image.open(root / p).mode for p in truth["path"]}
    assert "L" in modes and modes <= {"L", "RGBA"}
    bbox = pd.read_csv(root / "BBox_List_2017.csv")
    assert list(bbox.columns[:3]) == ["Image Index", "Finding Label", "Bbox [x"]
    assert set(bbox["Finding Label"]) <= {
        "Atelectasis",
        "Effusion",
        "Cardiomegaly",
        "Infiltrate",
        "Pneumonia",
        "Pneumothorax",
        "Mass",
        "Nodule",
    }


def test_nih_older_header_and_flat_layout(tmp_path):
    truth = generate(tmp_path, "nih", 4, size=32, seed=1, quiet=True, layout="flat", header="2017")
    lines = (tmp_path / "Data_Entry_2017_v2020.csv").read_text().splitlines()
    assert lines[0].endswith("OriginalImagePixelSpacing[x,y],") and "Patient Sex" in lines[0]
    assert all(line.endswith(",") for line in lines)
    assert len(next(csv.reader(io.StringIO(lines[1])))) == 12
    assert all(p.startswith("images/") and p.count("/") == 1 for p in truth["path"])


# ---- CheXpert --------------------------------------------------------------------------------------


CHEXPERT_HEADER = (
    "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Enlarged Cardiomediastinum,Cardiomegaly,"
    "Lung Opacity,Lung Lesion,Edema,Consolidation,Pneumonia,Atelectasis,Pneumothorax,"
    "Pleural Effusion,Pleural Other,Fracture,Support Devices"
)


def test_chexpert_layout_and_values(made):
    root, truth = made["chexpert"]
    assert _raw_header(root / "train.csv") == CHEXPERT_HEADER
    assert _raw_header(root / "valid.csv") == CHEXPERT_HEADER
    train = pd.read_csv(root / "train.csv")
    valid = pd.read_csv(root / "valid.csv")
    test = pd.read_csv(root / "test_labels.csv")
    pattern = r"CheXpert-v1\.0-small/(train|valid)/patient\d{5}/study\d+/view\d_(frontal|lateral)\.jpg"
    assert train["Path"].str.fullmatch(pattern).all() and valid["Path"].str.fullmatch(pattern).all()
    assert test["Path"].str.fullmatch(r"test/patient\d{5}/study1/view\d_(frontal|lateral)\.jpg").all()
    assert list(test.columns) == ["Path"] + CHEXPERT_HEADER.split(",")[5:]
    labels = CHEXPERT_HEADER.split(",")[5:]
    train_vals = set(
        np.unique(train[labels].to_numpy(dtype=float)[~np.isnan(train[labels].to_numpy(dtype=float))])
    )
    assert train_vals == {1.0, 0.0, -1.0}  # uncertain_rate > 0
    assert train[labels].isna().any().any()  # blanks = not mentioned
    assert set(train["No Finding"].dropna()) == {1.0}
    for df in (valid, test):
        assert not df[labels].isna().any().any() and set(np.unique(df[labels].to_numpy())) <= {0.0, 1.0}
    assert set(train["Sex"]) <= {"Male", "Female"}
    lateral = train["Frontal/Lateral"] == "Lateral"
    assert train.loc[lateral, "AP/PA"].isna().all() and train.loc[~lateral, "AP/PA"].isin(["AP", "PA"]).all()
    assert (train["Path"].str.endswith("_lateral.jpg") == lateral).all()
    val_ids = set(valid["Path"].str.split("/").str[2])
    train_ids = set(train["Path"].str.split("/").str[2])
    assert not val_ids & train_ids and min(val_ids) > max(train_ids)  # numbered after the training patients
    assert set(truth["split"]) == {"train", "val", "test"}
    assert not truth["path"].str.startswith("CheXpert").any()
    assert (truth["image_id"] == truth["path"].str.split("/", n=1).str[1].str.removesuffix(".jpg")).all()
    test_rows = truth["split"] == "test"  # test_labels.csv tells no view (beyond the file name), sex or age
    assert (
        set(truth.loc[test_rows, "view"]) <= {"UNKNOWN", "LATERAL"}
        and truth.loc[test_rows, "sex"].isna().all()
    )
    assert set(truth.loc[~test_rows, "view"]) <= {"AP", "PA", "LATERAL"}
    assert set(truth["drawn_view"]) <= {"AP", "PA", "AP_SUPINE", "LATERAL"}
    assert truth["study_id"].str.fullmatch(r"patient\d{5}/study\d+").all()
    # Positives in the file are the truth (uncertain ones are -1.0 in train).
    merged = train.assign(path=train["Path"].str.split("/", n=1).str[1]).merge(truth, on="path")
    pos = merged["Cardiomegaly"].isin([1.0, -1.0]) | merged["Cardiomegaly"].isna()
    assert (merged.loc[merged["Cardiomegaly"] == 1.0, "cardiomegaly"] == 1).all()
    assert (merged.loc[merged["cardiomegaly"] == 1, "Cardiomegaly"].isin([1.0, -1.0])).all()
    assert pos.any()
    with Image.open(root / truth["path"].iloc[0]) as im:
        assert im.format == "JPEG" and im.mode == "L"


# ---- MIMIC -----------------------------------------------------------------------------------------


def test_mimic_layout_and_tables(made):
    root, truth = made["mimic"]
    labels = [
        "Atelectasis",
        "Cardiomegaly",
        "Consolidation",
        "Edema",
        "Enlarged Cardiomediastinum",
        "Fracture",
        "Lung Lesion",
        "Lung Opacity",
        "No Finding",
        "Pleural Effusion",
        "Pleural Other",
        "Pneumonia",
        "Pneumothorax",
        "Support Devices",
    ]
    for name in ("chexpert", "negbio"):
        assert _raw_header(root / f"mimic-cxr-2.0.0-{name}.csv.gz") == ",".join(
            ["subject_id", "study_id"] + labels
        )
    meta = pd.read_csv(root / "mimic-cxr-2.0.0-metadata.csv.gz")
    assert list(meta.columns) == [
        "dicom_id",
        "subject_id",
        "study_id",
        "PerformedProcedureStepDescription",
        "ViewPosition",
        "Rows",
        "Columns",
        "StudyDate",
        "StudyTime",
        "ProcedureCodeSequence_CodeMeaning",
        "ViewCodeSequence_CodeMeaning",
        "PatientOrientationCodeSequence_CodeMeaning",
    ]
    assert meta["dicom_id"].str.fullmatch(r"([0-9a-f]{8}-){4}[0-9a-f]{8}").all()
    assert meta["subject_id"].astype(str).str.fullmatch(r"1\d{7}").all()
    assert meta["study_id"].astype(str).str.fullmatch(r"5\d{7}").all()
    assert (
        set(meta["ViewPosition"].dropna()) <= {"PA", "AP", "LATERAL", "LL"}
        and meta["ViewPosition"].isna().any()
    )
    split = pd.read_csv(root / "mimic-cxr-2.0.0-split.csv.gz")
    assert list(split.columns) == ["dicom_id", "study_id", "subject_id", "split"]
    assert set(split["split"]) == {"train", "validate", "test"}
    assert (split.groupby("subject_id")["split"].nunique() == 1).all()
    tsl = pd.read_csv(root / "mimic-cxr-2.1.0-test-set-labeled.csv")
    assert tsl.columns[0] == "study_id" and "Airspace Opacity" in tsl.columns
    assert "subject_id" not in tsl.columns and "Lung Opacity" not in tsl.columns
    assert set(tsl["study_id"]) == set(split.loc[split["split"] == "test", "study_id"])
    listed = (root / "IMAGE_FILENAMES").read_text().split()
    assert sorted(listed) == sorted(truth["path"])
    for p in listed:
        m = re.fullmatch(r"files/p(\d\d)/p(\d{8})/s(\d{8})/([0-9a-f-]{44})\.jpg", p)
        assert m and m.group(2).startswith(m.group(1))
    chex = pd.read_csv(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    negbio = pd.read_csv(root / "mimic-cxr-2.0.0-negbio.csv.gz")
    assert chex["study_id"].is_unique and len(chex) == meta["study_id"].nunique()
    np.testing.assert_array_equal(chex[labels].to_numpy() == 1.0, negbio[labels].to_numpy() == 1.0)
    assert truth["sex"].isna().all() and truth["age"].isna().all()
    assert set(truth["split"]) == {"train", "val", "test"}
    # Equalized JPEGs: the grey levels spread over the whole range.
    arr = np.asarray(Image.open(root / truth["path"].iloc[0]))
    assert arr.min() < 20 and arr.max() > 235 and 100 < arr.mean() < 155


# ---- PadChest --------------------------------------------------------------------------------------


def test_padchest_csv_quirks_and_16_bit_images(made, tmp_path):
    root, truth = made["padchest"]
    path = root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
    header = _raw_header(path).split(",")
    assert len(header) == 36 and header[0] == "" and header[1:3] == ["ImageID", "ImageDir"]
    assert header[-5:] == [
        "Labels",
        "Localizations",
        "LabelsLocalizationsBySentence",
        "labelCUIS",
        "LocalizationsCUIS",
    ]
    df = pd.read_csv(path)
    assert df.columns[0].startswith("Unnamed") and (df.iloc[:, 0] == np.arange(len(df))).all()
    assert df["ImageID"].str.fullmatch(r"\d+_[a-z0-9]{6}\.png").all()
    assert (df["ImageID"].str.split("_").str[0] == df["StudyID"].astype(str)).all()
    assert df["PatientBirth"].dtype == float and set(df["Projection"]) <= {"PA", "L", "AP", "AP_horizontal"}
    parsed = [ast.literal_eval(s) for s in df["Labels"]]
    items = [t for lst in parsed for t in lst]
    assert any(t.startswith(" ") for t in items) and "" in items  # the real quirks
    stripped = [{t.strip() for t in lst} - {""} for lst in parsed]
    assert any(s == {"normal"} for s in stripped)
    distractors = {
        "pericardial effusion",
        "pseudonodule",
        "hydropneumothorax",
        "subcutaneous emphysema",
        "chronic changes",
        "kyphosis",
        "COPD signs",
        "callus rib fracture",
        "hiatal hernia",
        "aortic elongation",
    }
    assert any(s & distractors for s in stripped)
    merged = df.merge(truth, left_on="ImageID", right_on="image_id")
    normal = np.array([s == {"normal"} for s in stripped])[merged.index]
    np.testing.assert_array_equal(normal, merged["no_finding"].to_numpy() == 1)
    for s, row in zip(stripped, merged.itertuples(), strict=True):
        assert ("cardiomegaly" in s) == (row.cardiomegaly == 1)
        assert bool(s & {"pneumothorax", "hydropneumothorax"}) == (row.pneumothorax == 1)
        assert bool(s & {"pleural effusion", "hydropneumothorax"}) == (row.pleural_effusion == 1)
    for cuis in df["labelCUIS"]:  # numpy-style arrays: quoted codes separated by spaces, no commas
        assert re.fullmatch(r"\[('C\d{7}'( 'C\d{7}')*)?\]", cuis), cuis
    expected = {"PA": "PA", "L": "LATERAL", "AP": "AP", "AP_horizontal": "AP_SUPINE"}
    assert all(expected[p] == v for p, v in zip(merged["Projection"], merged["view"], strict=True))
    assert {"PA", "L", "AP_horizontal"} <= set(merged["Projection"])
    assert (merged["path"] == merged["ImageDir"].astype(str) + "/" + merged["ImageID"]).all()
    for row in merged.head(6).itertuples():
        with Image.open(root / row.path) as im:
            assert im.mode in ("I;16", "I") and im.format == "PNG"
            arr = np.asarray(im)
        assert arr.max() <= 2 ** int(row.BitsStored_DICOM) - 1 and arr.max() > 2 ** (
            int(row.BitsStored_DICOM) - 2
        )
    ten = generate(tmp_path, "padchest", 3, size=32, seed=2, quiet=True, bits=10)
    assert max(np.asarray(Image.open(tmp_path / p)).max() for p in ten["path"]) <= 1023
    assert set(truth["split"]) <= {"train", "val", "test"}


# ---- VinDr -----------------------------------------------------------------------------------------


def test_vindr_dicoms_and_reader_tables(made):
    pydicom = pytest.importorskip("pydicom")
    root, truth = made["vindr"]
    train = pd.read_csv(root / "annotations" / "image_labels_train.csv")
    test = pd.read_csv(root / "annotations" / "image_labels_test.csv")
    assert list(train.columns[:4]) == ["image_id", "rad_id", "Aortic enlargement", "Atelectasis"]
    assert len(train.columns) == 30 and train.columns[-1] == "No finding"
    assert (
        "Other disease" in test.columns
        and "Other diseases" not in test.columns
        and "rad_id" not in test.columns
    )
    assert (train.groupby("image_id")["rad_id"].nunique() == 3).all()
    assert train["rad_id"].str.fullmatch(r"R([1-9]|1[0-7])").all()
    majority = train.groupby("image_id")[["Cardiomegaly", "Pleural effusion", "No finding"]].sum() >= 2
    t = truth.set_index("image_id")
    np.testing.assert_array_equal(majority["Cardiomegaly"], t.loc[majority.index, "cardiomegaly"] == 1)
    np.testing.assert_array_equal(
        majority["Pleural effusion"], t.loc[majority.index, "pleural_effusion"] == 1
    )
    ann = pd.read_csv(root / "annotations" / "annotations_train.csv")
    assert list(ann.columns) == ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
    boxes = ann.dropna(subset=["x_min"])
    assert (
        len(boxes)
        and (boxes[["x_min", "y_min"]] >= 0).all().all()
        and (boxes[["x_max", "y_max"]] <= SIZE).all().all()
    )
    assert ann.loc[ann["x_min"].isna(), "class_name"].eq("No finding").all()
    kaggle = pd.read_csv(root / "train.csv")
    assert list(kaggle.columns) == [
        "image_id",
        "class_name",
        "class_id",
        "rad_id",
        "x_min",
        "y_min",
        "x_max",
        "y_max",
    ]
    assert kaggle.loc[kaggle["class_name"] == "No finding", "class_id"].eq(14).all()
    photometric, seen_rescale = set(), False
    for row in truth.itertuples():
        ds = pydicom.dcmread(root / row.path)
        assert ds.file_meta.MediaStorageSOPClassUID in (
            "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.5.1.4.1.1.1.1",
        )
        assert ds.BitsStored in (12, 14) and ds.pixel_array.max() <= 2**ds.BitsStored - 1
        arr = ds.pixel_array.astype(float)
        centre = arr[SIZE // 2 - 4 : SIZE // 2 + 4, SIZE // 2 - 4 : SIZE // 2 + 4].mean()  # heart: bright
        if ds.PhotometricInterpretation == "MONOCHROME1":
            assert centre < np.median(arr)  # stored inverted: bright anatomy has low values
        else:
            assert centre > np.median(arr)
        photometric.add(ds.PhotometricInterpretation)
        seen_rescale |= "RescaleSlope" in ds
    assert photometric == {"MONOCHROME1", "MONOCHROME2"} and seen_rescale
    assert (truth["patient_id"] == truth["image_id"]).all() and set(truth["view"]) == {"PA"}


# ---- csv (UKA-like) --------------------------------------------------------------------------------


def test_csv_grades_and_truth(made):
    root, truth = made["csv"]
    df = pd.read_csv(root / "labels.csv")
    graded = [
        "cardiomegaly",
        "congestion",
        "pleural_effusion_left",
        "pleural_effusion_right",
        "pneumonic_infiltrates_left",
        "pneumonic_infiltrates_right",
        "atelectasis_left",
        "atelectasis_right",
    ]
    assert list(df.columns) == [
        "image_path",
        "patient_id",
        "study_id",
        "view",
        "sex",
        "age",
        "split",
        *graded,
        "healthy",
    ]
    assert df[graded].isin(range(5)).all().all() and set(np.unique(df[graded])) > {0, 3}
    assert (df["healthy"] == (df[graded].sum(axis=1) == 0)).all()
    assert (df[graded].isin([1, 2])).any().any()  # faint, negative grades exist
    merged = df.merge(truth, left_on="image_path", right_on="path", suffixes=("", "_truth"))
    for col in graded[2:]:
        name = col.replace("pneumonic_infiltrates", "pneumonia")  # truth: canonical <finding>_<side>
        np.testing.assert_array_equal(merged[col] >= 3, merged[name if name != col else f"{col}_truth"] == 1)
    np.testing.assert_array_equal(merged["cardiomegaly"] >= 3, merged["cardiomegaly_truth"] == 1)
    assert (root / "_phantom" / "csv_mapping.yaml").is_file()
    assert (
        set(df["split"]) == {"train", "val", "test"}
        and (df.groupby("patient_id")["split"].nunique() == 1).all()
    )


# ---- errors and overwrite ---------------------------------------------------------------------------


def test_refuses_non_empty_out_and_overwrites_a_previous_phantom(tmp_path):
    generate(tmp_path / "a", "csv", 2, size=32, quiet=True)
    with pytest.raises(InputError, match="not empty"):
        generate(tmp_path / "a", "csv", 2, size=32, quiet=True)
    truth = generate(tmp_path / "a", "nih", 2, size=32, quiet=True, overwrite=True)
    assert (
        not (tmp_path / "a" / "labels.csv").exists()
        and (tmp_path / "a" / "Data_Entry_2017_v2020.csv").exists()
    )
    assert len(truth) == len(list((tmp_path / "a").rglob("*.png")))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="holds none .* it would delete: notes.txt"):
        generate(tmp_path / "b", "csv", 2, size=32, quiet=True, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["notes.txt"]  # nothing planted
    assert not list(tmp_path.rglob(".phantom-*"))


def test_overwrite_never_touches_a_real_dataset_or_a_foreign_file(tmp_path):
    """The adversarial pass: --overwrite into a real NIH folder replaced its CSV and planted a marker,
    and a second --overwrite deleted its images/. Now both are refused and nothing changes."""
    real = tmp_path / "nih"
    (real / "images").mkdir(parents=True)
    (real / "images" / "00000001_000.png").write_bytes(b"real image")
    (real / "Data_Entry_2017_v2020.csv").write_text("Image Index,Finding Labels\n00000001_000.png,Mass\n")
    before = {p: p.read_bytes() for p in real.rglob("*") if p.is_file()}
    for _ in range(2):
        with pytest.raises(InputError, match="replaces only a phantom"):
            generate(real, "nih", 2, size=32, quiet=True, overwrite=True)
    assert {p: p.read_bytes() for p in real.rglob("*") if p.is_file()} == before
    assert not (real / "_phantom").exists()

    ph = tmp_path / "ph"
    generate(ph, "nih", 2, size=32, quiet=True)
    (ph / "my_annotation.json").write_text("{}")  # the user adds a file to the phantom
    with pytest.raises(InputError, match="did not write: my_annotation.json"):
        generate(ph, "nih", 3, size=32, quiet=True, overwrite=True)
    assert (ph / "my_annotation.json").is_file()
    (ph / "my_annotation.json").unlink()
    generate(ph, "nih", 3, size=32, quiet=True, overwrite=True)  # a phantom of its own: replaced
    info = json.loads((ph / "_phantom" / "phantom.json").read_text())
    on_disk = sorted(p.relative_to(ph).as_posix() for p in ph.rglob("*") if p.is_file())
    assert sorted(info["files"]) == on_disk  # the marker lists every file written, and only those


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fmt": "nhi"}, "did you mean 'nih'"),
        ({"n_patients": 0}, "patients"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"layot": "flat"}, "did you mean 'layout'"),
        ({"layout": "tree"}, "layout"),
        ({"val_fraction": 0.1}, "unknown option"),
        ({"test_fraction": 0.95}, "outside"),
        ({"prevalence": "cardiomegaly=abc"}, "not a number"),
        ({"views": {"LATERAL": 0.8, "PA": 0.2}}, "lateral"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"fmt": "nih", "n_patients": 2, "size": 32} | kwargs
    with pytest.raises(InputError, match=match):
        generate(tmp_path / "x", args.pop("fmt"), args.pop("n_patients"), quiet=True, **args)

import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index
from cxrbench.index.sources.padchest import KNOWN_BAD_FILES, parse_terms

HEADER = (
    ",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,ViewPosition_DICOM,"
    "Projection,MethodProjection,Pediatric,Modality_DICOM,Manufacturer_DICOM,PhotometricInterpretation_DICOM,"
    "PixelRepresentation_DICOM,PixelAspectRatio_DICOM,SpatialResolution_DICOM,BitsStored_DICOM,"
    "WindowCenter_DICOM,WindowWidth_DICOM,Rows_DICOM,Columns_DICOM,XRayTubeCurrent_DICOM,Exposure_DICOM,"
    "ExposureInuAs_DICOM,ExposureTime,RelativeXRayExposure_DICOM,ReportID,Report,MethodLabel,Labels,"
    "Localizations,LabelsLocalizationsBySentence,labelCUIS,LocalizationsCUIS"
)


def row(i, image, patient, projection, labels, birth="1950.0", sex="M", folder="0", date="20140915"):
    report = '"texto del informe,\ncon salto de linea"'  # quoted newline, as in the release
    cuis = "\"['C0034069' 'C0742362']\""
    return (
        f"{i},{image},{folder},{date},st{i},{patient},{birth},{sex},POSTEROANTERIOR,{projection},"
        f"Manual review of DICOM fields,No,CR,Philips,MONOCHROME2,0,\"['1', '1']\",0.143,12,2047.0,4095.0,"
        f'3000,3000,0,0,None,0,470,{i},{report},Physician,"{labels}","[\'loc basal\']","[[]]",{cuis},[]'
    )


ROWS = [
    row(0, "a_1.png", "p1", "PA", "['normal']"),
    row(1, "a_2.png", "p1", "L", "['normal']"),
    row(
        2,
        "b_1.png",
        "p2",
        "AP_horizontal",
        "['pleural effusion', ' pericardial effusion', ' pseudonodule', '']",
        sex="F",
        folder="54",
    ),
    row(3, "c_1.png", "p3", "AP", "['hydropneumothorax', 'nodule', ' NSG tube']"),
    row(4, "d_1.png", "p4", "PA", "['exclude']"),
    row(5, "e_1.png", "p5", "PA", "nan"),
    row(6, "f_1.png", "p6", "PA", "['normal', 'infiltrates']"),
    row(7, "g_1.png", "p7", "COSTAL", "['rib fracture']"),
    row(8, "h_1.png", "p8", "PA", "['brand new term', 'cardiomegaly']"),
    row(9, KNOWN_BAD_FILES[0], "p9", "PA", "['normal']"),
    row(10, "i_1.png", "p10", "PA", "['']"),
]
NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


def write(root, rows=ROWS):
    root.mkdir(parents=True, exist_ok=True)
    (root / NAME).write_text("\n".join([HEADER, *rows]) + "\n")


def test_parse_terms_strips_and_handles_literals():
    assert parse_terms("['normal', ' pneumonia', '']") == ["normal", "pneumonia"]
    assert parse_terms("[]") == []
    assert parse_terms("[\"it's odd\", 'x']") == ["it's odd", "x"]  # ast fallback
    with pytest.raises(ValueError):
        parse_terms("[1, 2]")


def test_terms_views_drops_and_unknown_terms(tmp_path):
    write(tmp_path)
    df, findings, report = build_index("padchest", tmp_path, views="all")
    d = df.set_index("image_id")
    b = d.loc["b_1.png"]
    assert b["pleural_effusion"] == 1 and b["nodule"] == 0 and b["view"] == "AP_SUPINE" and b["sex"] == "F"
    c = d.loc["c_1.png"]
    assert (
        c["pneumothorax"] == 1
        and c["pleural_effusion"] == 1
        and c["nodule_mass"] == 1
        and c["support_devices"] == 1
    )
    assert d.loc["a_1.png", "no_finding"] == 1 and d.loc["a_2.png", "view"] == "LATERAL"
    assert (
        d.loc["f_1.png", "no_finding"] == 0 and d.loc["f_1.png", "infiltration"] == 1
    )  # conflict: positive wins
    assert d.loc["g_1.png", "view"] == "OTHER" and d.loc["g_1.png", "rib_fracture"] == 1
    assert d.loc["i_1.png", "no_finding"] == 0  # empty list: nothing positive, not called normal
    assert d.loc["a_1.png", "age"] == 64 and d.loc["a_1.png", "path"] == "0/a_1.png"
    assert report["dropped"]["exclude_token"] == 1 and report["dropped"]["labels_missing"] == 1
    assert report["dropped"]["known_bad_files"] == 1 and KNOWN_BAD_FILES[0] not in d.index
    assert report["unknown_terms"] == {"brand new term": 1}
    assert d.loc["h_1.png", "cardiomegaly"] == 1
    assert report["no_finding"]["no_finding_conflicts"] == 1
    assert any("brand new term" in w for w in report["warnings"])


def test_images_found_flat_or_in_imagedir_folders(tmp_path):
    write(tmp_path)
    (tmp_path / "54").mkdir()
    (tmp_path / "54" / "b_1.png").write_bytes(b"x")
    (tmp_path / "c_1.png").write_bytes(b"x")
    df, _, report = build_index("padchest", tmp_path)
    d = df.set_index("image_id")["path"]
    assert d["b_1.png"] == "54/b_1.png" and d["c_1.png"] == "c_1.png"
    assert report["images"]["located"] and report["images"]["found"] == 2


def test_views_default_frontal_and_study_preset(tmp_path):
    write(tmp_path)
    df, findings, _ = build_index("padchest", tmp_path, labels="study-padchest")
    assert set(df["view"]) <= {"PA", "AP", "AP_SUPINE"} and len(findings) == 17


def test_bad_labels_literal_is_named(tmp_path):
    write(tmp_path, ROWS + [row(11, "z.png", "p11", "PA", "normal, pneumonia")])
    with pytest.raises(InputError, match="line 24: column 'Labels' is not a list literal"):
        build_index("padchest", tmp_path)


@pytest.fixture(scope="module")
def real_padchest(xrv_data_dir):
    path = xrv_data_dir / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
    return build_index("padchest", xrv_data_dir, labels_file=path, views="all", labels="study-padchest")


def test_real_padchest_counts_and_no_unknown_terms(real_padchest):
    df, findings, report = real_padchest
    assert report["rows_read"] == 160_861 and report["unknown_terms"] == {}
    dropped = report["dropped"]
    assert dropped["labels_missing"] == 103 and dropped["known_bad_files"] <= 21
    assert (
        len(df) == 160_861 - dropped["labels_missing"] - dropped["exclude_token"] - dropped["known_bad_files"]
    )
    # Projection counts (datasets.md) minus rows dropped for missing labels / exclude / bad files
    views = df["view"].value_counts()
    assert 91_728 - 1_500 < views["PA"] <= 91_728 and 14_346 - 300 < views["AP_SUPINE"] <= 14_346
    assert views["LATERAL"] <= 49_579 and views["AP"] <= 4_559
    assert len(findings) == 17 and report["empty_label_lists"] > 0
    assert df["patient_id"].nunique() <= 67_625


def test_arrow_and_pandas_readers_agree_and_fall_back(tmp_path):
    from cxrbench.index.sources.tables import read_csv

    write(tmp_path)
    cols = dict(
        required=["ImageID", "PatientID", "Projection", "Labels"],
        optional=["ImageDir", "PatientBirth"],
        ids=["PatientID"],
        text=["ImageID"],
    )
    fast = read_csv(tmp_path / NAME, engine="arrow", **cols)
    slow = read_csv(tmp_path / NAME, engine="pandas", **cols)
    pd.testing.assert_frame_equal(fast, slow)
    # a ragged row: pyarrow refuses the file, the pandas fallback reads it like the pandas engine
    (tmp_path / NAME).write_text(HEADER + "\n" + ROWS[0] + ",extra,fields\n")
    pd.testing.assert_frame_equal(
        read_csv(tmp_path / NAME, engine="arrow", **cols), read_csv(tmp_path / NAME, engine="pandas", **cols)
    )


def test_an_image_dir_outside_the_root_is_refused(tmp_path):
    write(tmp_path / "root", ROWS[:1] + [row(5, "z.png", "p9", "PA", "['normal']", folder="../../etc")])
    with pytest.raises(InputError, match="path '../../etc' in column 'ImageDir' is absolute or escapes"):
        build_index("padchest", tmp_path / "root")

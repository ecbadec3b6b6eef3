import gzip

import numpy as np
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index
from cxrbench.index.sources import nih
from cxrbench.index.sources.base import IndexOptions

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
ROWS = [
    "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
    "00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143",
    "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
    "00000003_000.png,Hernia,0,3,81,F,AP,2582,2991,0.143,0.143",
    "00000003_001.png,Effusion|Pleural_Thickening|Nodule,1,3,74,F,AP,2500,2048,0.168,0.168",
    "00000004_000.png,Mass|Nodule,0,4,82,M,AP,2500,2048,0.168,0.168",
]


def write(root, rows=ROWS, header=HEADER, name="Data_Entry_2017_v2020.csv", gz=False):
    root.mkdir(parents=True, exist_ok=True)
    text = "\n".join([header, *rows]) + "\n"
    path = root / (name + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_reads_labels_views_patients(tmp_path):
    write(tmp_path)
    df, findings, report = build_index("nih", tmp_path, labels="all")
    assert len(df) == 6 and df["patient_id"].nunique() == 4
    assert "nodule_mass" in findings and "no_finding" in findings
    row = df.set_index("image_id").loc["00000003_001.png"]
    assert row["pleural_effusion"] == 1 and row["pleural_thickening"] == 1 and row["nodule"] == 1
    assert row["cardiomegaly"] == 0 and row["view"] == "AP" and row["sex"] == "F" and row["age"] == 74
    assert df.set_index("image_id").loc["00000004_000.png", "nodule_mass"] == 1
    assert df.set_index("image_id").loc["00000002_000.png", "no_finding"] == 1
    assert df["path"].str.startswith("images/").all()  # no images: the official layout
    assert report["images"]["located"] is False
    assert not np.isnan(df[findings].to_numpy(dtype=float)).any()  # NIH has no unknowns


def test_header_variants_trailing_comma_sex_and_age_strings(tmp_path):
    header = HEADER.replace("Patient Gender", "Patient Sex") + ","
    rows = [r.replace(",57,", ",057Y,").replace(",58,", ",006M,") + "," for r in ROWS]
    write(tmp_path, rows, header, name="Data_Entry_2017.csv", gz=True)
    df, _, _ = build_index("nih", tmp_path)
    ages = df.set_index("image_id")["age"]
    assert ages["00000001_000.png"] == 57 and ages["00000001_001.png"] == pytest.approx(0.5)
    assert set(df["sex"]) == {"M", "F"}


def test_images_found_in_kaggle_layout_and_official_lists(tmp_path):
    write(tmp_path)
    for i, name in enumerate(r.split(",")[0] for r in ROWS):
        d = tmp_path / f"images_00{1 + i % 2}" / "images"
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"png")
    (tmp_path / "test_list.txt").write_text("00000003_000.png\n00000003_001.png\n")
    (tmp_path / "train_val_list.txt").write_text(
        "\n".join(r.split(",")[0] for r in ROWS if not r.startswith("00000003")) + "\n"
    )
    df, _, report = build_index("nih", tmp_path, check_files=True)
    assert df["path"].str.match(r"^images_00[12]/images/").all()
    assert report["images"]["missing"] == 0
    assert set(df.loc[df["patient_id"] == "3", "split"]) == {"test"}
    assert set(df.loc[df["patient_id"] != "3", "split"]) <= {"train", "val"}
    assert report["split"]["method"].startswith("official + val carved")


@pytest.mark.parametrize(
    "rows,files,match",
    [
        (
            ROWS + ["00000005_000.png,Infiltrate,0,5,1,M,PA,1,1,1,1"],
            {},
            "line 8: unknown finding 'Infiltrate'.*did you mean 'Infiltration'",
        ),
        (ROWS + [ROWS[0]], {}, "duplicated Image Index '00000001_000.png'"),
        (ROWS, {"test_list.txt": "00000003_000.png\n"}, "only one of"),
        (
            ROWS,
            {"test_list.txt": "00000003_000.png\n", "train_val_list.txt": "00000001_000.png\n"},
            "in neither",
        ),
    ],
)
def test_bad_input_is_one_clear_error(tmp_path, rows, files, match):
    write(tmp_path, rows)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=match):
        build_index("nih", tmp_path)


def test_missing_column_names_file_and_closest(tmp_path):
    write(tmp_path, [r for r in ROWS], HEADER.replace("View Position", "View"))
    with pytest.raises(InputError, match="View Position"):
        nih.read(tmp_path, IndexOptions())


@pytest.fixture(scope="module")
def real_nih(xrv_data_dir):
    path = xrv_data_dir / "Data_Entry_2017_v2020.csv.gz"
    return build_index("nih", xrv_data_dir, labels_file=path, views="all")


def test_real_nih_counts_match_the_documentation(real_nih):
    df, findings, _ = real_nih
    assert len(df) == 112_120 and df["patient_id"].nunique() == 30_805
    assert (df["view"] == "PA").sum() == 67_310 and (df["view"] == "AP").sum() == 44_810
    positives = {
        "pneumothorax": 5_302,
        "infiltration": 19_894,
        "pleural_effusion": 13_317,
        "hernia": 227,
        "no_finding": 60_361,
        "pleural_thickening": 3_385,
    }
    for f, n in positives.items():
        assert int((df[f] == 1).sum()) == n, f
    # nodule_mass = nodule OR mass
    assert int((df["nodule_mass"] == 1).sum()) == int(((df["nodule"] == 1) | (df["mass"] == 1)).sum())
    assert (df["sex"] == "M").sum() == 63_340 and df["age"].max() == 95

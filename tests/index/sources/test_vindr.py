import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index
from cxrbench.index.sources.vindr import aggregate_readers

WIDE = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
]


def wide_row(image, rad, *positives):
    return ",".join([image, rad, *("1" if c in positives else "0" for c in WIDE)])


def physionet(root, test_has_rad=False, extra_train=()):
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    train = [
        "image_id,rad_id," + ",".join(WIDE),
        wide_row("img1", "R1", "Cardiomegaly", "Aortic enlargement"),
        wide_row("img1", "R2", "Cardiomegaly"),
        wide_row("img1", "R3", "No finding"),
        wide_row("img2", "R1", "No finding"),
        wide_row("img2", "R4", "No finding"),
        wide_row("img2", "R5", "Rib fracture"),
        wide_row("img3", "R1", "Clavicle fracture"),
        wide_row("img3", "R2", "Rib fracture"),
        wide_row("img3", "R3", "Nodule/Mass", "Other diseases"),
        *extra_train,
    ]
    (ann / "image_labels_train.csv").write_text("\n".join(train) + "\n")
    test_cols = [c if c != "Other diseases" else "Other disease" for c in WIDE]
    head = ("image_id,rad_id," if test_has_rad else "image_id,") + ",".join(test_cols)
    rows = []
    for image, pos in (("t1", ("Pneumothorax",)), ("t2", ("No finding",))):
        vals = ",".join("1" if c in pos else "0" for c in WIDE)
        rows.append(f"{image},R8,{vals}" if test_has_rad else f"{image},{vals}")
    (ann / "image_labels_test.csv").write_text("\n".join([head, *rows]) + "\n")


def test_aggregate_readers_any_vs_majority():
    block = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1], [1, 0]], dtype=np.float32)
    ids = pd.Series(["a", "a", "a", "b", "b", "b"])
    _, maj, readers = aggregate_readers(["cardiomegaly", "no_finding"], block, ids, "majority")
    _, anyr, _ = aggregate_readers(["cardiomegaly", "no_finding"], block, ids, "any")
    assert readers.tolist() == [3, 3]
    assert maj.tolist() == [[1, 0], [0, 1]]
    assert anyr.tolist() == [[1, 0], [1, 0]]  # any: no_finding only when every reader said so


@pytest.mark.parametrize("readers", ["majority", "any"])
def test_physionet_wide_readers_and_official_split(tmp_path, readers):
    physionet(tmp_path)
    df, findings, report = build_index("vindr", tmp_path, readers=readers)
    d = df.set_index("image_id")
    assert d.loc["img1", "cardiomegaly"] == 1
    assert d.loc["img1", "aortic_enlargement"] == (1 if readers == "any" else 0)
    assert d.loc["img3", "fracture"] == 1  # clavicle + rib fracture: 2 of 3 readers saw a fracture
    assert d.loc["img3", "rib_fracture"] == (1 if readers == "any" else 0)
    assert d.loc["img2", "no_finding"] == (1 if readers == "majority" else 0)
    assert (
        d.loc["t1", "split"] == "test" and d.loc["t1", "pneumothorax"] == 1 and d.loc["t2", "no_finding"] == 1
    )
    assert d.loc["t1", "path"] == "test/t1.dicom" and (df["view"] == "PA").all()
    assert set(df.loc[df["image_id"].str.startswith("img"), "split"]) <= {"train", "val"}
    assert "other_disease" in findings and (df["patient_id"] == df["image_id"]).all()
    assert report["format"] == "physionet-wide"


def test_physionet_test_with_rad_id_and_images_with_other_extension(tmp_path):
    physionet(tmp_path, test_has_rad=True)
    (tmp_path / "train").mkdir()
    (tmp_path / "train" / "img1.dcm").write_bytes(b"x")
    df, _, report = build_index("vindr", tmp_path)
    assert df.set_index("image_id").loc["img1", "path"] == "train/img1.dcm"
    assert report["images"]["missing"] == 4


def test_kaggle_long_format(tmp_path):
    lines = [
        "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max",
        "k1,Cardiomegaly,3,R1,1,1,2,2",
        "k1,Cardiomegaly,3,R1,3,3,4,4",
        "k1,No finding,14,R2,,,,",
        "k1,Cardiomegaly,3,R3,1,1,2,2",
        "k2,No finding,14,R1,,,,",
        "k2,No finding,14,R2,,,,",
        "k2,Nodule/Mass,8,R3,1,1,2,2",
    ]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    df, _, report = build_index("vindr", tmp_path, split_fractions="0.5,0,0.5")  # 2 images: no val
    d = df.set_index("image_id")
    assert d.loc["k1", "cardiomegaly"] == 1 and d.loc["k1", "no_finding"] == 0
    assert d.loc["k2", "no_finding"] == 1 and d.loc["k2", "nodule_mass"] == 0
    assert report["format"] == "kaggle-long" and report["split"]["method"].startswith("stratified")
    assert report["readers_per_image"] == {"3": 2}


@pytest.mark.parametrize(
    "extra,match",
    [
        ([wide_row("img4", "R1").replace(",0,", ",2,", 1)], "unknown label value 2 in column"),
        ([wide_row("img1", "R1")], "duplicated image_id\\+rad_id"),
    ],
)
def test_bad_input(tmp_path, extra, match):
    physionet(tmp_path, extra_train=extra)
    with pytest.raises(InputError, match=match):
        build_index("vindr", tmp_path)


def test_unknown_column_and_class(tmp_path):
    physionet(tmp_path)
    p = tmp_path / "annotations" / "image_labels_train.csv"
    p.write_text(p.read_text().replace("Lung cyst", "Lung cysts"))
    with pytest.raises(InputError, match="unknown label column 'Lung cysts'"):
        build_index("vindr", tmp_path)
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "train.csv").write_text("image_id,class_name,class_id,rad_id\nx,Cardiomegally,3,R1\n")
    with pytest.raises(InputError, match="line 2: unknown class_name 'Cardiomegally'"):
        build_index("vindr", tmp_path / "k")


@pytest.fixture(scope="module")
def real_vinbig(xrv_data_dir):
    path = xrv_data_dir / "vinbigdata-train.csv.gz"
    return {
        r: build_index("vindr", xrv_data_dir, labels_file=path, readers=r)[0] for r in ("any", "majority")
    }


def test_real_vinbigdata_union_vs_majority_counts(real_vinbig):
    # image-level positives, union vs majority (datasets.md section 6b)
    expected = {
        "aortic_enlargement": (3_067, 2_346),
        "cardiomegaly": (2_300, 1_817),
        "pleural_thickening": (1_981, 882),
        "fibrosis": (1_617, 1_017),
        "lung_opacity": (1_322, 547),
        "other_lesion": (1_134, 362),
        "pleural_effusion": (1_032, 634),
        "nodule_mass": (826, 405),
        "infiltration": (613, 245),
        "calcification": (452, 177),
        "ild": (386, 152),
        "consolidation": (353, 121),
        "atelectasis": (186, 62),
        "pneumothorax": (96, 58),
    }
    for f, (union, majority) in expected.items():
        assert int((real_vinbig["any"][f] == 1).sum()) == union, f
        assert int((real_vinbig["majority"][f] == 1).sum()) == majority, f
    assert len(real_vinbig["any"]) == 15_000
    assert int((real_vinbig["any"]["no_finding"] == 1).sum()) == 10_606  # all three readers

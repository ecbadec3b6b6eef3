"""Label and box / mask counts of the localization sources on the real metadata the torchxrayvision
wheel ships, against torchxrayvision's own dataset classes (instantiated without images).

Differences are by design and asserted as such: torchxrayvision keeps one SIIM sample per *row* of
the mask file (an image with several masks counts several times), cxrbench one index row per image
and one region per mask; RSNA boxes feed two findings (lung_opacity and pneumonia, as
torchxrayvision's two labels), so the regions table holds each box twice, once per finding.
"""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.common.layout import regions_path
from cxrbench.index.build import build_index
from cxrbench.index.regions import read_regions

xrv = pytest.importorskip("torchxrayvision")


def index_with_regions(tmp_path, dataset, root, **options):
    out = tmp_path / f"{dataset}.parquet"
    df, findings, report = build_index(dataset, root, out=out, views="all", **options)
    regions, _ = read_regions(regions_path(out))
    return df, findings, report, regions


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return str(tmp_path_factory.mktemp("no-images"))  # torchxrayvision's classes need an image folder


def test_nih_boxes_equal_torchxrayvision(xrv_data_dir, tmp_path, images):
    ref = xrv.datasets.NIH_Dataset(images, views="*", unique_patients=False)
    df, _, report, regions = index_with_regions(
        tmp_path, "nih", xrv_data_dir, labels_file=xrv_data_dir / "Data_Entry_2017_v2020.csv.gz"
    )
    boxes = ref.pathology_maskscsv
    assert len(regions) == len(boxes) == 984
    assert (
        regions["image_id"].nunique()
        == boxes["Image Index"].nunique()
        == int(ref.csv["has_masks"].sum())
        == 880
    )
    names = {"Effusion": "pleural_effusion", "Infiltration": "infiltration"}
    want = {names.get(k, k.lower()): v for k, v in boxes["Finding Label"].value_counts().items()}
    assert regions["finding"].value_counts().to_dict() == want
    assert (regions["width"] == 1024).all() and (regions["x1"] <= 1024).all()
    first = regions.iloc[0]  # 00013118_008.png, Atelectasis, x y w h = 225.08 547.02 86.78 79.19
    assert first["image_id"] == "00013118_008.png" and first["x1"] == pytest.approx(
        225.084745762712 + 86.7796610169491
    )


def test_vinbigdata_boxes_equal_torchxrayvision(xrv_data_dir, tmp_path, images):
    ref = xrv.datasets.VinDr_Dataset(images)
    df, _, _, regions = index_with_regions(
        tmp_path, "vindr", xrv_data_dir, labels_file=xrv_data_dir / "vinbigdata-train.csv.gz"
    )
    raw = ref.rawcsv.dropna(subset=["x_min"])
    assert len(regions) == len(raw) == 36_096
    assert regions["image_id"].nunique() == int(ref.csv["has_masks"].sum()) == 4_394
    assert regions.groupby("label").size().to_dict() == raw.groupby("class_name").size().to_dict()
    assert regions["reader"].str.fullmatch(r"R\d+").all() and regions["width"].isna().all()


def test_rsna_labels_and_boxes_equal_torchxrayvision(xrv_data_dir, tmp_path, images):
    ref = xrv.datasets.RSNA_Pneumonia_Dataset(images, views="*")
    df, findings, report, regions = index_with_regions(
        tmp_path, "rsna", xrv_data_dir, labels_file=xrv_data_dir / "kaggle_stage_2_train_labels.csv.zip"
    )
    assert len(df) == len(ref) == 26_684
    for f, name in (("lung_opacity", "Lung Opacity"), ("pneumonia", "Pneumonia")):
        k = ref.pathologies.index(name)
        assert int((df[f] == 1).sum()) == int(ref.labels[:, k].sum()) == 6_012
    boxes = regions[regions["finding"] == "lung_opacity"]
    assert len(boxes) == int(ref.raw_csv["x"].notna().sum()) == 9_555
    assert len(regions[regions["finding"] == "pneumonia"]) == 9_555
    assert boxes["image_id"].nunique() == int(ref.csv["has_masks"].sum()) == 6_012
    views = ref.csv.set_index("patientId")["view"]  # the DICOM headers, joined by torchxrayvision too
    assert (df.set_index("image_id")["view"] == views.reindex(df["image_id"]).to_numpy()).all()
    assert (df["view"] == "PA").sum() == 14_511 and "no_finding" not in findings  # no detailed class file


def test_siim_labels_and_masks_against_torchxrayvision(xrv_data_dir, tmp_path, images):
    ref = xrv.datasets.SIIM_Pneumothorax_Dataset(images)
    df, _, report, regions = index_with_regions(
        tmp_path, "siim", xrv_data_dir, labels_file=xrv_data_dir / "siim-pneumothorax-train-rle.csv.gz"
    )
    assert len(ref) == 12_954 and int(ref.labels.sum()) == 3_576  # one sample per row of the file
    assert len(df) == ref.csv["ImageId"].nunique() == 12_047  # one index row per image
    assert (
        int((df["pneumothorax"] == 1).sum())
        == ref.csv.loc[ref.csv["has_masks"], "ImageId"].nunique()
        == 2_669
    )
    assert len(regions) == int(ref.labels.sum())  # one mask per masked row
    assert report["rle"] == "relative" and (regions["kind"] == "mask").all()
    # the first mask, decoded by torchxrayvision's own function, equals ours
    row = ref.csv[ref.csv["has_masks"]].iloc[0]
    theirs = ref.get_pathology_mask_dict(row["ImageId"], 1024)[0][0]
    from cxrbench.index.regions import region_mask

    ours = np.zeros((1024, 1024), dtype=bool)
    for _, r in regions[regions["image_id"] == row["ImageId"]].iterrows():
        ours |= region_mask(r, 1024, 1024)
    last = ref.csv[ref.csv["ImageId"] == row["ImageId"]].iloc[-1]  # theirs keeps the image's last row only
    if len(regions[regions["image_id"] == row["ImageId"]]) == 1:
        assert (ours == (theirs > 0.5)).all()
    else:
        assert ((theirs > 0.5) <= ours).all(), last


def test_google_labels_equal_torchxrayvision(xrv_data_dir, tmp_path, images):
    ref = xrv.datasets.NIH_Google_Dataset(images, views="*", unique_patients=False)
    df, findings, report = build_index(
        "nih-google",
        xrv_data_dir,
        views="all",
        labels_file=xrv_data_dir / "google2019_nih-chest-xray-labels.csv.gz",
    )
    assert len(df) == len(ref) == 4_376 and df["patient_id"].nunique() == 1_695
    names = {
        "fracture": "Fracture",
        "pneumothorax": "Pneumothorax",
        "lung_opacity": "Lung Opacity",
        "nodule_mass": "Nodule/Mass",
    }
    for f, name in names.items():
        assert int((df[f] == 1).sum()) == int(ref.labels[:, ref.pathologies.index(name)].sum()), f
    assert df["split"].value_counts().to_dict() == {"val": 2_414, "test": 1_962}
    assert report["regions"]["rows"] == 69  # NIH's boxes on the relabelled images

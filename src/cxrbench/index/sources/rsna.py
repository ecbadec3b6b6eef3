"""RSNA Pneumonia Detection Challenge (Kaggle, 2018; Shih et al., Radiology: AI 2019, "Augmenting
the National Institutes of Health chest radiograph dataset with expert annotations of possible
pneumonia").

Files (Kaggle ``rsna-pneumonia-detection-challenge``): ``stage_2_train_labels.csv``
(``patientId,x,y,width,height,Target``: one row per box, a single row with blank coordinates for an
image without one), ``stage_2_detailed_class_info.csv`` (``patientId,class``, one row per labels
row: ``Lung Opacity``, ``No Lung Opacity / Not Normal`` or ``Normal``), ``stage_2_train_images/
<patientId>.dcm`` (26,684 DICOMs, 1024 x 1024, 8-bit MONOCHROME2, CR) and ``stage_2_test_images/``
(3,000, no labels released). Plain, ``.gz`` or, given with ``--labels-file``, ``.zip`` CSVs (the
torchxrayvision copy ``kaggle_stage_2_train_labels.csv.zip``).

Counts (torchxrayvision copy of stage 2): 30,227 label rows, 26,684 images, 6,012 with Target 1 and
9,555 boxes (x, y, width, height in the 1024-px pixels). Labels: ``Target`` -> ``lung_opacity`` and
``pneumonia`` (the challenge's "Lung Opacity" class stands for opacities suspicious for pneumonia;
torchxrayvision gives both its labels the Target as well); the detailed class file, when present,
gives ``no_finding`` (``Normal`` = 1, the two other classes 0) and must agree with Target (``Lung
Opacity`` exactly where Target is 1). Boxes -> the regions table (both findings), grid 1024.

No patient linkage: ``patientId`` is one de-identified image (the images are NIH ChestX-ray14 images;
their NIH patients cannot be recovered, so near-duplicate patients may straddle the splits). Sex,
age and view are only in the DICOM headers: read from torchxrayvision's table of them
(``kaggle_stage_2_train_images_dicom_headers.csv(.gz)``, PA 14,511 / AP 12,173) when it lies beside
the labels, else missing (every image is frontal: kept by ``--views frontal``). Ages above 120 (a few
headers hold typos such as 148) become missing (counted). No labelled test split: the ``carve``
method splits everything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.sources.base import IndexOptions, SourceData, make_frame, register_file
from cxrbench.index.sources.boxes import merge_region_reports, read_boxes
from cxrbench.index.sources.files import locate_images
from cxrbench.index.sources.labels import normalize_sex
from cxrbench.index.sources.tables import at_row, find_file, read_csv
from cxrbench.index.sources.terms import RSNA_TERMS

LABEL_FILES = ("stage_2_train_labels.csv", "stage_1_train_labels.csv", "kaggle_stage_2_train_labels.csv")
CLASS_FILES = ("stage_2_detailed_class_info.csv", "stage_1_detailed_class_info.csv")
HEADER_FILES = ("kaggle_stage_2_train_images_dicom_headers.csv", "stage_2_train_images_dicom_headers.csv")
IMAGE_FOLDERS = ("stage_2_train_images", "stage_1_train_images", "train", ".")
CLASSES = {"Lung Opacity": 0.0, "No Lung Opacity / Not Normal": 0.0, "Normal": 1.0}  # -> no_finding
GRID = (1024, 1024)
MAX_AGE = 120.0


def _first_per_image(values: pd.Series, ids: pd.Series, path: Path, column: str) -> pd.Series:
    """One value per image (first-seen order); a second, different value for an image is an error."""
    pairs = pd.DataFrame({"id": ids, "v": values}).drop_duplicates()
    clash = pairs["id"].duplicated(keep=False)
    if clash.any():
        first = pairs.loc[clash, "id"].iloc[0]
        row = int(np.flatnonzero((ids == first).to_numpy())[1])
        raise InputError(
            f"image {first!r} has two different {column!r} values",
            where=at_row(path, row),
            fix="every row of an image carries the same value in the official file",
        )
    return pairs.set_index("id")["v"]


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read the RSNA stage-2 training labels (see module docstring)."""
    report: dict = {}
    path = opts.labels_file or find_file([root], LABEL_FILES, "RSNA label file stage_2_train_labels.csv")
    register_file(report, "labels", path)
    df = read_csv(
        path,
        required=["patientId", "Target"],
        optional=["x", "y", "width", "height"],
        numeric=["Target", "x", "y", "width", "height"],
        ids=[],
        text=["patientId"],
    )
    ids = df["patientId"].astype("str").str.strip()
    target = df["Target"].to_numpy(dtype=np.float64)
    bad = ~np.isin(target, (0.0, 1.0))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"Target is {float(df['Target'].iloc[r]):g}", where=at_row(path, r), fix="Target is 0 or 1"
        )
    per_image = _first_per_image(pd.Series(target), ids, path, "Target")
    image_id = pd.Series(per_image.index, dtype="str")
    n = len(image_id)
    labels = {"lung_opacity": per_image.to_numpy(dtype=np.float32)}
    labels["pneumonia"] = labels["lung_opacity"].copy()
    classes = find_file([path.parent, root], CLASS_FILES, "", required=False)
    if classes is not None:
        register_file(report, "classes", classes)
        labels["no_finding"] = _no_finding(classes, image_id, per_image)
    else:
        report.setdefault("warnings", []).append(
            "stage_2_detailed_class_info.csv not found: the index has no no_finding column"
        )
    frame = make_frame(
        n,
        image_id=image_id,
        patient_id=image_id,
        frontal=np.ones(n, dtype=bool),
        view=pd.Series("UNKNOWN", index=image_id.index, dtype=object),
    )
    headers = find_file([path.parent, root], HEADER_FILES, "", required=False)
    if headers is not None:
        register_file(report, "dicom_headers", headers)
        _join_headers(frame, headers, report)
    paths, report["images"], found = locate_images(
        root, image_id + ".dcm", "stage_2_train_images/" + image_id + ".dcm", IMAGE_FOLDERS, by_stem=True
    )
    frame["path"], frame["found"] = paths, found
    if "x" in df and "width" in df:
        regions, info = read_boxes(
            path,
            id_col="patientId",
            label_col=None,
            coords=("x", "y", "width", "height"),
            terms=RSNA_TERMS,
            xywh=True,
            grid=GRID,
            fixed_label="Lung Opacity",
            df=df,
        )
        merge_region_reports(report, "boxes", info)
        positive_without = set(image_id[labels["lung_opacity"] == 1]) - set(regions["image_id"])
        if positive_without:
            report.setdefault("warnings", []).append(
                f"{len(positive_without)} image(s) with Target 1 but no box"
            )
    else:
        regions = None
    findings = [f for f in ("no_finding", "lung_opacity", "pneumonia") if f in labels]
    block = np.column_stack([labels[f] for f in findings]).astype(np.float32)
    report["rows_read"] = len(df)
    report["label_source"] = (
        "radiologists' reads for the RSNA challenge: Target 1 (opacity suspicious for "
        "pneumonia) as lung_opacity and pneumonia; Normal in the detailed class file as "
        "no_finding"
    )
    return SourceData("rsna", frame, findings, block, blank_is_unknown=False, report=report, regions=regions)


def _no_finding(path: Path, image_id: pd.Series, target: pd.Series) -> np.ndarray:
    df = read_csv(path, required=["patientId", "class"], ids=[], text=["patientId", "class"])
    ids = df["patientId"].astype("str").str.strip()
    cls = df["class"].astype("str").str.strip()
    unknown = ~cls.isin(list(CLASSES))
    if unknown.any():
        r = int(np.flatnonzero(unknown.to_numpy())[0])
        raise InputError(
            f"unknown class {cls.iloc[r]!r}", where=at_row(path, r), fix=f"classes are {', '.join(CLASSES)}"
        )
    per = _first_per_image(cls, ids, path, "class")
    have = per.reindex(image_id)
    if have.isna().any():
        missing = image_id[have.isna().to_numpy()].iloc[0]
        raise InputError(
            f"image {missing!r} of the labels file has no class",
            where=str(path),
            fix="use the detailed class file of the same stage as the labels",
        )
    opacity = (have == "Lung Opacity").to_numpy()
    t = target.reindex(image_id).to_numpy()
    if (opacity != (t == 1)).any():
        k = int(np.flatnonzero(opacity != (t == 1))[0])
        raise InputError(
            f"image {image_id.iloc[k]!r}: class {have.iloc[k]!r} but Target {int(t[k])}",
            where=str(path),
            fix="'Lung Opacity' exactly where Target is 1: use matching files",
        )
    return have.map(CLASSES).to_numpy(dtype=np.float32)


def _join_headers(frame: pd.DataFrame, path: Path, report: dict) -> None:
    """Sex, age and view from torchxrayvision's table of the DICOM headers (by PatientID)."""
    df = read_csv(
        path,
        required=["PatientID"],
        optional=["PatientSex", "PatientAge", "ViewPosition"],
        numeric=["PatientAge"],
        ids=[],
        text=["PatientID"],
    )
    df = df.drop_duplicates("PatientID").set_index(df["PatientID"].astype("str").str.strip())
    ids = frame["image_id"]
    if "PatientSex" in df:
        frame["sex"] = normalize_sex(df["PatientSex"].reindex(ids)).to_numpy()
    if "PatientAge" in df:
        age = df["PatientAge"].reindex(ids).astype("float64")
        odd = age > MAX_AGE
        if odd.any():
            report["ages_above_120_set_missing"] = int(odd.sum())
        frame["age"] = age.where(~odd).to_numpy()
    if "ViewPosition" in df:
        view = df["ViewPosition"].reindex(ids).astype("str").str.strip().str.upper()
        frame["view"] = (
            view.where(view.isin(["PA", "AP"]), "UNKNOWN").fillna("UNKNOWN").to_numpy(dtype=object)
        )
    report["headers_matched"] = int(ids.isin(df.index).sum())

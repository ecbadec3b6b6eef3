"""SIIM-ACR Pneumothorax Segmentation (Kaggle, 2019; SIIM and the American College of Radiology;
images from NIH ChestX-ray14, masks drawn by radiologists).

Files: ``train-rle.csv`` (stage 1; header ``ImageId, EncodedPixels``, a space before the second name)
or ``stage_2_train.csv`` (``ImageId,EncodedPixels``); torchxrayvision ships the training table as
``siim-pneumothorax-train-rle.csv.gz``. One row per mask: ``-1`` for an image without pneumothorax,
else a run-length code over the 1024 x 1024 image flattened **column by column**, in Kaggle's
*relative* form (each start counts from the end of the previous run; ``mask_functions.py`` of the
challenge). An image with several pneumothoraces has several rows. Images: DICOM,
``dicom-images-train/<study>/<series>/<ImageId>.dcm`` (stage 1) or a flat folder (stage 2).

Counts (torchxrayvision copy): 12,954 rows, 12,047 images, 2,669 with pneumothorax, 3,576 masks.
Index: one row per image, ``pneumothorax`` = any mask (torchxrayvision's class keeps one sample
per *row*, 12,954 with 3,576 positive, counting images with several masks several times). Regions:
one mask per row, converted to the table's code (row by row, absolute starts), grid 1024.

The code's form is recognized, not assumed: a file whose every code is a valid absolute (1-based)
code is read as absolute (Kaggle's standard form), otherwise every code must be a valid relative one;
the report says which (``rle``). A code that is neither, or an image with both ``-1`` and a mask, is
an InputError naming its line. No patient ids, sex, age or view outside the DICOM headers: the image is
its own patient, view unknown (frontal). No labelled test split: the ``carve`` method splits everything.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.regions import decode_rle, empty_regions, encode_rle, make_regions, mask_box, parse_runs
from cxrbench.index.sources.base import IndexOptions, SourceData, make_frame, register_file
from cxrbench.index.sources.boxes import merge_region_reports
from cxrbench.index.sources.files import locate_images
from cxrbench.index.sources.tables import at_row, find_file, read_csv

LABEL_FILES = ("train-rle.csv", "stage_2_train.csv", "siim-pneumothorax-train-rle.csv")
IMAGE_FOLDERS = ("dicom-images-train/*/*", "dicom-images-test/*/*", "stage_2_images", "train", ".")
SIDE = 1024  # every released image (and mask grid) is 1024 x 1024
NONE = "-1"


def _is_absolute(runs: np.ndarray) -> bool:
    starts, lengths = runs
    return (
        bool(len(starts))
        and starts.min() >= 1
        and lengths.min() >= 1
        and bool((starts[1:] >= starts[:-1] + lengths[:-1]).all())
        and starts[-1] + lengths[-1] - 1 <= SIDE * SIDE
    )


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read the SIIM-ACR training masks (see module docstring)."""
    report: dict = {}
    path = opts.labels_file or find_file(
        [root], LABEL_FILES, "SIIM label file train-rle.csv / stage_2_train.csv"
    )
    register_file(report, "labels", path)
    df = read_csv(path, required=["ImageId", "EncodedPixels"], ids=["ImageId", "EncodedPixels"])
    ids = df["ImageId"].astype("str").str.strip()
    code = df["EncodedPixels"].astype("str").str.strip()
    blank = df["EncodedPixels"].isna().to_numpy() | df["ImageId"].isna().to_numpy()
    if blank.any():
        r = int(np.flatnonzero(blank)[0])
        raise InputError(
            "a blank ImageId or EncodedPixels",
            where=at_row(path, r),
            fix="every row has an image id and a code (-1 without pneumothorax)",
        )
    has = (code != NONE).to_numpy()
    per_image = pd.DataFrame({"id": ids, "has": has}).groupby("id", sort=False)["has"]
    mixed = per_image.nunique() > 1
    if mixed.any():
        first = mixed[mixed].index[0]
        r = int(np.flatnonzero((ids == first).to_numpy())[0])
        raise InputError(
            f"image {first!r} has both '-1' and a mask",
            where=at_row(path, r),
            fix="check that this is the official, unmodified file",
        )
    positive = per_image.any()
    image_id = pd.Series(positive.index, dtype="str")
    n = len(image_id)
    rows = np.flatnonzero(has)
    runs = [parse_runs(code.iloc[r], SIDE * SIDE, lambda r=r: at_row(path, r)) for r in rows]
    absolute = bool(runs) and all(_is_absolute(x) for x in runs)
    report["rle"] = "absolute, 1-based" if absolute else "relative"
    regions = _regions(ids, code, rows, path, absolute) if len(rows) else empty_regions()
    merge_region_reports(
        report, "masks", {"file": str(path), "masks": len(rows), "rows_without_mask": int((~has).sum())}
    )
    paths, report["images"], found = locate_images(
        root, image_id + ".dcm", "dicom-images-train/" + image_id + ".dcm", IMAGE_FOLDERS, by_stem=True
    )
    frame = make_frame(
        n,
        image_id=image_id,
        patient_id=image_id,
        path=paths,
        found=found,
        view=pd.Series("UNKNOWN", index=image_id.index, dtype=object),
        frontal=np.ones(n, dtype=bool),
    )
    report["rows_read"] = len(df)
    report["label_source"] = "radiologists' pneumothorax masks: positive when the image has a mask"
    block = positive.to_numpy(dtype=np.float32).reshape(-1, 1)
    return SourceData(
        "siim", frame, ["pneumothorax"], block, blank_is_unknown=False, report=report, regions=regions
    )


def _regions(ids: pd.Series, code: pd.Series, rows: np.ndarray, path: Path, absolute: bool) -> pd.DataFrame:
    """One mask region per masked row, decoded one at a time (a 1024 x 1024 mask is 1 MB)."""
    boxes, codes, image = [], [], []
    for r in rows:
        mask = decode_rle(code.iloc[r], SIDE, SIDE, lambda r=r: at_row(path, r), relative=not absolute,
                          one_based=absolute, order="F")
        box = mask_box(mask)
        if box is None:  # parse_runs refuses empty codes, so a mask always has pixels
            raise InputError("an empty mask", where=at_row(path, r), fix="check the file")
        boxes.append(box)
        codes.append(encode_rle(mask))
        image.append(ids.iloc[r])
    xy = np.asarray(boxes, dtype=np.float64)
    k = len(image)
    return make_regions(
        image_id=image,
        finding=["pneumothorax"] * k,
        label=["Pneumothorax"] * k,
        kind=["mask"] * k,
        x0=xy[:, 0],
        y0=xy[:, 1],
        x1=xy[:, 2],
        y1=xy[:, 3],
        width=[SIDE] * k,
        height=[SIDE] * k,
        mask=codes,
    )

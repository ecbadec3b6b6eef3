"""NIH ChestX-ray14 (Wang et al., CVPR 2017, "ChestX-ray8: Hospital-scale chest X-ray database and
benchmarks on weakly-supervised classification and localization of common thorax diseases").

Files (NIH Box / Kaggle ``nih-chest-xrays/data``): ``Data_Entry_2017_v2020.csv`` (2020 revision)
or ``Data_Entry_2017.csv``, ``train_val_list.txt``, ``test_list.txt``, ``BBox_List_2017.csv``;
images in 12 archives ``images_001`` ... ``images_012`` that unpack to ``images/`` (the Kaggle
mirror keeps ``images_0XX/images/``). Plain or ``.gz`` CSVs are read.

Counts (v2020 file): 112,120 frontal images (PA 67,310, AP 44,810; no laterals) of 30,805
patients; official split train_val 86,524 / test 25,596 images, patient-disjoint. Positives:
Infiltration 19,894, Effusion 13,317, Atelectasis 11,559, Nodule 6,331, Mass 5,782, Pneumothorax
5,302, Consolidation 4,667, Pleural_Thickening 3,385, Cardiomegaly 2,776, Emphysema 2,516, Edema
2,303, Fibrosis 1,686, Pneumonia 1,431, Hernia 227; No Finding 60,361.

Labels: ``Finding Labels`` is a ``|``-joined subset of 14 names or ``No Finding``, mined from
reports by NLP (">90 % accuracy" claimed). No uncertainty and no blanks: a name absent from the
list is a negative. Tokens go through ``findings.NIH_TERMS`` (``Effusion`` -> pleural_effusion,
``Pleural_Thickening`` with underscore); an unknown token is an error naming its line.

Header variants handled: ``Patient Gender`` or ``Patient Sex``; a trailing comma (an extra empty
column) in older copies; ages as integers or ``058Y`` strings (2017 file; it also has a few
impossible ages > 100 that v2020 fixes). ``Image Index`` ``PPPPPPPP_FFF.png``: the first 8 digits
are the patient; ``_FFF`` is *not* always ``Follow-up #``, so names are never rebuilt from it.

Boxes: ``BBox_List_2017.csv`` (beside the label file or in ``--root``; header ``Image Index,Finding
Label,Bbox [x,y,w,h],,,``): 984 boxes on 880 images, 8 findings, ``x, y, w, h`` in the pixels of the
1024 x 1024 PNGs (``Infiltrate`` = infiltration): the regions table beside the index, grid 1024.

Split: ``test_list.txt`` -> test, ``train_val_list.txt`` -> train, val carved by patient from it
(the release has none). Without the lists: hash split. Patient: ``Patient ID`` as written.
Images: located by listing ``images/``, ``images_*/images/``, ``images_*/`` and the root (a few
NIH PNGs are RGBA; the image reader handles that).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import closest
from cxrbench.index.sources.base import IndexOptions, SourceData, make_frame, register_file
from cxrbench.index.sources.boxes import merge_region_reports, read_boxes
from cxrbench.index.sources.files import locate_images
from cxrbench.index.sources.labels import native_findings, normalize_sex, terms_matrix
from cxrbench.index.sources.tables import at_row, check_unique, find_file, read_csv
from cxrbench.index.sources.terms import NIH_BOX_TERMS, NIH_TERMS

LABEL_FILES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
HEADER_VARIANTS = {"Patient Sex": "Patient Gender"}
VIEW_VALUES = {"PA": "PA", "AP": "AP"}
IMAGE_FOLDERS = ("images", "images_*/images", "images_*", ".")
BOX_FILE = "BBox_List_2017.csv"
BOX_HEADER = {"Bbox [x": "x", "h]": "h"}  # the header's brackets hold commas: x, y, w, h in 4 columns
GRID = (1024, 1024)  # the released PNGs (and the boxes' pixels)


def read_nih_boxes(dirs: list[Path], report: dict):
    """NIH's box list as regions (None when the file is absent)."""
    path = find_file(dirs, [BOX_FILE], "", required=False)
    if path is None:
        return None
    register_file(report, "boxes", path)
    boxes, info = read_boxes(path, id_col="Image Index", label_col="Finding Label",
                             coords=("x", "y", "w", "h"), terms=NIH_BOX_TERMS, xywh=True, grid=GRID,
                             rename=BOX_HEADER)
    merge_region_reports(report, "boxes", info)
    return boxes


def parse_age(values: pd.Series) -> pd.Series:
    """Years as float: ``57`` or ``057Y``; ``011M``/``020D`` converted; anything else missing."""
    if pd.api.types.is_numeric_dtype(values):
        return values.astype("float64")
    num = pd.to_numeric(values, errors="coerce")
    rest = values.notna() & num.isna()
    if rest.any():
        m = values[rest].str.strip().str.extract(r"^(\d+)\s*([YMDW])$", expand=True)
        scale = m[1].map({"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25})
        num[rest] = pd.to_numeric(m[0], errors="coerce") * scale
    return num.astype("float64")


def _read_list(path: Path) -> set[str]:
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read the NIH release under ``root`` (see module docstring)."""
    report: dict = {}
    path = opts.labels_file or find_file([root], LABEL_FILES, "NIH label file Data_Entry_2017(_v2020).csv")
    register_file(report, "labels", path)
    df = read_csv(
        path,
        required=["Image Index", "Finding Labels", "Patient ID", "View Position"],
        optional=["Patient Age", "Patient Gender"],
        rename=HEADER_VARIANTS,
        ids=[],
        text=["Image Index", "Patient ID"],
    )
    check_unique(df["Image Index"], path, "Image Index")
    blank = df["Finding Labels"].isna().to_numpy() | df["Patient ID"].isna().to_numpy()
    if blank.any():
        row = int(np.flatnonzero(blank)[0])
        col = "Finding Labels" if pd.isna(df["Finding Labels"].iloc[row]) else "Patient ID"
        raise InputError(
            f"column {col!r} is blank",
            where=at_row(path, row),
            fix="every NIH row has findings ('No Finding' when none) and a patient",
        )

    codes, uniques = pd.factorize(df["Finding Labels"], sort=False)
    token_lists = [[t.strip() for t in u.split("|") if t.strip()] for u in uniques]
    findings = native_findings(NIH_TERMS, NIH_TERMS)
    mat, unknown = terms_matrix(token_lists, NIH_TERMS, findings)
    if unknown:
        u, terms = next(iter(unknown.items()))
        row = int(np.flatnonzero(codes == u)[0])
        raise InputError(
            f"unknown finding {terms[0]!r} in column 'Finding Labels'",
            where=at_row(path, row),
            fix=(f"did you mean {hint!r}? " if (hint := closest(terms[0], NIH_TERMS)) else "")
            + f"NIH findings are {', '.join(NIH_TERMS)}",
        )

    view_raw = df["View Position"].str.strip().str.upper()
    view = view_raw.map(VIEW_VALUES).fillna("OTHER").where(view_raw.notna(), "UNKNOWN")
    odd = view_raw[~view_raw.isin(list(VIEW_VALUES)) & view_raw.notna()].value_counts()
    if len(odd):
        report["unmapped_views"] = {str(k): int(v) for k, v in odd.items()}

    names = df["Image Index"].str.strip()
    paths, report["images"], found = locate_images(root, names, "images/" + names, IMAGE_FOLDERS)

    official = None
    test_list = find_file([root, path.parent], ["test_list.txt"], "", required=False)
    trainval_list = find_file([root, path.parent], ["train_val_list.txt"], "", required=False)
    if (test_list is None) != (trainval_list is None):
        present = test_list or trainval_list
        raise InputError(
            "only one of train_val_list.txt / test_list.txt is present",
            where=str(present),
            fix="add the other official list, or remove both to get a hash split",
        )
    if test_list is not None and trainval_list is not None:
        register_file(report, "train_val_list", trainval_list)
        register_file(report, "test_list", test_list)
        test, trainval = _read_list(test_list), _read_list(trainval_list)
        both = test & trainval
        if both:
            raise InputError(
                f"image {sorted(both)[0]!r} is in both official lists ({len(both)} in total)",
                where=str(test_list),
                fix="restore the official files",
            )
        is_test, is_tv = names.isin(test).to_numpy(), names.isin(trainval).to_numpy()
        if not (is_test | is_tv).all():
            row = int(np.flatnonzero(~(is_test | is_tv))[0])
            raise InputError(
                f"image {names.iloc[row]!r} is in neither official list",
                where=at_row(path, row),
                fix="restore the official lists, or remove them and use --splits hash",
            )
        official = pd.Series(np.where(is_test, "test", "train"), dtype=object)
        report["official_list_extra"] = len((test | trainval) - set(names))

    frame = make_frame(
        len(df),
        image_id=names,
        patient_id=df["Patient ID"].str.strip(),
        path=paths,
        view=view,
        sex=normalize_sex(df["Patient Gender"]) if "Patient Gender" in df else None,
        age=parse_age(df["Patient Age"]) if "Patient Age" in df else None,
        official_split=official,
        found=found,
    )
    report["rows_read"] = len(df)
    report["label_source"] = ("NLP-mined from the reports (the 'Finding Labels' column): a finding named "
                              "there is positive, any other negative; no uncertain class")
    regions = read_nih_boxes([root, path.parent], report)
    return SourceData("nih", frame, findings, mat[codes], blank_is_unknown=False, report=report,
                      rows_file=Path(path), regions=regions)

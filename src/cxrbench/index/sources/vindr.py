"""VinDr-CXR (Nguyen et al., Scientific Data 2022, "VinDr-CXR: An open dataset of chest X-rays with
radiologist's annotations"; PhysioNet ``vindr-cxr/1.0.0``, credentialed) and its Kaggle edition,
VinBigData Chest X-ray Abnormalities Detection (2021).

PhysioNet layout: ``train/<image_id>.dicom`` (15,000), ``test/<image_id>.dicom`` (3,000),
``annotations/image_labels_train.csv`` (wide: ``image_id, rad_id`` + 28 0/1 columns, one row per
image and reader: 3 of 17 radiologists per image, 45,000 rows), ``annotations/image_labels_test.csv``
(consensus of 5 radiologists, one row per image; its last diagnosis column is spelled
``Other disease`` instead of ``Other diseases``; ``rad_id`` may be absent), and box files
``annotations_{train,test}.csv`` (``image_id, rad_id, class_name, x_min, y_min, x_max, y_max`` in the
DICOM's pixels; ``No finding`` rows without coordinates): read into the regions table beside the
index (:mod:`cxrbench.index.regions`), one row per reader's box, the reader in ``reader``. 22 local
labels + 6 global labels (COPD, Lung tumor, Pneumonia, Tuberculosis, Other diseases, No finding),
mapped by ``findings.VINDR_TERMS``.

Kaggle: ``train.csv`` in long format (``image_id, class_name, class_id, rad_id, x_min, ...``): one
row per (image, reader, box); 67,914 rows, 15,000 images, exactly 3 readers each, 14 local classes
+ ``No finding``; the test labels were never released on Kaggle. Found as ``--root/train.csv`` or
given with ``--labels-file`` (torchxrayvision ships it as ``vinbigdata-train.csv.gz``). Its boxes
(36,096 in the torchxrayvision copy: every row but the ``No finding`` ones) become the regions.

Reader aggregation (train): ``--readers majority`` (default; positive when more than half of the
image's readers marked it, 2 of 3) or ``any`` (union). ``no_finding`` follows the same rule over
the readers' ``No finding`` marks. The choice matters: image-level positives union vs majority
(Kaggle file) Aortic enlargement 3,067 vs 2,346, Cardiomegaly 2,300 vs 1,817, Pleural thickening
1,981 vs 882, Pulmonary fibrosis 1,617 vs 1,017, Lung Opacity 1,322 vs 547, Other lesion 1,134 vs
362, Pleural effusion 1,032 vs 634, Nodule/Mass 826 vs 405, Infiltration 613 vs 245, Calcification
452 vs 177, ILD 386 vs 152, Consolidation 353 vs 121, Atelectasis 186 vs 62, Pneumothorax 96 vs 58;
10,606 images have "No finding" from all three readers. Label values are 0/1 (blank read as 0,
counted); anything else is an error.

No patient id is published (images are de-identified), so each image is its own patient; no view
column (the dataset is PA only, per the paper) -> PA. DICOMs mix MONOCHROME1/2 and bit depths
(the image reader handles inversion and windowing). Split: PhysioNet train/test official, val carved
from train; Kaggle train only -> hash split (its official test has no labels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.findings import sort_findings
from cxrbench.index.regions import empty_regions
from cxrbench.index.sources.base import IndexOptions, SourceData, make_frame, register_file
from cxrbench.index.sources.boxes import merge_region_reports, read_boxes
from cxrbench.index.sources.files import locate_images
from cxrbench.index.sources.labels import terms_matrix
from cxrbench.index.sources.tables import at_row, check_unique, find_file, header_columns, read_csv
from cxrbench.index.sources.terms import VINDR_TERMS

WIDE_FILES = {"train": "image_labels_train.csv", "test": "image_labels_test.csv"}
BOX_FILES = {"train": "annotations_train.csv", "test": "annotations_test.csv"}
BOX_COORDS = ("x_min", "y_min", "x_max", "y_max")
LONG_FILES = ("train.csv", "vinbigdata-train.csv")
IMAGE_EXTENSION = ".dicom"


def aggregate_readers(
    findings: list[str], block: np.ndarray, image_ids: pd.Series, rule: str
) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """(unique image ids in first-seen order, aggregated (M, K) block, readers per image).

    ``block`` holds one row per (image, reader) with 0/1 values. ``any``: a finding is positive
    when any reader marked it, and ``no_finding`` only when every reader said so; ``majority``:
    positive when marked by more than half of the image's readers (``no_finding`` alike).
    """
    codes, uniques = pd.factorize(image_ids, sort=False)
    m = len(uniques)
    sums = (
        np.stack(
            [np.bincount(codes, weights=block[:, k], minlength=m) for k in range(block.shape[1])], axis=1
        )
        if block.shape[1]
        else np.zeros((m, 0))
    )
    readers = np.bincount(codes, minlength=m)
    if rule == "any":
        out = (sums > 0).astype(np.float32)
        if "no_finding" in findings:
            k = findings.index("no_finding")
            out[:, k] = (sums[:, k] == readers).astype(np.float32)
    else:
        out = (2 * sums > readers[:, None]).astype(np.float32)
    return pd.Index(uniques), out, readers


def read_wide(path: Path, rule: str, report: dict, role: str, table: dict[str, tuple[str, ...]] | None = None,
              what: str = "VinDr-CXR") -> tuple[pd.Index, list[str], np.ndarray, int]:
    """A wide image-label file (one row per image and reader, one 0/1 column per term of ``table``):
    (image ids, findings, block aggregated over readers by ``rule``, most readers of an image).
    ``rad_ID`` is read as ``rad_id`` (VinDr-PCXR's spelling)."""
    table = VINDR_TERMS if table is None else table
    cols = header_columns(path)
    ignored = ("image_id", "rad_id", "rad_ID")
    terms = [c for c in cols if c not in ignored and not c.startswith("Unnamed")]
    unknown = [t for t in terms if t not in table]
    if unknown:
        raise InputError(
            f"unknown label column {unknown[0]!r}",
            where=str(path),
            fix=f"{what} label columns are {', '.join(table)}",
        )
    df = read_csv(
        path,
        required=["image_id", *terms],
        optional=["rad_id"],
        rename={"rad_ID": "rad_id"},
        numeric=terms,
        ids=[],
        text=["image_id", "rad_id"],
    )
    df["image_id"] = df["image_id"].str.strip()
    findings = sort_findings(f for t in terms for f in table[t])
    col = {f: i for i, f in enumerate(findings)}
    block = np.zeros((len(df), len(findings)), dtype=np.float32)
    blanks = 0
    for t in terms:
        v = df[t].to_numpy(dtype=np.float32)
        nan = np.isnan(v)
        blanks += int(nan.sum())
        bad = ~nan & (v != 0) & (v != 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"unknown label value {float(v[row]):g} in column {t!r}",
                where=at_row(path, row),
                fix=f"{what} labels are 0 or 1",
            )
        pos = np.where(nan, 0.0, v)
        for f in table[t]:
            block[:, col[f]] = np.maximum(block[:, col[f]], pos)
    if "rad_id" in df:
        key = df["image_id"] + "/" + df["rad_id"].fillna("")
        check_unique(key, path, "image_id+rad_id")
    else:
        check_unique(df["image_id"], path, "image_id")
    report.setdefault("blank_values", {})[role] = blanks
    ids, out, readers = aggregate_readers(findings, block, df["image_id"], rule)
    return ids, findings, out, int(readers.max()) if len(readers) else 0


def _long(path: Path, rule: str, report: dict) -> tuple[pd.Index, list[str], np.ndarray, int]:
    df = read_csv(path, required=["image_id", "class_name", "rad_id"], ids=[], text=["image_id", "rad_id"])
    df["image_id"] = df["image_id"].str.strip()
    names = df["class_name"].str.strip()
    codes, uniques = pd.factorize(names, sort=False)
    if (codes < 0).any():
        row = int(np.flatnonzero(codes < 0)[0])
        raise InputError(
            "column 'class_name' is blank", where=at_row(path, row), fix="check the file"
        )
    findings = sort_findings(
        f for t in VINDR_TERMS for f in VINDR_TERMS[t] if t in set(uniques) or t == "No finding"
    )
    mat, unknown = terms_matrix([[u] for u in uniques], VINDR_TERMS, findings)
    if unknown:
        u = next(iter(unknown))
        row = int(np.flatnonzero(codes == u)[0])
        raise InputError(
            f"unknown class_name {uniques[u]!r}",
            where=at_row(path, row),
            fix=f"VinBigData classes are {', '.join(t for t in VINDR_TERMS if t != 'Other disease')}",
        )
    # one row per (image, reader): OR over that reader's boxes, then aggregate over readers
    reader_key = df["image_id"] + "/" + df["rad_id"].fillna("?")
    rcodes, runiques = pd.factorize(reader_key, sort=False)
    # OR over a reader's boxes: any positive box row (bincount of 0/1 weights > 0)
    rows = mat[codes]
    per_reader = np.stack(
        [np.bincount(rcodes, weights=rows[:, k], minlength=len(runiques)) > 0 for k in range(rows.shape[1])],
        axis=1,
    ).astype(np.float32)
    first = np.zeros(len(runiques), dtype=np.int64)
    first[rcodes[::-1]] = np.arange(len(rcodes))[::-1]
    image_of_reader = df["image_id"].iloc[first].reset_index(drop=True)
    ids, out, readers = aggregate_readers(findings, per_reader, image_of_reader, rule)
    report["readers_per_image"] = {
        str(k): int(v) for k, v in pd.Series(readers).value_counts().sort_index().items()
    }
    return ids, findings, out, int(readers.max()) if len(readers) else 0


def _is_long(path: Path) -> bool:
    return "class_name" in header_columns(path)


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read VinDr-CXR (PhysioNet) or VinBigData (Kaggle) labels (see module docstring)."""
    report: dict = {"readers": opts.readers}
    parts: list[tuple[str, pd.Index, list[str], np.ndarray]] = []
    if opts.labels_file is not None:
        files = {"train": opts.labels_file}
        if not _is_long(opts.labels_file):
            test = find_file([opts.labels_file.parent], [WIDE_FILES["test"]], "", required=False)
            if test is not None and test != opts.labels_file:
                files["test"] = test
    else:
        train = find_file([root / "annotations", root], [WIDE_FILES["train"]], "", required=False)
        if train is not None:
            files = {"train": train}
            test = find_file([root / "annotations", root], [WIDE_FILES["test"]], "", required=False)
            if test is not None:
                files["test"] = test
        else:
            files = {
                "train": find_file(
                    [root],
                    list(LONG_FILES),
                    "VinDr-CXR label file",
                    option="--labels-file (annotations/image_labels_train.csv or Kaggle train.csv)",
                )
            }
    official = True
    for role, path in files.items():
        register_file(report, role, path)
        if _is_long(path):
            report["format"] = "kaggle-long"
            official = False  # Kaggle: train only, its test labels were never released
            ids, findings, block, readers = _long(path, opts.readers, report)
        else:
            report["format"] = "physionet-wide"
            ids, findings, block, readers = read_wide(path, opts.readers, report, role)
        report.setdefault("max_readers", {})[role] = readers
        parts.append((role, ids, findings, block))

    findings, block, frame = image_frame(root, parts, files, report, official)
    report["label_source"] = ("radiologists' image-level marks (0/1): on train positive when "
                              + ("more than half of the image's readers" if opts.readers == "majority"
                                 else "any of the image's readers")
                              + " marked it; on test the consensus of five radiologists")
    regions = read_regions(files, report)
    return SourceData("vindr", frame, findings, block, blank_is_unknown=False, report=report, regions=regions)


def stack_parts(parts: list[tuple[str, pd.Index, list[str], np.ndarray]], files: dict[str, Path],
                ) -> tuple[list[str], pd.Series, np.ndarray, pd.Series]:
    """The label files of a release (``(role, image ids, findings, block)`` each) as one table: the
    union of their findings (canonical order), image ids (unique across the files, else InputError),
    the labels (n_images x n_findings float32, NaN where a file has no such column) and each image's
    role (``train``/``test``: its folder)."""
    findings = sort_findings(f for _, _, fs, _ in parts for f in fs)
    ids_all, blocks, roles = [], [], []
    for role, ids, fs, block in parts:
        full = np.full((len(ids), len(findings)), np.nan, dtype=np.float32)
        for j, f in enumerate(fs):
            full[:, findings.index(f)] = block[:, j]
        ids_all.append(ids.to_series().reset_index(drop=True))
        blocks.append(full)
        roles += [role] * len(ids)
    image_id = pd.concat(ids_all, ignore_index=True)
    check_unique(image_id, ", ".join(str(p) for p in files.values()), "image_id (train and test files)")
    return findings, image_id, np.vstack(blocks), pd.Series(roles, dtype=object)


def image_frame(root: Path, parts: list[tuple[str, pd.Index, list[str], np.ndarray]], files: dict[str, Path],
                report: dict, official: bool = True) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """The findings, labels and index frame of a VinDr-style release (:func:`stack_parts`): one row
    per image, which is its own patient, PA, found as ``<role>/<image_id>.dicom`` (or by its stem);
    ``official``: the roles are the official split. Counts the images and rows into ``report``."""
    findings, image_id, block, split_dir = stack_parts(parts, files)
    default = split_dir + "/" + image_id + IMAGE_EXTENSION
    paths, report["images"], found = locate_images(root, image_id, default, ["train", "test", "."],
                                                   by_stem=True)
    frame = make_frame(
        len(image_id),
        image_id=image_id,
        patient_id=image_id,
        path=paths,
        found=found,
        view=pd.Series("PA", index=image_id.index, dtype=object),
        official_split=split_dir if official else None,
    )
    report["rows_read"] = len(frame)
    return findings, block, frame


def read_regions(files: dict[str, Path], report: dict, terms: dict | None = None,
                 reader_cols: tuple[str, ...] = ("rad_id", "rad_ID")) -> pd.DataFrame | None:
    """The radiologists' boxes: from the Kaggle file itself, or from ``annotations_{train,test}.csv``
    beside the PhysioNet label files (VinDr-PCXR has the same layout). None when there are none."""
    parts = []
    for role, path in files.items():
        box_file = path if _is_long(path) else find_file([path.parent], [BOX_FILES[role]], "", required=False)
        if box_file is None or not set(BOX_COORDS) <= set(header_columns(box_file)):
            continue
        reader = next((c for c in reader_cols if c in header_columns(box_file)), None)
        boxes, info = read_boxes(box_file, id_col="image_id", label_col="class_name", coords=BOX_COORDS,
                                 terms=terms or VINDR_TERMS, reader_col=reader)
        register_file(report, f"boxes_{role}", box_file)
        merge_region_reports(report, role, info)
        parts.append(boxes)
    if not parts:
        return None
    out = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return out if len(out) else empty_regions()

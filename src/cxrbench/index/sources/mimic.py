"""MIMIC-CXR-JPG 2.0.0 / 2.1.0 (Johnson et al., PhysioNet 2019, "MIMIC-CXR-JPG, a large publicly
available database of labeled chest radiographs"; credentialed access).

Files in ``--root`` (plain or ``.gz``): ``mimic-cxr-2.0.0-metadata.csv`` (one row per image:
``dicom_id, subject_id, study_id, ViewPosition, ...``), ``mimic-cxr-2.0.0-chexpert.csv`` or
``-negbio.csv`` (one row per *study*: ``subject_id, study_id`` + 14 observations, header order
alphabetical, read by name), ``mimic-cxr-2.0.0-split.csv`` (``dicom_id, study_id, subject_id,
split`` with train/validate/test) and, in 2.1.0, ``mimic-cxr-2.1.0-test-set-labeled.csv``
(single-radiologist labels of ~687 test studies; ``study_id`` only, ``Airspace Opacity`` instead
of ``Lung Opacity``). Images: ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` (``pXX`` = first two
digits of the subject), histogram-equalized 8-bit JPEGs.

Counts: 377,110 images, 227,835 studies, 65,379 patients (Sci Data paper); official split train
368,960 / validate 2,991 / test 5,159 images, patient-disjoint. 2,414 studies have no CheXpert
label at all; 8 studies have no report section.

Labels: ``--labeler chexpert`` (default) or ``negbio``; ``1.0`` / ``0.0`` / ``-1.0`` uncertain /
blank = not mentioned, handled by ``--uncertain`` and ``--blank`` like CheXpert. Each image takes
its study's labels (join on subject_id + study_id); an image whose study has no label row (no
report) is not labelled: unknown under every policy (counted in the report).
``--radiologist-test`` replaces the NLP labels of the test split by the 2.1.0 radiologist labels
and keeps only the test studies that have them.

Views: ``ViewPosition`` PA -> PA, AP -> AP, LATERAL/LL/XTABLE LATERAL -> LATERAL, the rare
oblique/decubitus/axial values -> OTHER; when ``ViewPosition`` is missing,
``ViewCodeSequence_CodeMeaning`` (postero-anterior / antero-posterior / lateral) decides, else
UNKNOWN. The study kept PA and AP (the default ``frontal`` keeps AP_SUPINE too, which MIMIC never
produces). Split: split.csv with ``validate`` -> ``val``; without it a hash split. Patient =
``subject_id``, study = ``study_id``, image id = ``dicom_id``. No sex/age in these files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.sources.base import (
    IndexOptions,
    SourceData,
    make_frame,
    official_split_values,
    register_file,
)
from cxrbench.index.sources.labels import ABSENT, code_values, label_block, native_findings
from cxrbench.index.sources.tables import at_row, check_unique, find_file, read_csv
from cxrbench.index.sources.terms import CHEXPERT_TERMS, MIMIC_TERMS

PREFIX = "mimic-cxr-2.0.0-"
VIEW_POSITIONS = {
    "PA": "PA",
    "AP": "AP",
    "LATERAL": "LATERAL",
    "LL": "LATERAL",
    "XTABLE LATERAL": "LATERAL",
    "RL": "LATERAL",
    "AP AXIAL": "OTHER",
    "AP LLD": "OTHER",
    "AP RLD": "OTHER",
    "PA LLD": "OTHER",
    "PA RLD": "OTHER",
    "LAO": "OTHER",
    "RAO": "OTHER",
    "LPO": "OTHER",
    "SWIMMERS": "OTHER",
}
VIEW_CODES = {
    "postero-anterior": "PA",
    "antero-posterior": "AP",
    "lateral": "LATERAL",
    "left lateral": "LATERAL",
    "right lateral": "LATERAL",
}
SPLIT_VALUES = {"train": "train", "validate": "val", "val": "val", "valid": "val", "test": "test"}
VALUES = (1.0, 0.0, -1.0)


def _ids(df: pd.DataFrame, path: Path, columns: list[str]) -> None:
    """Normalize id columns to digit strings (``10000032``, also from ``10000032.0``)."""
    for c in columns:
        s = df[c].str.strip().str.replace(r"\.0$", "", regex=True)
        bad = ~s.str.fullmatch(r"\d+").fillna(False).to_numpy(dtype=bool)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"column {c!r} has non-numeric id {df[c].iloc[row]!r}",
                where=at_row(path, row),
                fix="check that this is the official file, unmodified",
            )
        df[c] = s


def _read_labels(path: Path, keys: list[str], terms: dict) -> pd.DataFrame:
    present = read_csv(path, required=keys, optional=list(terms), numeric=list(terms), ids=[], text=keys)
    found = [t for t in terms if t in present.columns]
    if not found:
        raise InputError(
            "no CheXpert observation column found",
            where=str(path),
            fix=f"expected columns {', '.join(CHEXPERT_TERMS)}",
        )
    _ids(present, path, keys)
    key = present[keys[0]]
    for k in keys[1:]:
        key = key + "/" + present[k]
    check_unique(key, path, "+".join(keys))
    for t in found:
        present[t] = code_values(present[t].to_numpy(), path, t, VALUES)
    return present


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read MIMIC-CXR-JPG metadata, labels and split (see module docstring)."""
    report: dict = {"labeler": opts.labeler}
    meta_path = find_file([root], [PREFIX + "metadata.csv"], "MIMIC-CXR metadata file", option=None)
    labels_path = opts.labels_file or find_file(
        [root], [f"{PREFIX}{opts.labeler}.csv"], f"MIMIC-CXR {opts.labeler} label file"
    )
    register_file(report, "metadata", meta_path)
    register_file(report, "labels", labels_path)
    meta = read_csv(
        meta_path,
        required=["dicom_id", "subject_id", "study_id"],
        optional=["ViewPosition", "ViewCodeSequence_CodeMeaning"],
        ids=[],
        text=["dicom_id", "subject_id", "study_id"],
    )
    meta["dicom_id"] = meta["dicom_id"].str.strip()
    _ids(meta, meta_path, ["subject_id", "study_id"])
    check_unique(meta["dicom_id"], meta_path, "dicom_id")

    labels = _read_labels(labels_path, ["subject_id", "study_id"], CHEXPERT_TERMS)
    findings = native_findings(CHEXPERT_TERMS, CHEXPERT_TERMS)
    merged = meta.merge(
        labels, on=["subject_id", "study_id"], how="left", validate="many_to_one", indicator="_labelled"
    )
    unlabelled = merged["_labelled"] == "left_only"
    report["images_without_label_row"] = int(unlabelled.sum())
    studies_unused = (
        len(labels) - merged.loc[~unlabelled, ["subject_id", "study_id"]].drop_duplicates().shape[0]
    )
    report["label_rows_without_images"] = int(studies_unused)

    block = {f: np.full(len(merged), ABSENT, dtype=np.float32) for f in findings}
    for term, targets in CHEXPERT_TERMS.items():
        if term in merged:
            block[targets[0]] = np.array(merged[term].to_numpy(dtype=np.float32))  # writable copy
    for f in block:  # a study without a label row (no report) is not labelled: unknown, not blank
        block[f][unlabelled.to_numpy()] = ABSENT

    split_path = find_file([root], [PREFIX + "split.csv"], "", required=False)
    official = None
    if split_path is not None:
        register_file(report, "split", split_path)
        sp = read_csv(split_path, required=["dicom_id", "split"], ids=[], text=["dicom_id"])
        sp["dicom_id"] = sp["dicom_id"].str.strip()
        check_unique(sp["dicom_id"], split_path, "dicom_id")
        sp["split"] = official_split_values(
            sp["split"].str.strip().str.lower(), SPLIT_VALUES, str(split_path), "split"
        )
        official = merged["dicom_id"].map(pd.Series(sp["split"].to_numpy(), index=sp["dicom_id"].to_numpy()))
        lost = official.isna().to_numpy()
        if lost.any():
            row = int(np.flatnonzero(lost)[0])
            raise InputError(
                f"image {merged['dicom_id'].iloc[row]!r} of the metadata is not in the split file "
                f"({int(lost.sum())} in total)",
                where=str(split_path),
                fix="restore the official split file, or remove it and use --splits hash",
            )

    keep = np.ones(len(merged), dtype=bool)
    if opts.radiologist_test:
        keep = _radiologist_test(root, merged, official, block, report)

    vp = (
        merged["ViewPosition"].str.strip().str.upper()
        if "ViewPosition" in merged
        else pd.Series(pd.NA, index=merged.index, dtype=object)
    )
    view = vp.map(VIEW_POSITIONS)
    odd = vp[view.isna() & vp.notna()]
    view = view.where(vp.isna(), view.fillna("OTHER"))
    if "ViewCodeSequence_CodeMeaning" in merged:
        code = merged["ViewCodeSequence_CodeMeaning"].str.strip().str.lower().map(VIEW_CODES)
        report["views_from_view_code"] = int((view.isna() & code.notna()).sum())
        view = view.fillna(code)
    view = view.fillna("UNKNOWN")
    if len(odd):
        report["unmapped_views"] = {str(k): int(v) for k, v in odd.value_counts().items()}

    subject, study = merged["subject_id"], merged["study_id"]
    paths = (
        "files/p"
        + subject.str.slice(0, 2)
        + "/p"
        + subject
        + "/s"
        + study
        + "/"
        + merged["dicom_id"]
        + ".jpg"
    )
    frame = make_frame(
        len(merged),
        image_id=merged["dicom_id"],
        patient_id=subject,
        study_id=study,
        path=paths,
        view=view,
        official_split=official,
    )
    labels = label_block(len(merged), findings, block)
    report["rows_read"] = len(merged)
    report["label_source"] = (f"the {opts.labeler} labeler's report mentions (1 positive, 0 negative, "
                              "-1 uncertain, blank not mentioned)")
    report["images"] = {
        "located": False,
        "note": "MIMIC paths follow files/pXX/pSUBJECT/sSTUDY/; use --check-files",
    }
    return SourceData(
        "mimic",
        frame,
        findings,
        labels,
        blank_is_unknown=True,
        report=report,
        keep=None if keep.all() else keep,
    )


def _radiologist_test(
    root: Path, merged: pd.DataFrame, official: pd.Series | None, block: dict, report: dict
) -> np.ndarray:
    """Swap test-split labels for the 2.1.0 radiologist labels; returns the rows to keep."""
    path = find_file(
        [root],
        ["mimic-cxr-2.1.0-test-set-labeled.csv"],
        "MIMIC-CXR 2.1.0 radiologist test labels",
        option=None,
    )
    if official is None:
        raise InputError(
            "--radiologist-test needs the official split file",
            where=str(root),
            fix=f"add {PREFIX}split.csv(.gz)",
        )
    register_file(report, "radiologist_test", path)
    rad = _read_labels(path, ["study_id"], MIMIC_TERMS)
    rad = rad.set_index("study_id")
    test = (official == "test").to_numpy()
    in_file = merged["study_id"].isin(rad.index).to_numpy()
    report["radiologist_test"] = {
        "studies_in_file": len(rad),
        "test_images_kept": int((test & in_file).sum()),
        "test_images_dropped": int((test & ~in_file).sum()),
        "studies_outside_test_split": int(len(set(rad.index) - set(merged.loc[test, "study_id"]))),
    }
    rows = np.flatnonzero(test & in_file)
    sid = merged["study_id"].to_numpy()[rows]
    for f in block:
        block[f][rows] = ABSENT
    for term, targets in MIMIC_TERMS.items():
        if term in rad:
            block[targets[0]][rows] = rad[term].reindex(sid).to_numpy(dtype=np.float32)  # blanks: NaN
    return ~(test & ~in_file)

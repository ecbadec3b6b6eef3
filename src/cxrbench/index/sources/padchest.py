"""PadChest (Bustos et al., Medical Image Analysis 2020, "PadChest: A large chest x-ray image dataset
with multi-label annotated reports"), BIMCV / Hospital San Juan, Alicante.

File: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` (plain or ``.gz``; first column
an unnamed row number). Images: 16-bit grayscale PNGs at full resolution, shipped in numbered
zip archives whose number is the ``ImageDir`` column; located by listing ``--root/<ImageDir>/``,
``--root/images/`` and ``--root`` itself (flat), default ``<ImageDir>/<ImageID>`` when absent.

Counts: 160,861 rows (paper: 160,868 images), 67,625 patients (``PatientID``), 109,931 studies,
2007-2017. ``Projection`` (curated view): PA 91,728, L 49,579, AP_horizontal 14,346, AP 4,559,
COSTAL 630, EXCLUDE 11, UNK 8; ``MethodProjection`` says 15,126 of them were predicted by a CNN.
Frontal (PA + AP + AP_horizontal): 110,633 rows.

Labels: ``Labels`` is a Python-list literal of English terms extracted from the Spanish reports,
27 % by physicians (``MethodLabel`` = Physician, 39,053 rows) and the rest by an RNN trained on
them. Items are stripped (many carry a leading space; 3,041 are ``''``). 193 distinct terms, all
in ``findings.PADCHEST_TERMS`` (mapped to a canonical finding or explicitly to none). Labels are
positive mentions only: a term not listed is a negative (the study's reading; absence is not a
confirmed negative), so there are no blanks and no uncertainty. A term not in the table is an
*unknown* term: counted and listed in the report (``describe --json``), never silently dropped.
Parsing is per unique ``Labels`` string (28,808 of them), not per row.

Dropped rows (each counted in the report): ``Labels`` missing (103 rows), the ``exclude`` token
(1,312 rows: images the annotators marked unusable), and the 21 PNGs known to be missing or
broken in the release (list from torchxrayvision, Apache-2.0). ``normal`` -> no_finding; 232 rows
say ``normal`` next to a mapped abnormal term and get no_finding = 0 (counted as conflicts).

Views: PA -> PA, AP -> AP, AP_horizontal -> AP_SUPINE (the study kept all three), L -> LATERAL,
COSTAL/EXCLUDE -> OTHER, UNK -> UNKNOWN. Sex ``PatientSex_DICOM`` (M/F/O). Age = study year -
``PatientBirth`` (a year stored as float). No official split: hash split by ``PatientID``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.sources.base import IndexOptions, SourceData, make_frame, register_file
from cxrbench.index.sources.files import clean_relative_paths, locate_images
from cxrbench.index.sources.labels import map_values, native_findings, normalize_sex, terms_matrix
from cxrbench.index.sources.tables import at_row, check_unique, find_file, read_csv
from cxrbench.index.sources.terms import PADCHEST_TERMS

LABEL_FILE = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
PROJECTIONS = {
    "PA": "PA",
    "AP": "AP",
    "AP_HORIZONTAL": "AP_SUPINE",
    "L": "LATERAL",
    "COSTAL": "OTHER",
    "EXCLUDE": "OTHER",
    "UNK": "UNKNOWN",
}
DROP_TOKENS = ("exclude",)
KNOWN_BAD_FILES: tuple[str, ...] = (
    # missing from the release
    "216840111366964012819207061112010307142602253_04-014-084.png",
    "216840111366964012989926673512011074122523403_00-163-058.png",
    "216840111366964012959786098432011033083840143_00-176-115.png",
    "216840111366964012558082906712009327122220177_00-102-064.png",
    "216840111366964012339356563862009072111404053_00-043-192.png",
    "216840111366964013076187734852011291090445391_00-196-188.png",
    "216840111366964012373310883942009117084022290_00-064-025.png",
    "216840111366964012283393834152009033102258826_00-059-087.png",
    "216840111366964012373310883942009170084120009_00-097-074.png",
    "216840111366964012819207061112010315104455352_04-024-184.png",
    "216840111366964012819207061112010306085429121_04-020-102.png",
    # broken PNG chunks / truncated files
    "216840111366964012989926673512011083134050913_00-168-009.png",
    "216840111366964012373310883942009152114636712_00-102-045.png",
    "216840111366964012819207061112010281134410801_00-129-131.png",
    "216840111366964012487858717522009280135853083_00-075-001.png",
    "216840111366964012989926673512011151082430686_00-157-045.png",
    "216840111366964013686042548532013208193054515_02-026-007.png",
    "216840111366964013590140476722013058110301622_02-056-111.png",
    "216840111366964013590140476722013043111952381_02-065-198.png",
    "216840111366964013829543166512013353113303615_02-092-190.png",
    "216840111366964013962490064942014134093945580_01-178-104.png",
)

# Fast path for the common ``['a', ' b']`` shape; anything else goes through ast.literal_eval.
_SIMPLE_LIST = re.compile(r"^\[\s*(?:'[^'\\]*'\s*(?:,\s*'[^'\\]*'\s*)*)?\]$")
_ITEM = re.compile(r"'([^'\\]*)'")


def parse_terms(text: str) -> list[str]:
    """``"['normal', ' pneumonia', '']"`` -> ``['normal', 'pneumonia']`` (stripped, empties dropped).

    Raises ValueError when ``text`` is not a list literal of strings.
    """
    if _SIMPLE_LIST.match(text):
        items = _ITEM.findall(text)
    else:
        value = ast.literal_eval(text)
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ValueError("not a list of strings")
        items = list(value)
    return [s for s in (i.strip() for i in items) if s]


def _archive_folders(df: pd.DataFrame, path: Path) -> pd.Series | None:
    """Each image's archive folder from ``ImageDir`` (read as a number when every value is one; kept
    inside the dataset root like any path from a CSV), or None without the column."""
    if "ImageDir" not in df:
        return None
    col = df["ImageDir"]
    if pd.api.types.is_numeric_dtype(col):
        text = col.fillna(0).astype(np.int64).astype(str)
        folder = pd.Series(np.where(col.notna(), text, None), index=df.index, dtype="str")
    else:
        folder = col.str.strip().str.replace(r"\.0$", "", regex=True)
    given = folder.notna().to_numpy()
    if given.any():
        clean = clean_relative_paths(folder[given], str(path), "ImageDir")
        folder = folder.astype(object)
        folder[given] = clean.to_numpy()
    return folder


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read the PadChest label CSV (see module docstring)."""
    report: dict = {}
    path = opts.labels_file or find_file([root], [LABEL_FILE], "PadChest label file")
    register_file(report, "labels", path)
    df = read_csv(
        path,
        required=["ImageID", "PatientID", "Projection", "Labels"],
        optional=[
            "ImageDir",
            "StudyID",
            "PatientBirth",
            "PatientSex_DICOM",
            "StudyDate_DICOM",
            "MethodLabel",
        ],
        ids=["PatientID", "StudyID"],  # 39-digit numbers
        text=["ImageID"],
        engine="arrow",  # a wide file (36 columns, reports with newlines) read in part
    )
    df["ImageID"] = df["ImageID"].str.strip()
    check_unique(df["ImageID"], path, "ImageID")
    report["rows_read"] = len(df)
    for col in ("ImageID", "PatientID"):
        blank = df[col].isna().to_numpy()
        if blank.any():
            row = int(np.flatnonzero(blank)[0])
            raise InputError(
                f"column {col!r} is blank",
                where=at_row(path, row),
                fix="check that this is the official file, unmodified",
            )

    codes, uniques = pd.factorize(df["Labels"], sort=False)  # blank -> -1; work per unique string
    uniques = list(np.asarray(uniques, dtype=object))  # plain str: iterating arrow arrays is slow
    missing_u = np.array([str(u).strip().lower() in ("nan", "none", "") for u in uniques] + [True])
    codes = np.where(missing_u[codes], -1, codes)
    term_lists = []
    for u, text in enumerate(uniques):
        if missing_u[u]:
            term_lists.append([])
            continue
        try:
            term_lists.append(parse_terms(text))
        except (ValueError, SyntaxError):
            row = int(np.flatnonzero(codes == u)[0])
            raise InputError(
                f"column 'Labels' is not a list literal: {text[:60]!r}",
                where=at_row(path, row),
                fix="check that this is the official file, unmodified",
            ) from None
    findings = native_findings(PADCHEST_TERMS, PADCHEST_TERMS)
    mat, unknown = terms_matrix(term_lists, PADCHEST_TERMS, findings)
    counts = np.bincount(codes[codes >= 0], minlength=len(uniques))
    unknown_counts: dict[str, int] = {}
    for u, terms in unknown.items():
        for t in set(terms):
            unknown_counts[t] = unknown_counts.get(t, 0) + int(counts[u])
    report["unknown_terms"] = dict(sorted(unknown_counts.items(), key=lambda kv: -kv[1]))
    if unknown_counts:
        report.setdefault("warnings", []).append(
            f"{len(unknown_counts)} PadChest term(s) not in the term table (no finding set from them): "
            + ", ".join(list(report["unknown_terms"])[:10])
        )
    report["empty_label_lists"] = int(
        sum(counts[u] for u, t in enumerate(term_lists) if not t and not missing_u[u])
    )

    drop_u = np.array([any(t in DROP_TOKENS for t in terms) for terms in term_lists] + [False], dtype=bool)
    no_labels = codes < 0
    excluded = drop_u[codes] & ~no_labels
    known_bad = df["ImageID"].isin(KNOWN_BAD_FILES).to_numpy()
    report["dropped"] = {
        "labels_missing": int(no_labels.sum()),
        "exclude_token": int(excluded.sum()),
        "known_bad_files": int((known_bad & ~no_labels & ~excluded).sum()),
    }
    keep = ~(no_labels | excluded | known_bad)

    proj = df["Projection"]
    view = map_values(proj, PROJECTIONS)  # once per distinct value
    odd = (view.isna() & proj.notna()).to_numpy()
    if odd.any():
        report["unmapped_views"] = {str(k): int(v) for k, v in proj[odd].value_counts().items()}
    view = view.where(~odd, "OTHER").fillna("UNKNOWN")

    age = None
    if "PatientBirth" in df and "StudyDate_DICOM" in df:  # YYYYMMDD (read as a number) - birth year
        birth = pd.to_numeric(df["PatientBirth"], errors="coerce")
        year = pd.to_numeric(df["StudyDate_DICOM"], errors="coerce") // 10000
        age = (year - birth).astype("float64")
    folder = _archive_folders(df, path)
    default = (folder + "/" + df["ImageID"]).fillna(df["ImageID"]) if folder is not None else df["ImageID"]
    patterns = [*(sorted(folder.dropna().unique()) if folder is not None else []), "images", "."]
    paths, report["images"], found = locate_images(root, df["ImageID"], default, patterns)

    frame = make_frame(
        len(df),
        image_id=df["ImageID"],
        patient_id=df["PatientID"].str.strip(),
        study_id=df["StudyID"].str.strip() if "StudyID" in df else None,
        path=paths,
        view=view,
        sex=normalize_sex(df["PatientSex_DICOM"]) if "PatientSex_DICOM" in df else None,
        age=age,
        found=found,
    )
    labels = mat[np.where(keep, codes, 0)]  # rows without labels (code -1) are dropped via `keep`
    report["label_source"] = ("terms extracted from the reports ('Labels'; 27% by physicians, the rest by "
                              "an RNN trained on them): a finding whose term is listed is positive, any "
                              "other negative (absence is not a confirmed negative)")
    if "MethodLabel" in df:
        report["label_method"] = {str(k): int(v) for k, v in df["MethodLabel"][keep].value_counts().items()}
    return SourceData("padchest", frame, findings, labels, blank_is_unknown=False, report=report, keep=keep,
                      rows_file=Path(path))

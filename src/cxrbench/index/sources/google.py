"""Google's expert relabels of NIH ChestX-ray14 (Majkowska et al., Radiology 2020, "Chest radiograph
interpretation with deep learning models: assessment with radiologist-adjudicated reference standards
and population-adjusted evaluation"): an **evaluation** label set of four findings.

Files (Google Cloud public bucket ``gcs-public-data--healthcare-nih-chest-xray-labels``, folder
``four_findings_expert_labels/``): ``test_labels.csv`` and ``validation_labels.csv``, each NIH's
``Data_Entry`` columns (``Image Index, Patient ID, Patient Age, Patient Gender, View Position``, ...)
plus ``Fracture, Pneumothorax, Airspace opacity, Nodule or mass`` valued ``YES``/``NO`` (adjudicated
by three radiologists). torchxrayvision ships both as one table with a ``Set Id`` column
(``google2019_nih-chest-xray-labels.csv.gz``): 4,376 images of 1,695 patients, val 2,414 / test 1,962,
AP 3,244 / PA 1,132; positives Fracture 186, Pneumothorax 238, Airspace opacity 2,166, Nodule or
mass 605. Given with ``--labels-file`` (either form) or found in ``--root`` or
``--root/four_findings_expert_labels``.

Findings: ``fracture``, ``pneumothorax``, ``lung_opacity`` (airspace opacity), ``nodule_mass``; any
value but YES/NO is an InputError naming its line. Splits: the release's validation and test sets (no
train split: the set evaluates models trained elsewhere, e.g. on ``nih``). Images: the NIH PNGs,
located as the ``nih`` source does; NIH's ``BBox_List_2017.csv`` in the same places adds its boxes
for the images it covers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.findings import sort_findings
from cxrbench.index.sources.base import IndexOptions, SourceData, make_frame, register_file
from cxrbench.index.sources.files import locate_images
from cxrbench.index.sources.labels import normalize_sex
from cxrbench.index.sources.nih import HEADER_VARIANTS, IMAGE_FOLDERS, VIEW_VALUES, parse_age, read_nih_boxes
from cxrbench.index.sources.tables import at_row, check_unique, find_file, header_columns, read_csv
from cxrbench.index.sources.terms import GOOGLE_TERMS

FOLDER = "four_findings_expert_labels"
SET_FILES = {"test": "test_labels.csv", "val": "validation_labels.csv"}
MERGED = "google2019_nih-chest-xray-labels.csv"
SETS = {"test": "test", "val": "val", "validation": "val"}
VALUES = {"YES": 1.0, "NO": 0.0}


def _files(root: Path, opts: IndexOptions) -> dict[str, Path]:
    if opts.labels_file is not None:
        name = opts.labels_file.name.removesuffix(".gz")
        role = next((r for r, f in SET_FILES.items() if name == f), "merged")
        files = {role: opts.labels_file}
        if role != "merged":  # the other set beside it
            other = next(r for r in SET_FILES if r != role)
            found = find_file([opts.labels_file.parent], [SET_FILES[other]], "", required=False)
            if found is not None:
                files[other] = found
        return files
    dirs = [root / FOLDER, root]
    files = {
        r: p for r, f in SET_FILES.items() if (p := find_file(dirs, [f], "", required=False)) is not None
    }
    if files:
        return files
    return {
        "merged": find_file(
            dirs,
            [MERGED],
            "Google NIH labels (four_findings_expert_labels/test_labels.csv)",
            option="--labels-file (test_labels.csv, validation_labels.csv or the merged table)",
        )
    }


def _read_one(path: Path, role: str) -> pd.DataFrame:
    terms = list(GOOGLE_TERMS)
    has_set = "Set Id" in header_columns(path)
    if role == "merged" and not has_set:
        raise InputError(
            "no 'Set Id' column: cannot tell validation from test images",
            where=str(path),
            fix="give test_labels.csv / validation_labels.csv, or the merged table with Set Id",
        )
    df = read_csv(
        path,
        required=["Image Index", "Patient ID", "View Position", *terms],
        optional=["Patient Age", "Patient Gender", "Set Id"],
        rename=HEADER_VARIANTS,
        ids=[],
        text=["Image Index", "Patient ID", "Set Id", *terms],
    )
    for t in terms:
        v = df[t].astype("str").str.strip().str.upper()
        bad = ~v.isin(list(VALUES))
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"column {t!r} has value {df[t].iloc[r]!r}", where=at_row(path, r), fix="values are YES or NO"
            )
        df[t] = v.map(VALUES).astype(np.float32)
    if role == "merged":
        sets = df["Set Id"].astype("str").str.strip().str.lower()
        bad = ~sets.isin(list(SETS))
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"unknown Set Id {df['Set Id'].iloc[r]!r}", where=at_row(path, r), fix="Set Id is val or test"
            )
        df["_split"] = sets.map(SETS)
    else:
        df["_split"] = role
    return df


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read Google's four-finding labels of NIH images (see module docstring)."""
    report: dict = {}
    files = _files(root, opts)
    frames = []
    for role, path in files.items():
        register_file(report, role, path)
        frames.append(_read_one(path, role))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    names = df["Image Index"].astype("str").str.strip()
    check_unique(names, ", ".join(str(p) for p in files.values()), "Image Index")
    view_raw = df["View Position"].astype("str").str.strip().str.upper()
    view = view_raw.map(VIEW_VALUES).fillna("OTHER").where(df["View Position"].notna(), "UNKNOWN")
    paths, report["images"], found = locate_images(root, names, "images/" + names, IMAGE_FOLDERS)
    frame = make_frame(
        len(df),
        image_id=names,
        patient_id=df["Patient ID"].astype("str").str.strip(),
        path=paths,
        view=view,
        found=found,
        official_split=df["_split"],
        sex=normalize_sex(df["Patient Gender"]) if "Patient Gender" in df else None,
        age=parse_age(df["Patient Age"]) if "Patient Age" in df else None,
    )
    native = [GOOGLE_TERMS[t][0] for t in GOOGLE_TERMS]  # one finding per column
    findings = sort_findings(native)
    block = df[list(GOOGLE_TERMS)].to_numpy(dtype=np.float32)[:, [native.index(f) for f in findings]]
    report["rows_read"] = len(df)
    report["label_source"] = (
        "Google's radiologist-adjudicated labels of four findings (YES/NO; three radiologists per image)"
    )
    regions = read_nih_boxes([root, *{p.parent for p in files.values()}], report)
    return SourceData(
        "nih-google", frame, findings, block, blank_is_unknown=False, report=report, regions=regions
    )

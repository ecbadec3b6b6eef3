"""CheXpert (Irvin et al., AAAI 2019, "CheXpert: A large chest radiograph dataset with uncertainty
labels and expert comparison"), Stanford ML Group / AIMI.

Distributions: ``CheXpert-v1.0`` (full resolution, ~439 GB) and ``CheXpert-v1.0-small``
(~11 GB), each with ``train.csv``, ``valid.csv`` and ``{train,valid}/patientNNNNN/studyN/
viewN_{frontal,lateral}.jpg``. ``Path`` values carry the distribution prefix
(``CheXpert-v1.0-small/train/...``); it is stripped and the rest joined to the folder holding
``train.csv`` (``--root`` itself or ``--root/CheXpert-v1.0[-small]``). The test labels (500
patients, 668 images, 5-radiologist majority) come with CheXlocalize as ``test_labels.csv``
(``Path`` = ``test/patientX/...``, no Sex/Age/view columns): read when present beside
``train.csv`` or in ``--root``.

Counts (train.csv): 223,414 images, 64,540 patients, 187,641 studies; Frontal 191,027 (AP
161,590, PA 29,420, LL 16 / RL 1 decubitus), Lateral 32,387. valid.csv: 234 images, 200
patients, 202 frontal. Dataset total (paper): 224,316 images, 65,240 patients.

Labels: 14 observation columns (``findings.CHEXPERT_TERMS``) from the CheXpert NLP labeler on
train, radiologist consensus on valid/test. ``1.0`` positive, ``0.0`` negative, ``-1.0``
uncertain (train only), blank = not mentioned. ``No Finding`` is only 1.0 or blank.
``--uncertain`` (default zeros, the study's choice) and ``--blank`` (default zeros) decide;
any other value is an error naming its line and column.

Views: ``Frontal/Lateral`` + ``AP/PA``: Frontal+AP -> AP, Frontal+PA -> PA, Lateral -> LATERAL;
the 17 frontal decubitus images (AP/PA ``LL``/``RL``) -> OTHER and CheXlocalize test frontal
images (no AP/PA) -> UNKNOWN, both kept by the default ``--views frontal`` (the study's filter is
the ``Frontal`` flag). Sex ``Male``/``Female`` -> M/F, ``Unknown`` -> missing; ``Age`` as given
(0 occurs 3 times; 90 is a top-coded bucket).

Demographics: the released ``CHEXPERT DEMO.xlsx`` (``--demographics`` or found beside ``train.csv`` /
in ``--root``) adds ``race`` and ``ethnicity`` (and ``insurance`` where a table has it) by patient:
:mod:`cxrbench.index.sources.demographics`.

Split: train.csv -> train, valid.csv -> val, test_labels.csv -> test; without CheXlocalize the
test split is carved by patient from train (valid.csv stays the official validation set).
Patient ``patientNNNNN``, study ``patientNNNNN/studyN`` from the path; image id = the path from
the patient folder on, without extension.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from cxrbench.common.errors import InputError
from cxrbench.index.sources.base import IndexOptions, SourceData, make_frame, register_file
from cxrbench.index.sources.demographics import FILES as DEMO_FILES
from cxrbench.index.sources.demographics import join_demographics
from cxrbench.index.sources.labels import (
    ABSENT,
    code_values,
    label_block,
    map_values,
    native_findings,
    normalize_sex,
)
from cxrbench.index.sources.tables import at_row, check_unique, find_file, read_csv
from cxrbench.index.sources.terms import CHEXPERT_TERMS

PREFIXES = ("CheXpert-v1.0-small", "CheXpert-v1.0")
PREFIX_RE = r"^CheXpert-v1\.0(?:-small)?/"
PATH_RE = r"^(?:train|valid|val|test)/patient\d+/study\d+/[^/]+\.[A-Za-z]+$"
FRONTAL_LATERAL = {"Frontal": "F", "Lateral": "L"}
AP_PA = {"AP": "AP", "PA": "PA", "LL": "OTHER", "RL": "OTHER"}  # LL/RL: decubitus frontal films
SPLIT_FOLDERS = {"train": "train", "valid": "val", "val": "val", "test": "test"}
VALUES = (1.0, 0.0, -1.0)


def split_path(raw: pd.Series) -> dict[str, pd.Series | np.ndarray]:
    """Vectorized (pyarrow) parse of ``[CheXpert-v1.0[-small]/]split/patientN/studyN/file.jpg``:
    ``rest`` (prefix stripped), ``patient``, ``study`` (patientN/studyN), ``image`` (study/file stem)
    and ``ok`` (bool array: the path has that shape; only ``ok`` is returned when one has not).
    pandas' str.extract would loop in Python."""
    rest = pc.replace_substring_regex(pa.array(raw, type=pa.large_string()), PREFIX_RE, "")
    ok = pc.fill_null(pc.match_substring_regex(rest, PATH_RE), False).to_numpy(zero_copy_only=False)
    if not ok.all():
        return {"ok": ok}
    parts = pc.split_pattern(rest, "/")
    patient, study_dir, file = (pc.list_element(parts, i) for i in (1, 2, 3))
    sep = pa.scalar("/", type=rest.type)
    study = pc.binary_join_element_wise(patient, study_dir, sep)
    image = pc.binary_join_element_wise(study, pc.replace_substring_regex(file, r"\.[A-Za-z]+$", ""), sep)

    def series(a: pa.Array) -> pd.Series:
        return pd.Series(a, index=raw.index, dtype=raw.dtype)

    return {
        "rest": series(rest),
        "patient": series(patient),
        "study": series(study),
        "image": series(image),
        "ok": ok,
    }


def _dataset_dir(root: Path, labels_file: Path | None) -> tuple[Path, Path]:
    if labels_file is not None:
        return labels_file.parent, labels_file
    dirs = [root] + [root / p for p in PREFIXES]
    train = find_file(dirs, ["train.csv"], "CheXpert train.csv")
    return train.parent, train


def _image_prefix(root: Path, base: Path) -> str:
    """The folder of the images relative to --root: the labels file's folder when it is inside the
    root (the official layout), else the release folder under the root that holds train/ (a
    --labels-file kept elsewhere, as the docs allow), else the root itself."""
    try:
        rel = base.resolve().relative_to(root.resolve()).as_posix()
        return "" if rel == "." else rel + "/"
    except ValueError:
        pass
    for name in PREFIXES:
        if (root / name / "train").is_dir() or (root / name / "valid").is_dir():
            return name + "/"
    return ""


def _read_one(path: Path, role: str, root: Path, base: Path) -> pd.DataFrame:
    optional = ["Sex", "Age", "Frontal/Lateral", "AP/PA"]
    present_terms = list(CHEXPERT_TERMS)
    df = read_csv(
        path,
        required=["Path"],
        optional=optional + present_terms,
        numeric=present_terms + ["Age"],
        ids=[],
        text=["Path"],
    )
    missing = [t for t in CHEXPERT_TERMS if t not in df.columns]
    if len(missing) == len(CHEXPERT_TERMS):
        raise InputError(
            "no CheXpert observation column found",
            where=str(path),
            fix=f"expected columns {', '.join(CHEXPERT_TERMS)}",
        )
    if role != "test" and missing:
        raise InputError(
            f"missing observation column(s) {', '.join(map(repr, missing))}",
            where=str(path),
            fix="check that this is the official file, unmodified",
        )
    raw = df["Path"].astype(str).str.strip().str.replace("\\", "/", regex=False)
    parts = split_path(raw)
    bad = ~parts["ok"]
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"path {raw.iloc[row]!r} in column 'Path' is not <split>/patientN/studyN/<file>",
            where=at_row(path, row),
            fix="use the official train.csv/valid.csv/test_labels.csv paths",
        )
    rel_base = _image_prefix(root, base)
    df["_path"] = rel_base + parts["rest"]
    df["_image"] = parts["image"]  # patientN/studyN/viewM_frontal
    df["_patient"] = parts["patient"]
    df["_study"] = parts["study"]
    df["_split"] = SPLIT_FOLDERS[role]
    for term in CHEXPERT_TERMS:
        if term in df.columns:
            df[term] = code_values(df[term].to_numpy(), path, term, VALUES)
    for term in missing:  # the CheXlocalize test file: not labelled there, unknown under any policy
        df[term] = np.float32(ABSENT)
    df.attrs["absent"] = missing
    return df


def _flag(values: pd.Series, table: dict[str, str]) -> np.ndarray:
    """Object array of ``table[value]`` (None when missing/unknown); exact matches are vectorized,
    odd spellings (case, spaces) go through :func:`map_values` once per distinct value."""
    out = np.full(len(values), None, dtype=object)
    hit = np.zeros(len(values), dtype=bool)
    for raw, code in table.items():
        m = (values == raw).to_numpy(dtype=bool, na_value=False)
        out[m], hit = code, hit | m
    rest = ~hit & values.notna().to_numpy()
    if rest.any():
        out[rest] = map_values(values[rest], {k.upper(): v for k, v in table.items()}).to_numpy(
            dtype=object, na_value=None
        )
    return out


def _views(df: pd.DataFrame) -> tuple[pd.Series, np.ndarray]:
    """(view per row, source-frontal flag): Frontal/Lateral + AP/PA, the file name when missing."""
    n = len(df)
    none = np.full(n, None, dtype=object)
    kind = _flag(df["Frontal/Lateral"], FRONTAL_LATERAL) if "Frontal/Lateral" in df else none
    unknown = kind == None  # noqa: E711
    if unknown.any():  # CheXlocalize test: no view columns, the file name says it
        name = df["_path"][unknown]
        kind[unknown] = np.where(
            name.str.endswith("_frontal.jpg").to_numpy(dtype=bool),
            "F",
            np.where(name.str.endswith("_lateral.jpg").to_numpy(dtype=bool), "L", None),
        )
    appa = _flag(df["AP/PA"], AP_PA) if "AP/PA" in df else none.copy()
    frontal = kind == "F"
    view = np.full(n, "UNKNOWN", dtype=object)
    view[kind == "L"] = "LATERAL"
    view[frontal] = np.where(appa[frontal] == None, "UNKNOWN", appa[frontal])  # noqa: E711
    return pd.Series(view, index=df.index, dtype="str"), frontal


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read CheXpert train.csv, valid.csv and CheXlocalize test_labels.csv (see module docstring)."""
    report: dict = {}
    base, train_path = _dataset_dir(root, opts.labels_file)
    findings = native_findings(CHEXPERT_TERMS, CHEXPERT_TERMS)
    frames = []
    for role, names in (("train", None), ("valid", ["valid.csv"]), ("test", ["test_labels.csv"])):
        path = train_path if names is None else find_file([base, root], names, "", required=False)
        if path is None:
            continue
        register_file(report, role, path)
        frames.append(_read_one(path, role, root, base))
        absent = frames[-1].attrs["absent"]
        if absent:  # only the CheXlocalize test file may lack observations (checked in _read_one)
            report.setdefault("warnings", []).append(f"{path.name} lacks {', '.join(absent)} (unknown there)")
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    check_unique(df["_image"], ", ".join(report["files"].values()), "image (Path)")
    view, frontal = _views(df)
    labels = {}
    for term, targets in CHEXPERT_TERMS.items():
        labels[targets[0]] = df[term].to_numpy(dtype=np.float32)
    frame = make_frame(
        len(df),
        image_id=df["_image"],
        patient_id=df["_patient"],
        study_id=df["_study"],
        path=df["_path"],
        view=view,
        frontal=frontal,
        sex=normalize_sex(df["Sex"]) if "Sex" in df else None,
        age=df["Age"].astype("float64") if "Age" in df else None,
        official_split=df["_split"],
    )
    report["rows_read"] = len(df)
    report["images"] = {
        "located": False,
        "note": "CheXpert paths come from the CSV; use --check-files to verify",
    }
    block = label_block(len(df), findings, labels)
    extra: tuple[str, ...] = ()
    demo = opts.demographics or find_file([base, root], DEMO_FILES, "", required=False)
    if demo is not None:
        register_file(report, "demographics", demo)
        columns = join_demographics(demo, frame["patient_id"], report)
        for name, values in columns.items():
            frame[name] = values
        extra = tuple(columns)
    report["label_source"] = ("the CheXpert labeler's report mentions (1 positive, 0 negative, -1 uncertain, "
                              "blank not mentioned); radiologist consensus on the official validation and "
                              "test sets")
    return SourceData("chexpert", frame, findings, block, blank_is_unknown=True, report=report, extra=extra)

"""The pretraining-contamination audit: which images of an index an init's pretraining list holds,
and the metric recomputed without them.

A pretraining list (RAD-DINO publishes ``training_images.csv`` in its hub repository; any list of
the images a model saw) is CSV/TSV/TXT/Parquet with an image column (``image_id``, ``dicom_id``,
``image_path``, ``image_file_path``, ``path``, ``file``, ``filename``, ``image``, ``Image Index``,
``ImageID``, or the only column) and optionally a dataset column (``dataset``, ``dataset_name``,
``source``). RAD-DINO's exact columns are not documented in its model card; the reader accepts any
of these names, so check the match counts ``cxrbench audit`` prints.

Matching an index row to the list, per dataset (list rows whose dataset maps to the row's dataset,
or all rows when the list names none): the row's ``image_id`` and its ``path`` are compared to the
list's entries by their last ``k`` path components with the file extension dropped, ``k`` the
smallest number that makes that column unique within the index (1 for NIH's ``00000001_000.png``,
MIMIC's ``dicom_id``, PadChest's ``ImageID``; 3 for CheXpert's ``patientN/studyN/viewM``). So
``files/p10/p10000032/s50414267/<dicom_id>.dcm`` matches MIMIC-CXR-JPG's ``<dicom_id>``, and
``CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg`` matches ``patient00001/study1/view1_frontal``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError

KEY_COLUMNS = (
    "image_id",
    "dicom_id",
    "image_path",
    "image_file_path",
    "path",
    "file",
    "filename",
    "image",
    "Image Index",
    "ImageID",
    "Path",
)
DATASET_COLUMNS = ("dataset", "dataset_name", "source", "Dataset")
DATASET_ALIASES = {
    "mimic": "mimic",
    "mimic-cxr": "mimic",
    "mimic_cxr": "mimic",
    "mimiccxr": "mimic",
    "mimic-cxr-jpg": "mimic",
    "chexpert": "chexpert",
    "chexpert-v1.0": "chexpert",
    "chexpert_v1.0": "chexpert",
    "nih": "nih",
    "nih-cxr": "nih",
    "nih-cxr8": "nih",
    "nih_cxr": "nih",
    "cxr8": "nih",
    "chestx-ray14": "nih",
    "chestxray14": "nih",
    "chestx-ray8": "nih",
    "padchest": "padchest",
    "pad-chest": "padchest",
    "brax": "brax",
    "vindr": "vindr",
    "vindr-cxr": "vindr",
    "vindrcxr": "vindr",
}


def normalize_dataset(name: Any) -> str | None:
    """A dataset name as the index spells it (``MIMIC-CXR`` -> ``mimic``); None for missing values."""
    if name is None or (isinstance(name, float) and np.isnan(name)):
        return None
    text = str(name).strip().lower().replace(" ", "-")
    return DATASET_ALIASES.get(text, text)


def read_pretraining_list(path: str | os.PathLike) -> pd.DataFrame:
    """The list as a frame with ``dataset`` (normalized, or None) and ``key`` (the image column)."""
    import io

    from cxrbench.common.fileio import parquet_errors, read_text

    path = Path(path)
    fix = ("give one image id or path per line (CSV/TSV with a header naming the image column and "
           "optionally 'dataset', or a Parquet file)")
    try:
        with open(path, "rb") as f:
            parquet = f.read(4) == b"PAR1"  # by content: a Parquet file named .csv is read as Parquet
    except OSError:
        parquet = path.suffix == ".parquet"  # read_text / parquet_errors name the problem
    if parquet or path.suffix == ".parquet":
        with parquet_errors(path, "pretraining list", fix=fix):
            df = pd.read_parquet(path)
    else:
        text = read_text(path, "pretraining list")  # missing, folder, unreadable, not UTF-8: named
        if not text.strip():
            raise InputError("the pretraining list is empty", where=str(path), fix=fix)
        first = text.lstrip("\ufeff").splitlines()[0]
        sep = "\t" if "\t" in first else ","
        names = [c.strip() for c in first.strip().split(sep)]
        header = 0 if any(c in KEY_COLUMNS or c in DATASET_COLUMNS for c in names) else None
        try:
            df = pd.read_csv(io.StringIO(text), sep=sep, header=header, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, ValueError) as e:
            reason = " ".join(str(e).split())[:160]
            raise InputError(f"the pretraining list cannot be read as a table ({reason})", where=str(path),
                             fix=fix) from None
        if header is None:
            df.columns = [f"column_{i}" for i in range(df.shape[1])]
    if df.empty:
        raise InputError("the pretraining list has no rows", where=str(path), fix=fix)
    ds_col = next((c for c in DATASET_COLUMNS if c in df.columns), None)
    key_col = next((c for c in KEY_COLUMNS if c in df.columns), None)
    if key_col is None:
        rest = [c for c in df.columns if c != ds_col]
        if len(rest) != 1:
            raise InputError(
                f"cannot tell the image column among {list(df.columns)[:8]}",
                where=str(path),
                fix=f"name it one of {', '.join(KEY_COLUMNS[:6])} (and the dataset column 'dataset')",
            )
        key_col = rest[0]
    out = pd.DataFrame({"key": df[key_col].astype(str).to_numpy()})
    out["dataset"] = [normalize_dataset(v) for v in df[ds_col]] if ds_col else None
    return out[out["key"].str.strip() != ""].reset_index(drop=True)


def run_pretraining_list(init: str) -> Path | None:
    """The image list a ``cxrbench pretrain`` run keeps beside its weights, for ``checkpoint:`` inits."""
    from cxrbench.common.layout import RUN_PRETRAIN_IMAGES
    from cxrbench.models.resolve import parse_init, resolve_init

    if not parse_init(init).is_checkpoint:
        return None
    path = Path(str(resolve_init(init).checkpoint)).parent / RUN_PRETRAIN_IMAGES
    return path if path.is_file() else None


def _parts(text: str) -> list[str]:
    parts = [p for p in str(text).replace("\\", "/").strip().split("/") if p and p != "."]
    if parts:
        parts[-1] = os.path.splitext(parts[-1])[0]
    return parts


def _suffixes(parts: Sequence[list[str]], k: int) -> list[str]:
    return ["/".join(p[-k:]) if len(p) >= k else "" for p in parts]


def _unique_depth(parts: Sequence[list[str]]) -> int | None:
    """The smallest k whose last-k-component keys are unique (None when even the whole values repeat)."""
    depth = max((len(p) for p in parts), default=0)
    for k in range(1, depth + 1):
        keys = _suffixes(parts, k)
        if "" not in keys and len(set(keys)) == len(keys):
            return k
    return None


def match_images(index: pd.DataFrame, plist: pd.DataFrame) -> np.ndarray:
    """Bool per index row: is the image in the pretraining list (module docstring's rule)."""
    index = index.reset_index(drop=True)
    found = np.zeros(len(index), dtype=bool)
    has_ds = plist["dataset"].notna().any()
    for ds, rows in index.groupby(index["dataset"].astype(str), sort=False):
        entries = plist[plist["dataset"] == ds] if has_ds else plist
        if entries.empty:
            continue
        listed = [_parts(k) for k in entries["key"]]
        hit = np.zeros(len(rows), dtype=bool)
        for col in ("image_id", "path"):
            if col not in rows.columns:
                continue
            mine = [_parts(v) for v in rows[col].astype(str)]
            k = _unique_depth(mine)
            if k is None:
                continue
            wanted = set(_suffixes(listed, k)) - {""}
            hit |= np.fromiter((s in wanted for s in _suffixes(mine, k)), dtype=bool, count=len(mine))
        found[rows.index.to_numpy()] = hit
    return found


@dataclass
class AuditResult:
    """What ``cxrbench audit`` reports: the init's declared pretraining datasets, the index's datasets,
    and per split the images and patients found in the pretraining list (None without a list)."""

    init: str
    pretrained_on: tuple[str, ...]
    index_datasets: list[str]
    warnings: list[str]
    splits: dict[str, dict[str, Any]]
    list_rows: int | None = None
    list_datasets: list[str] = field(default_factory=list)
    found_ids: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "init": self.init,
            "pretrained_on": list(self.pretrained_on),
            "index_datasets": self.index_datasets,
            "warnings": self.warnings,
            "splits": self.splits,
            "pretraining_list": None
            if self.list_rows is None
            else {"rows": self.list_rows, "datasets": self.list_datasets},
        }


def audit_index(
    init: str,
    index: pd.DataFrame,
    pretraining_list: pd.DataFrame | None = None,
    splits: Sequence[str] = ("test",),
) -> AuditResult:
    """Count, per split, the index's images and patients found in ``pretraining_list``."""
    from cxrbench.models.contamination import contamination_warnings, pretraining_datasets

    declared = pretraining_datasets(init)
    datasets = sorted(index["dataset"].astype(str).unique())
    warnings = contamination_warnings(init, datasets)
    found = match_images(index, pretraining_list) if pretraining_list is not None else None
    listed = pretraining_list is not None and len(pretraining_list) > 0
    if found is not None and pretraining_list is not None and listed and not found.any():  # every split
        sample = ", ".join(repr(k) for k in pretraining_list["key"].head(2))
        warnings.append(f"none of the {len(pretraining_list):,} entries of the pretraining list "
                        f"(e.g. {sample}) matches an image id or path of this index: check that it is the "
                        "list of this init's pretraining images and that it names images as the index does")
    out: dict[str, dict[str, Any]] = {}
    ids: dict[str, list[str]] = {}
    for split in splits:
        sel = (index["split"].astype(str) == split).to_numpy()
        rows = index[sel]
        entry: dict[str, Any] = {
            "images": int(sel.sum()),
            "patients": int(rows["patient_id"].nunique()),
            "found_images": None,
            "found_patients": None,
        }
        if found is not None:
            hit = found[sel]
            entry["found_images"] = int(hit.sum())
            entry["found_patients"] = int(rows.loc[hit, "patient_id"].nunique())
            ids[split] = rows.loc[hit, "image_id"].astype(str).tolist()
        out[split] = entry
    return AuditResult(
        init=init,
        pretrained_on=tuple(declared),
        index_datasets=datasets,
        warnings=warnings,
        splits=out,
        list_rows=None if pretraining_list is None else len(pretraining_list),
        list_datasets=sorted({d for d in pretraining_list["dataset"].dropna()})
        if pretraining_list is not None
        else [],
        found_ids=ids,
    )


def evaluate_excluding(
    test: pd.DataFrame, exclude_ids: Iterable[str], val: pd.DataFrame | None = None, **options: Any
) -> dict[str, Any]:
    """The metrics of ``test`` predictions (Contract 4 frame) with all images and without
    ``exclude_ids``, side by side: ``{"all": metrics, "clean": metrics, "excluded_images": n,
    "excluded_patients": n}``. ``options`` go to :func:`~cxrbench.evaluate.scoring.evaluate_predictions`
    (same seed and resample count for both, so the CIs are comparable)."""
    from cxrbench.evaluate.scoring import evaluate_predictions

    drop = test["image_id"].astype(str).isin(set(map(str, exclude_ids)))
    if drop.all():
        raise InputError(
            "every test image is in the exclusion list",
            where="contamination audit",
            fix="there is nothing left to evaluate without them",
        )
    clean = test[~drop].reset_index(drop=True)
    return {
        "all": evaluate_predictions(test, val, **options),
        "clean": evaluate_predictions(clean, val, **options),
        "excluded_images": int(drop.sum()),
        "excluded_patients": int(test.loc[drop, "patient_id"].astype(str).nunique()),
        "remaining_images": int(len(clean)),
    }


def side_by_side(result: dict[str, Any], metric: str = "auroc") -> pd.DataFrame:
    """One row per finding (and ``mean``): ``metric`` with its CI on all test images and without the
    excluded ones, and the difference."""
    rows = []
    for name in [*result["all"]["per_finding"], "mean"]:
        vals = {}
        for part in ("all", "clean"):
            m = result[part]
            entry = (
                m["macro"]["metrics"][metric] if name == "mean" else m["per_finding"][name]["metrics"][metric]
            )
            vals[part] = entry
        rows.append(
            {
                "finding": name,
                f"{metric}_all": vals["all"]["value"],
                "ci_low_all": vals["all"]["ci_low"],
                "ci_high_all": vals["all"]["ci_high"],
                f"{metric}_clean": vals["clean"]["value"],
                "ci_low_clean": vals["clean"]["ci_low"],
                "ci_high_clean": vals["clean"]["ci_high"],
                "difference": vals["clean"]["value"] - vals["all"]["value"],
            }
        )
    return pd.DataFrame(rows)

"""The normalized index (Contract 2): column names, allowed values, validation, Parquet I/O.

The list of finding columns travels inside the Parquet file's key-value metadata
(``cxrbench.findings``), so any index or cache index says which of its columns are findings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_path
from cxrbench.common.layout import FINDINGS_META_KEY
from cxrbench.common.validation import check_columns

META_COLUMNS: tuple[str, ...] = (
    "image_id", "patient_id", "study_id", "path", "view", "split", "dataset", "sex", "age",
)
REQUIRED_COLUMNS: tuple[str, ...] = ("image_id", "patient_id", "path", "view", "split", "dataset")
VIEWS: tuple[str, ...] = ("PA", "AP", "AP_SUPINE", "LATERAL", "OTHER", "UNKNOWN")
FRONTAL_VIEWS: tuple[str, ...] = ("PA", "AP", "AP_SUPINE")
SPLITS: tuple[str, ...] = ("train", "val", "test")
FINDINGS_KEY = FINDINGS_META_KEY  # Parquet metadata key of the ordered finding list


def index_row(df: pd.DataFrame, pos: int, where: str, locate: Callable[[Any], str] | None = None) -> str:
    """Where row ``pos`` (0-based position) of an index frame is, in the one row-number convention:
    ``locate(label)`` when the rows come from a text file (``"FILE, line N"``, 1-based, header
    counted), else ``"WHERE, index row N (image_id 'X')"`` with N 1-based."""
    if locate is not None:
        return locate(df.index[pos])
    image = f" (image_id {str(df['image_id'].iloc[pos])!r})" if "image_id" in df.columns else ""
    return f"{where}, index row {pos + 1}{image}"


def validate_index(df: pd.DataFrame, findings: list[str], where: str = "index",
                   locate: Callable[[Any], str] | None = None) -> None:
    """Raise InputError on the first violation of Contract 2 (names the row/column and the fix).

    ``locate`` maps a row label of ``df`` to its place in the file it was read from (see
    :func:`index_row`); without it rows are counted from 1 in the index itself."""
    check_columns(df.columns, list(REQUIRED_COLUMNS) + list(findings), where)
    dup = df["image_id"].duplicated(keep=False)
    if dup.any():
        first = df.loc[dup, "image_id"].iloc[0]
        raise InputError(f"image_id {first!r} appears {int((df['image_id'] == first).sum())} times",
                         where=where, fix="image ids must be unique within a dataset")
    for col, allowed in (("view", VIEWS), ("split", SPLITS)):
        bad = ~df[col].isin(allowed)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(f"column {col!r} has value {df[col].iloc[row]!r}",
                             where=index_row(df, row, where, locate),
                             fix=f"allowed values: {', '.join(allowed)}")
    paths = df["path"].astype(str)
    # Cheap literal scans first; the regex only runs on the few rows that contain "..".
    bad = paths.str.startswith(("/", "\\")).to_numpy(dtype=bool).copy()
    dots = np.flatnonzero(paths.str.contains("..", regex=False).to_numpy(dtype=bool))
    if len(dots):
        escaping = paths.iloc[dots].str.contains(r"(?:^|[/\\])\.\.(?:[/\\]|$)", regex=True)
        bad[dots[escaping.to_numpy(dtype=bool)]] = True
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(f"path {paths.iloc[row]!r} is absolute or escapes the dataset root",
                         where=index_row(df, row, where, locate),
                         fix="paths must be relative to the dataset root, without '..'")
    for f in findings:
        values = df[f].to_numpy(dtype=np.float64, na_value=np.nan)
        ok = np.isnan(values) | (values == 0.0) | (values == 1.0)
        if not ok.all():
            row = int(np.flatnonzero(~ok)[0])
            raise InputError(f"finding {f!r} has value {values[row]!r}",
                             where=index_row(df, row, where, locate),
                             fix="finding columns hold 1.0, 0.0 or NaN (unknown)")


def leakage(df: pd.DataFrame) -> pd.DataFrame:
    """Patients that appear in more than one split: columns patient_id, splits (sorted, '+'-joined)."""
    pairs = df[["patient_id", "split"]].drop_duplicates()
    leaking = pairs["patient_id"].duplicated(keep=False)
    if not leaking.any():
        return pd.DataFrame({"patient_id": pd.Series([], dtype=object),
                             "splits": pd.Series([], dtype=object)})
    per = pairs[leaking].groupby("patient_id", sort=True)["split"].agg(lambda s: "+".join(sorted(s)))
    return per.rename("splits").reset_index()


def check_no_leakage(df: pd.DataFrame, where: str = "index") -> None:
    """Raise InputError naming the first patient found in two splits."""
    bad = leakage(df)
    if len(bad):
        pid, splits = bad.iloc[0]["patient_id"], bad.iloc[0]["splits"]
        raise InputError(f"patient {pid!r} is in splits {splits} ({len(bad)} patient(s) leak in total)",
                         where=where, fix="split by patient, never by image")


def write_index(df: pd.DataFrame, path: str | os.PathLike, findings: list[str]) -> None:
    """Write ``df`` to Parquet atomically, recording ``findings`` in the file's metadata."""
    table = pa.Table.from_pandas(df, preserve_index=False)
    for f in findings:  # cast in Arrow: no copy of the whole frame
        i = table.schema.get_field_index(f)
        if table.schema.field(i).type != pa.float32():
            table = table.set_column(i, f, table.column(i).cast(pa.float32()))
    meta = dict(table.schema.metadata or {})
    meta[FINDINGS_KEY] = json.dumps(list(findings)).encode()
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_findings(path: str | os.PathLike) -> list[str]:
    """The finding columns recorded in an index/cache Parquet file."""
    from cxrbench.common.fileio import parquet_errors

    with parquet_errors(path, "index", fix="give an index written by `cxrbench index` (a .parquet file)"):
        meta = pq.read_schema(path).metadata or {}
    if FINDINGS_KEY not in meta:
        raise InputError("no cxrbench finding list in the file's metadata", where=str(path),
                         fix="create the index with `cxrbench index`")
    return list(json.loads(meta[FINDINGS_KEY]))


def read_index(path: str | os.PathLike) -> tuple[pd.DataFrame, list[str]]:
    """Read an index written by :func:`write_index`; returns (frame, finding names)."""
    path = Path(path)
    if not path.exists():
        raise InputError("index file not found", where=str(path),
                         fix=spell("create it with `cxrbench index`",
                                   "create it with cxrbench.build_index(..., out=)"))
    from cxrbench.common.fileio import parquet_errors

    findings = read_findings(path)
    with parquet_errors(path, "index", fix="recreate it with `cxrbench index`"):
        df = pq.read_table(path).to_pandas()
    return df, findings

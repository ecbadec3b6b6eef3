"""Which rows of a csv-source CSV are images of the dataset: row filters and repeated images.

A mapping may keep only rows whose column holds one of some values and drop rows whose column holds
one of others (a collection that mixes X-ray and CT rows: ``keep_rows: {modality: [X-ray]}``), and
may keep the first row of an image listed more than once (``duplicates: keep_first``; the default,
``error``, refuses the file listing the repeated images). Every row left out is counted in the index
report (``dropped``) and in a warning. Row labels are kept, so later messages still name the CSV's
own lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError


def _norm(values: pd.Series) -> pd.Series:
    return values.astype("string").str.strip()


def filter_rows(df: pd.DataFrame, keep: Mapping[str, list[Any]] | None, drop: Mapping[str, list[Any]] | None,
                where: str, report: dict[str, Any]) -> pd.DataFrame:
    """The rows of ``df`` that every ``keep`` rule admits and no ``drop`` rule removes (values compared
    as text, surrounding spaces ignored, case kept); counts go to ``report['dropped']['rows']``."""
    if not keep and not drop:
        return df
    mask = np.ones(len(df), dtype=bool)
    counts: dict[str, int] = {}
    for column, values in (keep or {}).items():
        hit = _norm(df[column]).isin([str(v).strip() for v in values]).fillna(False).to_numpy(dtype=bool)
        counts[f"{column} not in {list(values)}"] = int((mask & ~hit).sum())
        mask &= hit
    for column, values in (drop or {}).items():
        hit = _norm(df[column]).isin([str(v).strip() for v in values]).fillna(False).to_numpy(dtype=bool)
        counts[f"{column} in {list(values)}"] = int((mask & hit).sum())
        mask &= ~hit
    if not mask.any():
        columns = [*(keep or {}), *(drop or {})]
        seen = {c: sorted(map(str, _norm(df[c]).dropna().unique()))[:8] for c in columns}
        raise InputError(f"the mapping's row filters leave no row of {len(df):,} (values found: {seen})",
                         where=where, fix="correct keep_rows / drop_rows in the mapping")
    removed = int((~mask).sum())
    report.setdefault("dropped", {})["rows"] = counts
    if removed:
        report.setdefault("warnings", []).append(
            f"{removed:,} of {len(df):,} rows left out by the mapping's row filters ("
            + ", ".join(f"{k}: {n:,}" for k, n in counts.items()) + ")")
    return df[mask]


def first_of_duplicates(df: pd.DataFrame, image_id: pd.Series, column: str, where: str | Path,
                        report: dict[str, Any]) -> tuple[pd.DataFrame, pd.Series]:
    """Keep the first row of every image listed more than once (``duplicates: keep_first``)."""
    later = image_id.duplicated(keep="first").to_numpy()
    n = int(later.sum())
    report.setdefault("dropped", {})["duplicates"] = n
    if n:
        names = list(dict.fromkeys(image_id[later].tolist()))
        shown = ", ".join(repr(x) for x in names[:5])
        shown += f" and {len(names) - 5} more" if len(names) > 5 else ""
        report.setdefault("warnings", []).append(
            f"{n:,} later row(s) of {len(names):,} {column} value(s) listed more than once were left out, "
            f"the first row of each kept (duplicates: keep_first): {shown}")
    return df[~later], image_id[~later]

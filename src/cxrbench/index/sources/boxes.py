"""Reading official box lists (one row per box) into the regions table of
:mod:`cxrbench.index.regions`: VinDr-CXR / VinBigData and VinDr-PCXR annotations, NIH's
``BBox_List_2017.csv``, RSNA's stage-2 labels.

Rows whose four coordinates are all blank (``No finding`` rows, RSNA negatives) carry no box and are
counted; a partly blank, non-numeric, non-finite or empty box is an InputError naming its line.
Coordinates below 0 (or past a declared grid) are clipped and counted: official files hold a few
boxes drawn a pixel past the border. A term that feeds no canonical finding is counted by term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.regions import make_regions
from cxrbench.index.sources.tables import at_row, read_csv


def _checked_boxes(df: pd.DataFrame, coords: Sequence[str], path: Path, xywh: bool,
                   grid: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges clipped to the image, rows that have a box, rows clipped) of a box list; a partly blank,
    empty, non-finite or outside box is an InputError naming its line."""
    xy = df[list(coords)].to_numpy(dtype=np.float64)
    blank = np.isnan(xy)
    none = blank.all(axis=1)
    partial = blank.any(axis=1) & ~none
    if partial.any():
        r = int(np.flatnonzero(partial)[0])
        raise InputError(
            "a box with some coordinates blank",
            where=at_row(path, r),
            fix="check that this is the official, unmodified file",
        )
    if xywh:
        xy = np.column_stack([xy[:, 0], xy[:, 1], xy[:, 0] + xy[:, 2], xy[:, 1] + xy[:, 3]])
    has = ~none
    finite = np.isfinite(xy).all(axis=1)
    bad = has & (~finite | (xy[:, 2] <= xy[:, 0]) | (xy[:, 3] <= xy[:, 1]))
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"box {[float(v) for v in xy[r]]} is empty or not finite",
            where=at_row(path, r),
            fix="boxes have right > left and bottom > top; check the file",
        )
    low = np.maximum(xy, 0.0)
    if grid is not None:
        low = np.minimum(low, np.array([grid[0], grid[1], grid[0], grid[1]], dtype=np.float64))
    clipped = has & (low != xy).any(axis=1)
    degenerate = has & ((low[:, 2] <= low[:, 0]) | (low[:, 3] <= low[:, 1]))
    if degenerate.any():
        r = int(np.flatnonzero(degenerate)[0])
        raise InputError(
            f"box {[float(v) for v in xy[r]]} lies outside the image",
            where=at_row(path, r),
            fix="check that this is the official, unmodified file",
        )
    return low, has, clipped

def read_boxes(
    path: Path,
    *,
    id_col: str,
    label_col: str | None,
    coords: Sequence[str],
    terms: Mapping[str, tuple[str, ...]],
    xywh: bool = False,
    reader_col: str | None = None,
    grid: tuple[int, int] | None = None,
    fixed_label: str | None = None,
    rename: Mapping[str, str] | None = None,
    id_of: Any = None,
    df: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(regions in the file's pixels, counts for the report) of a box list.

    ``coords``: the columns of (x0, y0, x1, y1), or of (x, y, width, height) with ``xywh``.
    ``terms`` maps the label column's terms to canonical findings (``fixed_label``: every box has
    that term, RSNA). ``grid`` = (width, height) the release states for every image. ``id_of``
    turns the id column into the index's image ids. ``df``: the file already read (same columns).
    """
    optional = [reader_col] if reader_col else []
    label_cols = [label_col] if label_col else []
    if df is None:
        df = read_csv(
            path,
            required=[id_col, *label_cols, *coords],
            optional=optional,
            rename=rename,
            numeric=list(coords),
            ids=[],
            text=[id_col, *label_cols, *optional],
        )
    low, has, clipped = _checked_boxes(df, coords, path, xywh, grid)
    labels = (
        pd.Series(fixed_label, index=df.index, dtype="str")
        if fixed_label is not None
        else df[label_col].astype("str").str.strip()
    )
    ids = df[id_col].astype("str").str.strip()
    if id_of is not None:
        ids = id_of(ids)
    idx = np.flatnonzero(has)
    codes, uniques = pd.factorize(labels.iloc[idx], sort=False)
    rows: list[np.ndarray] = []
    findings: list[str] = []
    unknown: dict[str, int] = {}
    not_canonical: dict[str, int] = {}
    for u, term in enumerate(uniques):
        targets = terms.get(term)
        sel = idx[codes == u]
        if targets is None:
            unknown[str(term)] = len(sel)
            continue
        if not targets:
            not_canonical[str(term)] = len(sel)
        for f in targets:
            rows.append(sel)
            findings.extend([f] * len(sel))
    take = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    order = np.argsort(take, kind="stable")  # keep the file's order
    take = take[order]
    finding = np.asarray(findings, dtype=object)[order] if findings else np.zeros(0, dtype=object)
    n = len(take)
    reader = (
        df[reader_col].astype("str").iloc[take].str.strip().to_numpy(dtype=object)
        if reader_col and reader_col in df
        else None
    )
    out = make_regions(
        image_id=ids.iloc[take].to_numpy(dtype=object),
        finding=finding,
        label=labels.iloc[take].to_numpy(dtype=object),
        kind=["box"] * n,
        x0=low[take, 0],
        y0=low[take, 1],
        x1=low[take, 2],
        y1=low[take, 3],
        width=[grid[0]] * n if grid else None,
        height=[grid[1]] * n if grid else None,
        reader=reader,
    )
    info: dict[str, Any] = {"file": str(path), "boxes": int(has.sum()), "rows_without_box": int((~has).sum())}
    if clipped.any():
        info["clipped_to_image"] = int(clipped.sum())
    if unknown:
        info["unknown_terms"] = unknown
    if not_canonical:
        info["terms_without_canonical_finding"] = not_canonical
    return out, info


def merge_region_reports(report: dict[str, Any], role: str, info: Mapping[str, Any]) -> None:
    """Record the counts of one box/mask file under ``report["regions_read"][role]`` and warn about
    unknown terms (their boxes are left out)."""
    report.setdefault("regions_read", {})[role] = dict(info)
    if info.get("unknown_terms"):
        listed = ", ".join(f"{t!r} ({n})" for t, n in list(info["unknown_terms"].items())[:5])
        report.setdefault("warnings", []).append(
            f"{info.get('file', role)}: box labels not in the term table were left out: {listed}"
        )

"""Localization ground truth beside an index: the regions table (boxes and masks), its checks,
the one run-length code of its masks, and Parquet I/O.

``cxrbench index`` writes ``X.regions.parquet`` next to ``X.parquet``
(:func:`cxrbench.common.layout.regions_path`) when the source releases boxes or masks; a cache
holds a copy in cache pixels (:mod:`cxrbench.cache.regions`). One row per region and finding:

============  ========  ===============================================================================
column        type      meaning
============  ========  ===============================================================================
``image_id``  str       the index row it belongs to (every id is in the index beside it)
``finding``   str       canonical finding name (a source term feeding two findings gives two rows)
``label``     str       the source's own term, as released (``Effusion``, ``Lung Opacity``, ...)
``kind``      str       ``box`` or ``mask``
``x0..y1``    float64   the box (a mask's bounding box) in pixels: left, top, right, bottom *edges*
                        (pixel (r, c) covers [c, c+1) x [r, r+1)), so a box of the whole image is
                        (0, 0, W, H)
``width``,    Int64     the pixel grid the coordinates (and the mask) refer to, when the release states
``height``              it (NIH, RSNA, SIIM: 1024); null: the image file as indexed
``mask``      str       ``kind == mask``: the mask, run-length coded (:func:`encode_rle`); else null
``reader``    str       who drew it (``R8``), null for a consensus or a single unnamed reader
============  ========  ===============================================================================

Coordinates are original-image pixels in an index's table (metadata ``space: image``) and cache
pixels in a cache's (``space: cache``, with ``size`` and ``resize``). The run-length code: ``"s0 n0
s1 n1 ..."``, runs of ones over the image flattened row by row (C order), starts 0-based and absolute,
strictly increasing, never touching; an empty mask is ``""``. Official encodings (SIIM's relative,
column-major one) are converted by the adapter that reads them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_path
from cxrbench.common.layout import REGIONS_META_KEY
from cxrbench.common.validation import check_columns

REGION_COLUMNS: tuple[str, ...] = (
    "image_id",
    "finding",
    "label",
    "kind",
    "x0",
    "y0",
    "x1",
    "y1",
    "width",
    "height",
    "mask",
    "reader",
)
KINDS: tuple[str, ...] = ("box", "mask")
COORDS: tuple[str, ...] = ("x0", "y0", "x1", "y1")
REGIONS_VERSION = 1
MAX_SIDE = 65536  # a declared grid larger than this is refused (no real radiograph comes close)


def empty_regions() -> pd.DataFrame:
    """A regions frame without rows, every column typed."""
    return make_regions(image_id=[], finding=[], label=[], kind=[], x0=[], y0=[], x1=[], y1=[])


def make_regions(**columns: Any) -> pd.DataFrame:
    """A regions frame from column values (``width``, ``height``, ``mask``, ``reader`` may be left out:
    null), typed as the table says."""
    n = len(next(iter(columns.values())))
    data: dict[str, Any] = {}
    for c in REGION_COLUMNS:
        v = columns.get(c)
        if c in COORDS:
            data[c] = pd.Series(np.asarray(v, dtype=np.float64))
        elif c in ("width", "height"):
            data[c] = pd.Series(pd.array([None] * n if v is None else v, dtype="Int64"))
        else:
            data[c] = pd.Series([None] * n if v is None else list(v), dtype="str")
    return pd.DataFrame(data)


# --- the run-length code ---------------------------------------------------------------------------


Where = str | Callable[[], str]  # a place, or how to name it (computed only when an error is raised)


def _at(where: Where) -> str:
    return where() if callable(where) else where


def encode_rle(mask: np.ndarray) -> str:
    """Boolean ``(H, W)`` mask -> ``"s0 n0 s1 n1 ..."`` (C order, 0-based absolute starts)."""
    padded = np.zeros(mask.size + 2, dtype=bool)
    padded[1:-1] = np.asarray(mask, dtype=bool).ravel()  # C order, whatever the array's memory layout
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, stops = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts.tolist(), stops.tolist(), strict=True))


def parse_runs(text: Any, limit: int, where: Where) -> np.ndarray:
    """``"a b c d"`` -> int64 (2, k) array of (first, second) numbers, bounded: at most ``limit`` pairs
    of non-negative integers; anything else is one InputError at ``where``."""
    if text is None or (isinstance(text, float) and np.isnan(text)):
        return np.zeros((2, 0), dtype=np.int64)
    text = str(text).strip()
    if len(text) > 24 * (2 * limit + 1):  # far more characters than `limit` pairs can take
        raise InputError(
            f"run-length code of {len(text):,} characters is longer than any mask of the image",
            where=_at(where),
            fix="check that this is the official, unmodified file",
        )
    tokens = text.split()
    if len(tokens) % 2 or len(tokens) > 2 * limit:
        raise InputError(
            f"run-length code has {len(tokens):,} numbers (pairs of start and length expected, "
            f"at most {2 * limit:,})",
            where=_at(where),
            fix="check that this is the official file",
        )
    if not all(t.isdigit() for t in tokens):
        bad = next(t for t in tokens if not t.isdigit())
        raise InputError(
            f"run-length code holds {bad[:20]!r}, not a non-negative integer",
            where=_at(where),
            fix="check that this is the official, unmodified file",
        )
    values = np.array([int(t) for t in tokens], dtype=np.int64) if tokens else np.zeros(0, np.int64)
    return values.reshape(-1, 2).T


def decode_rle(
    text: Any,
    height: int,
    width: int,
    where: Where,
    *,
    relative: bool = False,
    one_based: bool = False,
    order: str = "C",
) -> np.ndarray:
    """A run-length code -> boolean ``(height, width)`` mask; every malformed or out-of-grid code is
    one InputError at ``where``. Defaults read the table's own code; ``relative`` (each start counts
    from the end of the previous run, SIIM's stage-1 code), ``one_based`` and ``order="F"`` (column by
    column) read official encodings."""
    n = int(height) * int(width)
    starts, lengths = parse_runs(text, n, where)
    if relative:
        ends = np.cumsum(starts + lengths)
        starts = ends - lengths
    if one_based:
        if len(starts) and starts.min() < 1:
            raise InputError("a 1-based run starts at 0", where=_at(where), fix="check the file")
        starts = starts - 1
    stops = starts + lengths
    if len(starts) and (lengths.min() < 1 or stops.max() > n or (starts[1:] < stops[:-1]).any()):
        raise InputError(
            f"run-length code does not describe a mask of {height} x {width} pixels (runs "
            "empty, overlapping, out of order or past the last pixel)",
            where=_at(where),
            fix="check that this is the official file for these images",
        )
    flat = np.zeros(n + 1, dtype=np.int8)
    flat[starts] = 1  # runs never touch: starts and stops are all distinct
    flat[stops] -= 1
    mask = np.cumsum(flat[:n], dtype=np.int8).view(bool)
    if order == "C":
        return mask.reshape(height, width)
    import cv2  # a contiguous transpose of a bool image: OpenCV's is ~30x numpy's strided copy

    return cv2.transpose(mask.reshape(width, height).view(np.uint8)).view(bool)


def mask_box(mask: np.ndarray) -> tuple[float, float, float, float] | None:
    """Edges (x0, y0, x1, y1) of a boolean mask's pixels; None when it is empty."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


# --- checks ----------------------------------------------------------------------------------------


def check_regions(df: pd.DataFrame, where: str, image_ids: pd.Series | None = None) -> None:
    """Raise InputError on the first row that breaks the table's rules (named by its row)."""
    from cxrbench.index.findings import is_canonical

    check_columns(df.columns, REGION_COLUMNS, where)
    if not len(df):
        return
    kind = df["kind"].astype(str)
    bad = ~kind.isin(KINDS)
    if bad.any():
        r = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"region row {r}: kind {df['kind'].iloc[r]!r}", where=where, fix="box or mask")
    for name in df["finding"].astype(str).unique():
        if not is_canonical(name):
            raise InputError(
                f"region finding {name!r} is not a canonical name",
                where=where,
                fix="map source terms to canonical findings (docs/datasets.md)",
            )
    xy = df[list(COORDS)].to_numpy(dtype=np.float64)
    ok = np.isfinite(xy).all(axis=1) & (xy[:, 2] > xy[:, 0]) & (xy[:, 3] > xy[:, 1]) & (xy >= 0).all(axis=1)
    if not ok.all():
        r = int(np.flatnonzero(~ok)[0])
        raise InputError(
            f"region row {r} (image {df['image_id'].iloc[r]!r}) has box {xy[r].tolist()}",
            where=where,
            fix="boxes are finite, non-negative, with x1 > x0 and y1 > y0",
        )
    w, h = (
        df["width"].to_numpy(dtype=np.float64, na_value=np.nan),
        df["height"].to_numpy(dtype=np.float64, na_value=np.nan),
    )
    known = ~np.isnan(w) & ~np.isnan(h)
    bad_grid = (np.isnan(w) != np.isnan(h)) | (known & ((w < 1) | (h < 1) | (w > MAX_SIDE) | (h > MAX_SIDE)))
    if bad_grid.any():
        r = int(np.flatnonzero(bad_grid)[0])
        raise InputError(
            f"region row {r}: grid {w[r]} x {h[r]}",
            where=where,
            fix=f"width and height are both given (1..{MAX_SIDE}) or both null",
        )
    outside = known & ((xy[:, 2] > w + 1e-6) | (xy[:, 3] > h + 1e-6))
    if outside.any():
        r = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"region row {r} (image {df['image_id'].iloc[r]!r}): box {xy[r].tolist()} lies "
            f"outside its {int(w[r])} x {int(h[r])} image",
            where=where,
            fix="check that the coordinates are pixels of that image",
        )
    masks = (kind == "mask").to_numpy()
    if (masks & ~known).any() or (masks & df["mask"].isna().to_numpy()).any():
        r = int(np.flatnonzero(masks & (~known | df["mask"].isna().to_numpy()))[0])
        raise InputError(
            f"region row {r}: a mask needs its code and its grid (width, height)",
            where=where,
            fix="give mask, width and height for every mask row",
        )
    if image_ids is not None:
        missing = ~df["image_id"].isin(image_ids)
        if missing.any():
            r = int(np.flatnonzero(missing.to_numpy())[0])
            raise InputError(
                f"region row {r}: image {df['image_id'].iloc[r]!r} is not in the index",
                where=where,
                fix="regions belong to the index written beside them",
            )


def attach_regions(raw: pd.DataFrame | None, index: pd.DataFrame, where: str) -> tuple[pd.DataFrame, dict]:
    """The regions of the images kept in ``index`` (adapters give them for every image they read),
    checked; and the counts the index report records."""
    if raw is None or not len(raw):
        return empty_regions(), {}
    keep = raw["image_id"].isin(index["image_id"]).to_numpy()
    out = raw.loc[keep].reset_index(drop=True)
    check_regions(out, where, index["image_id"])
    info: dict[str, Any] = {
        "rows": len(out),
        "images": int(out["image_id"].nunique()),
        "kinds": {str(k): int(v) for k, v in out["kind"].value_counts().sort_index().items()},
        "by_finding": {str(k): int(v) for k, v in out["finding"].value_counts().sort_index().items()},
    }
    if (~keep).any():
        info["dropped_image_not_indexed"] = int((~keep).sum())
    return out, info


# --- Parquet I/O -----------------------------------------------------------------------------------


def write_regions(df: pd.DataFrame, path: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Write a regions frame atomically with its metadata (``space``, ``index_sha256``, ...)."""
    frame = df.loc[:, list(REGION_COLUMNS)].reset_index(drop=True)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[REGIONS_META_KEY] = json.dumps({"version": REGIONS_VERSION, **meta}, sort_keys=True).encode()
    with atomic_path(path) as tmp:
        pq.write_table(table.replace_schema_metadata(schema_meta), tmp)


def regions_meta(path: str | os.PathLike) -> dict[str, Any] | None:
    """The cxrbench metadata of a regions file, or None when the file is not one cxrbench wrote."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(REGIONS_META_KEY)
    except (OSError, pa.ArrowInvalid):
        return None
    try:
        return json.loads(raw) if raw is not None else None
    except ValueError:
        return None


def read_regions(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(regions frame, metadata) of a file written by :func:`write_regions`, checked."""
    path = Path(path)
    meta = regions_meta(path) if path.is_file() else None
    if meta is None:
        raise InputError(
            "not a cxrbench regions file" if path.exists() else "regions file not found",
            where=str(path),
            fix="write it with `cxrbench index` (sources that release boxes or masks) or `cxrbench prepare`",
        )
    try:
        df = pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowInvalid) as e:
        raise InputError(f"not a readable Parquet file ({e})", where=str(path), fix="rewrite it") from None
    for c in ("width", "height"):
        if c in df:
            df[c] = df[c].astype("Int64")
    check_regions(df, str(path))
    return df, meta


def region_mask(row: Mapping[str, Any], height: int, width: int, where: str = "region") -> np.ndarray:
    """Boolean ``(height, width)`` mask of one region row on its grid (boxes filled to the pixels they
    cover at least half of; masks decoded). The grid must be the row's own when it states one."""
    if row["kind"] == "mask":
        if (int(row["height"]), int(row["width"])) != (int(height), int(width)):
            raise InputError(
                f"mask on a {row['width']} x {row['height']} grid asked on {width} x {height}",
                where=where,
                fix="read a cache's regions for cache pixels",
            )
        return decode_rle(row["mask"], int(height), int(width), where)
    mask = np.zeros((int(height), int(width)), dtype=bool)
    c0, c1 = int(np.floor(row["x0"] + 0.5)), int(np.floor(row["x1"] + 0.5))
    r0, r1 = int(np.floor(row["y0"] + 0.5)), int(np.floor(row["y1"] + 0.5))
    mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask

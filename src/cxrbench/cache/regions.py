"""The localization ground truth carried into a cache: the index's regions table
(:mod:`cxrbench.index.regions`) in cache pixels, ``CACHE/index.regions.parquet``.

The pixels of a cache go through :func:`cxrbench.cache.preprocess.geometry`: a source window
(``crop``), resampled to the content size, placed at an offset (``pad``). Regions follow the same
map, from the decoded image's own shape (recorded by the build for every image):

* a box's edges map linearly, ``x' = (x - crop_left) * content_width / crop_width + left`` (likewise y),
  then are clipped to the output; a box that leaves nothing inside (outside a ``crop`` window) is
  dropped and counted (``dropped.outside_image``);
* a mask is resampled exactly as the pixels (:func:`cxrbench.cache.preprocess.resize_to` on its 0/1
  values, area averaging to shrink) and kept where the resampled value is at least 0.5; its box is
  that of the kept pixels (a mask that keeps none is dropped and counted);
* a region whose grid (``width``, ``height``) differs from the decoded image (an NIH box list in the
  1024-px space, images downsampled by the user) is first scaled onto the decoded image (boxes) or
  resampled onto it (masks).

Rows of images the cache left out (``--skip-bad``) are dropped and counted. The file's metadata records
``space: cache``, the recipe (size, resize, resample), the source regions file and its SHA-256 (a
cache whose source regions changed is refreshed by ``prepare``), and the counts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.cache.preprocess import geometry, resize_to
from cxrbench.common.errors import InputError
from cxrbench.common.layout import CACHE_INDEX, CACHE_REGIONS
from cxrbench.index.regions import (
    COORDS,
    check_regions,
    decode_rle,
    empty_regions,
    encode_rle,
    make_regions,
    mask_box,
    read_regions,
    regions_meta,
    write_regions,
)
from cxrbench.index.schema import read_index

MASK_LEVEL = 0.5  # a resampled mask pixel belongs to the region from this value on


def box_to_cache(
    xy: np.ndarray, shape: tuple[int, int], size: int, resize: str
) -> tuple[np.ndarray, np.ndarray]:
    """(k, 4) box edges in an ``(H, W)`` image -> (boxes in cache pixels, clipped to the output; which
    boxes keep an area)."""
    g = geometry(shape, size, resize)
    sx, sy = g.content_width / g.crop_width, g.content_height / g.crop_height
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 4)
    out = np.empty_like(xy)
    out[:, [0, 2]] = (xy[:, [0, 2]] - g.crop_left) * sx + g.left
    out[:, [1, 3]] = (xy[:, [1, 3]] - g.crop_top) * sy + g.top
    out = np.clip(out, 0.0, float(size))
    keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
    return out, keep


def mask_to_cache(mask: np.ndarray, size: int, resize: str, resample: str = "area") -> np.ndarray:
    """Boolean ``(H, W)`` mask -> boolean ``(size, size)`` mask through the cache's geometry."""
    g = geometry(mask.shape, size, resize)
    x = np.asarray(mask, dtype=np.float32)[
        g.crop_top : g.crop_top + g.crop_height, g.crop_left : g.crop_left + g.crop_width
    ]
    content = resize_to(x, g.content_height, g.content_width, resample=resample) >= MASK_LEVEL
    out = np.zeros((size, size), dtype=bool)
    out[g.top : g.top + g.content_height, g.left : g.left + g.content_width] = content
    return out


def regions_to_cache(
    regions: pd.DataFrame,
    shapes: Mapping[str, tuple[int, int]],
    size: int,
    resize: str,
    resample: str = "area",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The regions of the images in ``shapes`` (image id -> decoded ``(H, W)``) in cache pixels;
    and the rows dropped, by reason."""
    dropped = {"image_not_in_cache": 0, "outside_image": 0}
    cols: dict[str, list[Any]] = {
        c: [] for c in ("image_id", "finding", "label", "kind", "x0", "y0", "x1", "y1", "mask", "reader")
    }
    for row in regions.itertuples(index=False):
        shape = shapes.get(str(row.image_id))
        if shape is None:
            dropped["image_not_in_cache"] += 1
            continue
        h, w = int(shape[0]), int(shape[1])
        grid = None if pd.isna(row.width) else (int(row.height), int(row.width))
        if row.kind == "mask":
            mask = decode_rle(row.mask, grid[0], grid[1], f"region of image {row.image_id!r}")
            if grid != (h, w):  # onto the decoded image first
                mask = resize_to(mask.astype(np.float32), h, w) >= MASK_LEVEL
            cached = mask_to_cache(mask, size, resize, resample)
            box = mask_box(cached)
            if box is None:
                dropped["outside_image"] += 1
                continue
            code: str | None = encode_rle(cached)
        else:
            xy = np.array([row.x0, row.y0, row.x1, row.y1], dtype=np.float64)
            if grid is not None and grid != (h, w):
                xy *= np.array([w / grid[1], h / grid[0], w / grid[1], h / grid[0]])
            out, keep = box_to_cache(xy, (h, w), size, resize)
            if not keep[0]:
                dropped["outside_image"] += 1
                continue
            box, code = tuple(out[0]), None
        for c, v in zip(
            ("image_id", "finding", "label", "kind", *COORDS, "mask", "reader"),
            (row.image_id, row.finding, row.label, row.kind, *box, code, row.reader),
            strict=True,
        ):
            cols[c].append(v)
    if not cols["image_id"]:
        return empty_regions(), dropped
    n = len(cols["image_id"])
    return make_regions(**cols, width=[size] * n, height=[size] * n), dropped


def write_cache_regions(
    out: Path,
    regions: pd.DataFrame,
    shapes: Mapping[str, tuple[int, int]],
    recipe: Mapping[str, Any],
    source: Mapping[str, Any],
) -> dict[str, Any]:
    """Map ``regions`` into the cache at ``out`` and write ``CACHE/index.regions.parquet``; returns the
    metadata written (``source``: the regions file and its SHA-256)."""
    cached, dropped = regions_to_cache(
        regions, shapes, int(recipe["size"]), str(recipe["resize"]), str(recipe.get("resample", "pil-box"))
    )
    meta = {
        "space": "cache",
        "size": int(recipe["size"]),
        "resize": recipe["resize"],
        "resample": recipe.get("resample", "pil-box"),
        "index_hash": recipe.get("index_hash"),
        **source,
        "rows": len(cached),
        "dropped": dropped,
    }
    write_regions(cached, Path(out) / CACHE_REGIONS, meta)
    return meta


def source_regions(index_path: str | os.PathLike | None) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The regions beside an index file (``X.regions.parquet``) with its identity for the cache's
    metadata; (None, {}) when there are none."""
    from cxrbench.common.fileio import file_sha256
    from cxrbench.common.layout import regions_path

    if index_path is None:
        return None, {}
    path = regions_path(index_path)
    if not path.is_file() or regions_meta(path) is None:
        return None, {}
    df, meta = read_regions(path)
    if meta.get("space") != "image":
        raise InputError(
            f"the regions beside the index are in {meta.get('space')!r} pixels",
            where=str(path),
            fix="an index's regions are in image pixels: rewrite them with `cxrbench index`",
        )
    return df, {"source": str(path), "source_sha256": file_sha256(path)}


def read_cache_regions(cache_dir: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """(regions in cache pixels, metadata) of a cache; InputError when the cache has none."""
    path = Path(cache_dir) / CACHE_REGIONS
    if not path.is_file():
        raise InputError(
            "this cache has no localization ground truth",
            where=str(cache_dir),
            fix="index a source that releases boxes or masks (the index writes X.regions.parquet "
            "beside it), then run `cxrbench prepare` on that index again",
        )
    df, meta = read_regions(path)
    if meta.get("space") != "cache":
        raise InputError(
            "the regions file is not in cache pixels", where=str(path), fix="rerun `cxrbench prepare`"
        )
    return df, meta


def regions_of(index, regions: pd.DataFrame | None) -> tuple[pd.DataFrame | None, dict[str, Any]]:
    """The regions to carry into the cache and their identity (file and SHA-256, or a content hash)."""
    if regions is None:
        return source_regions(None if isinstance(index, pd.DataFrame) else index)
    check_regions(regions, "regions")
    digest = hashlib.sha256(pd.util.hash_pandas_object(regions, index=False).to_numpy().tobytes()).hexdigest()
    return regions, {"source": None, "source_sha256": digest}


def refresh_regions(
    out: Path,
    manifest: dict[str, Any],
    df: pd.DataFrame,
    regions: pd.DataFrame | None,
    region_source: dict[str, Any],
    root: Path,
) -> bool:
    """An up-to-date cache whose index has (new or changed) regions: write them (True), decoding the shapes
    of just the images that have regions (the images and the manifest stay as they are)."""
    if regions is None:
        return False
    meta = regions_meta(out / CACHE_REGIONS) if (out / CACHE_REGIONS).is_file() else None
    if meta is not None and meta.get("source_sha256") == region_source.get("source_sha256"):
        return False
    cached = read_index(out / CACHE_INDEX)[0]
    wanted = cached[cached["image_id"].isin(set(regions["image_id"]))]
    shapes = decoded_shapes(root, wanted)
    write_cache_regions(out, regions, shapes, manifest.get("recipe", {}), region_source)
    return True


def decoded_shapes(root: Path, rows: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """Image id -> decoded (H, W), by decoding the images (as the build does)."""
    from cxrbench.cache.decode import read_image
    from cxrbench.common.fileio import resolve_inside

    out: dict[str, tuple[int, int]] = {}
    for image_id, rel in zip(rows["image_id"].astype(str), rows["path"].astype(str), strict=True):
        img = read_image(resolve_inside(root, rel, where=f"image {image_id}"))
        out[image_id] = (int(img.shape[0]), int(img.shape[1]))
    return out


def shapes_by_id(
    df: pd.DataFrame, keep: np.ndarray, by_row: dict[int, tuple[int, int]], regions: pd.DataFrame, root: Path
) -> dict[str, tuple[int, int]]:
    """Decoded shapes of the kept images, by image id (those a resumed older build did not record are
    decoded again, only where regions need them)."""
    ids = df["image_id"].astype(str).to_numpy(dtype=object)
    shapes = {ids[r]: hw for r, hw in by_row.items() if keep[r]}
    need = set(regions["image_id"].astype(str)) - set(shapes)
    missing = df[keep & df["image_id"].astype(str).isin(need).to_numpy()]
    if len(missing):
        shapes.update(decoded_shapes(root, missing))
    return shapes

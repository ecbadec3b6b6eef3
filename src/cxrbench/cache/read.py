"""Opening a prepared cache (Contract 3): :func:`open_cache` is the one door into a cache.

Layout of a cache directory (names in :mod:`cxrbench.common.layout`)::

    images.u8       raw uint8, shape manifest["shape"] = [N, S, S], C order (numpy.memmap)
    index.parquet   the source index rows in cache order, plus ``cache_row`` (int64): the slot of
                    the row's image in images.u8 (equal to the row position unless --skip-bad
                    dropped images: their slots stay zero and their rows are not in the index)
    manifest.json   recipe (size, resize, equalize, source index hash, preprocessing version),
                    counts, failures, package version, created time. Written last, atomically:
                    a directory without it is an unfinished build, never a cache.
    .build/         only during a build: per-chunk completion records (resume after a kill)

A :class:`Cache` checks the manifest, the image file's size and the index's finding list when
opened, and reads the rest on demand: ``cache.columns([...])`` reads only the index columns asked
for (a dataset over 800,000 images needs a few), ``cache.index`` the whole table, ``cache.images``
maps images.u8.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import read_json
from cxrbench.common.layout import CACHE_BUILD_DIR, CACHE_IMAGES, CACHE_INDEX, CACHE_MANIFEST
from cxrbench.index.schema import read_findings, read_index

CACHE_FORMAT = "cxrbench-cache"
CACHE_FORMAT_VERSION = 1
_DAMAGED = "the cache is damaged; rebuild it with `cxrbench prepare --overwrite`"


class Cache:
    """An opened, complete cache.

    Attributes:
        path: the cache directory.
        manifest: the parsed manifest.json.
        shape: ``(N_slots, S, S)`` of images.u8.
        size: image side S in pixels.
        findings: finding columns of the index, in order.
        recipe: ``{"size", "resize", "equalize"}``, the user-facing recipe.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.manifest = read_manifest(self.path)
        self.shape = cache_shape(self.path, self.manifest)
        self.size = int(self.shape[1])
        self.recipe = recipe_of(self.manifest)
        self.findings = read_findings(self.path / CACHE_INDEX)

    @property
    def n_slots(self) -> int:
        """Number of image slots in images.u8 (at least the number of index rows)."""
        return int(self.shape[0])

    def regions(self) -> pd.DataFrame:
        """The localization ground truth in cache pixels (``index.regions.parquet``, the table of
        :mod:`cxrbench.index.regions` with ``width = height = size``), keyed by ``image_id``;
        InputError when the cache has none (:func:`cxrbench.cache.regions.read_cache_regions`)."""
        from cxrbench.cache.regions import read_cache_regions

        return read_cache_regions(self.path)[0]

    def columns(self, names: list[str]) -> pd.DataFrame:
        """Only the index columns ``names``, in cache order (``cache_row`` checked when asked for).

        Reads just what is asked and hands Arrow's freed buffers back, so a process that builds a
        dataset over a large index does not keep the whole table's memory (forked workers inherit it).
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        from cxrbench.common.validation import check_columns

        path = self.path / CACHE_INDEX
        check_columns(pq.read_schema(path).names, names, where=str(path), fix=_DAMAGED)
        df = pq.read_table(path, columns=list(dict.fromkeys(names))).to_pandas()
        pa.default_memory_pool().release_unused()
        if "cache_row" in df.columns:
            _check_rows(df["cache_row"].to_numpy(dtype=np.int64), self.n_slots, path)
        return df

    @cached_property
    def index(self) -> pd.DataFrame:
        """The whole index (validated Contract 2 rows plus ``cache_row``), read on first use."""
        path = self.path / CACHE_INDEX
        df, _ = read_index(path)
        if "cache_row" not in df.columns:
            raise InputError("column 'cache_row' is missing", where=str(path), fix=_DAMAGED)
        _check_rows(df["cache_row"].to_numpy(dtype=np.int64), self.n_slots, path)
        return df

    @cached_property
    def images(self) -> np.memmap:
        """images.u8 as a read-only uint8 memmap ``[N_slots, S, S]``."""
        return np.memmap(self.path / CACHE_IMAGES, dtype=np.uint8, mode="r", shape=self.shape, order="C")

    def __repr__(self) -> str:
        return (f"Cache({str(self.path)!r}, {self.shape[0]} slots, {self.size} px, "
                f"{len(self.findings)} findings)")


def open_cache(cache_dir: str | os.PathLike) -> Cache:
    """Open a complete cache (made by :func:`~cxrbench.cache.build.prepare_cache`); InputError with the
    fix otherwise (missing or damaged manifest, images file of the wrong size, ...).

    Args:
        cache_dir: the cache folder.

    Returns:
        :class:`Cache`: ``.manifest``, ``.shape`` (N, S, S), ``.size`` (S, px), ``.findings``,
        ``.recipe`` at once; ``.index`` (the index DataFrame) and ``.images`` (uint8 memmap
        [N, S, S]; the image of index row i is ``images[index.cache_row[i]]``) on demand.

    Example::

        cache = cxrbench.open_cache("cache/nih-224")
        cache.findings, cache.images[cache.index["cache_row"][0]].shape   # (224, 224)
    """
    return Cache(cache_dir)


def read_manifest(cache_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete cache; InputError naming the directory when it is not one."""
    cache_dir = Path(cache_dir)
    manifest_path = cache_dir / CACHE_MANIFEST
    if not cache_dir.is_dir():
        raise InputError("cache directory not found", where=str(cache_dir),
                         fix=spell("build it with `cxrbench prepare --index ... --root ... --out DIR`",
                                   "build it with cxrbench.prepare_cache(index, root, out)"))
    if not manifest_path.exists():
        if (cache_dir / CACHE_BUILD_DIR).exists():
            raise InputError("the cache is incomplete (its build was interrupted or failed)",
                             where=str(cache_dir),
                             fix="rerun the same `cxrbench prepare` command; it resumes where it stopped")
        raise InputError(f"not a cxrbench cache (no {CACHE_MANIFEST})", where=str(cache_dir),
                         fix=spell("build it with `cxrbench prepare`",
                                   "build it with cxrbench.prepare_cache"))
    manifest = read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != CACHE_FORMAT:
        raise InputError(f"{CACHE_MANIFEST} is not a cxrbench cache manifest", where=str(manifest_path),
                         fix="rebuild the cache with `cxrbench prepare --overwrite`")
    if int(manifest.get("format_version", 0)) > CACHE_FORMAT_VERSION:
        raise InputError(f"cache format version {manifest.get('format_version')} is newer than this "
                         f"cxrbench understands ({CACHE_FORMAT_VERSION})", where=str(manifest_path),
                         fix="upgrade cxrbench or rebuild the cache")
    for name in (CACHE_IMAGES, CACHE_INDEX):
        if not (cache_dir / name).is_file():
            raise InputError(f"the cache is damaged: {name} is missing", where=str(cache_dir),
                             fix="rebuild it with `cxrbench prepare --overwrite`")
    return manifest


def cache_shape(cache_dir: str | os.PathLike, manifest: dict[str, Any]) -> tuple[int, int, int]:
    """``(N, S, S)`` of images.u8, checked against the file's size."""
    path = Path(cache_dir) / CACHE_IMAGES
    shape = tuple(int(v) for v in manifest["shape"])
    expected = int(np.prod(shape))
    actual = path.stat().st_size if path.exists() else -1
    if actual != expected:
        raise InputError(f"{CACHE_IMAGES} holds {max(actual, 0)} bytes but the manifest expects {expected} "
                         f"({'x'.join(map(str, shape))})", where=str(path), fix=_DAMAGED)
    return shape  # type: ignore[return-value]


def recipe_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The user-facing recipe (size, resize, equalize, resample) of a manifest; a cache made before
    the resampler was recorded used ``pil-box``."""
    recipe = manifest.get("recipe", {})
    return {"size": int(recipe["size"]), "resize": str(recipe["resize"]),
            "equalize": bool(recipe["equalize"]), "resample": str(recipe.get("resample", "pil-box"))}


def legacy_resampler_note(manifest: dict[str, Any], where: str) -> str | None:
    """One line when a cache was made by the legacy resampler (Pillow BOX, not exact area averaging):
    what it is and how to rebuild it; None for an exact cache."""
    if recipe_of(manifest)["resample"] != "pil-box":
        return None
    return (f"{where} was made by the legacy resampler (Pillow BOX: exact area averaging only at integer "
            "factors); it stays valid as it is; to rebuild it with the exact one run `cxrbench prepare` "
            "with --overwrite (a study: set `resample: area` in its preprocess recipe)")


def _check_rows(rows: np.ndarray, n_slots: int, path: Path) -> None:
    if len(rows) and (rows.min() < 0 or rows.max() >= n_slots):
        raise InputError(f"cache_row values outside 0..{n_slots - 1}", where=str(path), fix=_DAMAGED)


def describe_manifest(manifest: dict[str, Any], source: str) -> list[str]:
    """Lines for ``cxrbench describe``: the recipe and resampler, failures, decoding warnings."""
    try:
        recipe = recipe_of(manifest)
    except (KeyError, TypeError, ValueError):
        return ["warning: the cache manifest has no readable recipe"]
    lines = [f"cache recipe: {recipe['size']} px, {recipe['resize']}, "
             f"{'equalized' if recipe['equalize'] else 'not equalized'}, resampler {recipe['resample']}"]
    note = legacy_resampler_note(manifest, source)
    if note:
        lines.append(f"note: {note}")
    failed = (manifest.get("counts") or {}).get("failed") or 0
    if failed:
        lines.append(f"warning: {failed:,} image(s) could not be read and are left out "
                     "(listed in the manifest)")
    for w in manifest.get("warnings") or []:
        lines.append(f"decoding warning ({w.get('files', 0):,} file(s), e.g. "
                     f"{', '.join(w.get('examples', [])[:2])}): {w.get('message')}")
    return lines

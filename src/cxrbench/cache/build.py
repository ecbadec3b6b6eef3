"""Building a cache (Contract 3): :func:`prepare_cache` decodes, preprocesses and stores every image
of an index once, in parallel and resumably; :func:`write_cache` stores images already in memory
(tests, synthetic data) through the same final step, so both make the same files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.cache.chunks import (
    collect_failures,
    collect_shapes,
    collect_warnings,
    pending_jobs,
    read_chunk_records,
    run_jobs,
)
from cxrbench.cache.read import CACHE_FORMAT, CACHE_FORMAT_VERSION
from cxrbench.cache.regions import refresh_regions, regions_of, shapes_by_id, write_cache_regions
from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_write_json, file_lock, read_json
from cxrbench.common.layout import CACHE_BUILD_DIR as BUILD_DIR
from cxrbench.common.layout import CACHE_IMAGES as IMAGES_FILE
from cxrbench.common.layout import CACHE_INDEX as INDEX_FILE
from cxrbench.common.layout import CACHE_LOCK as LOCK_FILE
from cxrbench.common.layout import CACHE_MANIFEST as MANIFEST_FILE
from cxrbench.common.layout import CACHE_REGIONS as REGIONS_FILE
from cxrbench.common.provenance import stable_hash
from cxrbench.index.schema import read_index, write_index

# =====================================================================================================
# Building a cache
# =====================================================================================================
PREPROCESS_VERSION = 1  # bump when imageio/preprocess change the pixels a recipe produces


_MESSAGE_FAILURES = 10  # failures named in the error line; all of them go to .build/failures.json


def prepare_cache(
    index: str | os.PathLike | pd.DataFrame,
    root: str | os.PathLike,
    out: str | os.PathLike,
    size: int = 224,
    resize: str = "stretch",
    equalize: bool = True,
    workers: int | None = None,
    skip_bad: bool = False,
    quiet: bool = False,
    *,
    findings: list[str] | None = None,
    overwrite: bool = False,
    chunk_size: int | None = None,
    resample: str = "area",
    regions: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Decode, preprocess and store every image of ``index`` once; returns the manifest.

    Args:
        index: a Contract-2 index file (read with ``schema.read_index``) or DataFrame. For a
            DataFrame the finding columns are ``findings``, else ``df.attrs["findings"]``, else its
            columns that are canonical finding names.
        root: the dataset root the index's ``path`` column is relative to.
        out: the cache directory (new, empty, or a cache/unfinished build of the same recipe).
        size, resize, equalize, resample: the recipe (see :func:`cxrbench.cache.preprocess.preprocess`;
            ``resample="pil-box"`` reproduces caches made before the exact area resampler).
        workers: processes (default: all cores); each writes its chunk straight into images.u8.
        skip_bad: drop unreadable images (listed in the manifest) instead of failing at the end.
        quiet: no progress bar or messages.
        overwrite: replace an existing cache or unfinished build that has a different recipe (the
            same recipe is never rebuilt: it is up to date or resumed; delete ``out`` to force).
        chunk_size: rows per work unit and resume granularity (default from N and workers).
        regions: the index's localization ground truth (:mod:`cxrbench.index.regions`, image pixels);
            for an index file, the ``X.regions.parquet`` beside it is used. They are carried into the
            cache's pixels as ``index.regions.parquet`` (:mod:`cxrbench.cache.regions`); an up-to-date
            cache gets them (again) when they are new or changed, without touching its images.

    Resumable: chunks finished before a kill are not redone. Idempotent: the same recipe and
    index into a complete cache does nothing. Raises InputError for bad arguments, a different
    recipe in ``out`` (without ``overwrite``) and, unless ``skip_bad``, any unreadable image (all
    named, after every other image was processed; no manifest is written then).

    Returns:
        The manifest dict (also ``out/manifest.json``): ``shape`` [N, size, size], ``recipe``,
        ``index_sha256``, failures and decoding warnings, timings. :func:`open_cache` opens the cache.

    Example::

        cxrbench.prepare_cache("nih.parquet", "/data/nih", "cache/nih-224", size=224, workers=8)
    """
    import time

    from cxrbench.cache.preprocess import RESAMPLERS, RESIZE_MODES, _check_size
    from cxrbench.common.validation import check_choice

    started = time.perf_counter()
    check_choice("--resize", resize, RESIZE_MODES)
    check_choice("--resample", resample, RESAMPLERS)
    size = _check_size(size)
    n_workers = _resolve_workers(workers)
    root = Path(root)
    out = Path(out)
    df, finding_names, source = _load_index(index, findings)
    if not root.is_dir():
        raise InputError("dataset root is not a directory", where=str(root),
                         fix=f"pass the folder the index's paths are relative to as {spell('--root')}")
    regions, region_source = regions_of(index, regions)
    recipe = {"size": size, "resize": resize, "equalize": bool(equalize), "resample": resample,
              "index_hash": index_hash(df, finding_names), "preprocess_version": PREPROCESS_VERSION}
    identity = _identity(recipe)
    n = len(df)
    shape = (n, size, size)

    if out.exists() and not out.is_dir():
        raise InputError(f"{spell('--out')} exists and is not a directory", where=str(out),
                         fix=f"choose another {spell('--out')}")
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        up_to_date = _prepare_out_dir(out, recipe, identity, overwrite)
        if up_to_date is not None:
            if refresh_regions(out, up_to_date, df, regions, region_source, root):
                _say(f"{out}: localization ground truth written ({len(regions)} regions)", quiet)
            _say(f"nothing to do: {out} is up to date (same recipe and index)", quiet)
            return up_to_date
        return _build(df, finding_names, source, root, out, recipe, identity, shape, n_workers,
                      skip_bad, quiet, chunk_size, started, (regions, region_source))


def _build(df, finding_names, source, root, out, recipe, identity, shape, n_workers, skip_bad, quiet,
           chunk_size, started, regions=(None, {})) -> dict[str, Any]:
    import time

    n = shape[0]
    build = out / BUILD_DIR
    state = _load_or_create_state(build, recipe, identity, shape, chunk_size or _default_chunk(n, n_workers))
    chunk = int(state["chunk_size"])
    _preallocate(out / IMAGES_FILE, int(np.prod(shape)))

    records = read_chunk_records(build)
    jobs = pending_jobs(df, n, chunk, records)
    done_rows = n - sum(len(job["rows"]) for job in jobs)
    if records and jobs:
        _say(f"resuming {out}: {done_rows} of {n} images already done", quiet)

    run_jobs(jobs, out, root, shape, recipe, n_workers, done_rows, quiet)

    final = read_chunk_records(build)
    failures = collect_failures(final)
    if failures and not skip_bad:
        _fail_with(failures, build)
    keep = np.ones(n, dtype=bool)
    keep[[int(f["row"]) for f in failures]] = False
    if not keep.any():
        first = failures[0]
        raise InputError(f"none of the {n} images could be read (the first: {first['path']}: "
                         f"{first['reason']})", where=str(root), fix="check --root and the index's paths")
    if regions[0] is not None:
        regions = (*regions, shapes_by_id(df, keep, collect_shapes(final), regions[0], root))
    return _finish(out, df, finding_names, keep, failures, recipe, shape, source, root, n_workers, chunk,
                   time.perf_counter() - started, collect_warnings(final), regions)


def _finish(out: Path, df: pd.DataFrame, finding_names: list[str], keep: np.ndarray, failures: list[dict],
            recipe: dict[str, Any], shape: tuple[int, int, int], source: str | None, root: Path | None,
            workers: int, chunk: int, seconds: float, warned: list[dict] | None = None,
            regions: tuple = (None, {})) -> dict[str, Any]:
    """images.u8 is written: add index.parquet (and the regions), then manifest.json (last: the cache
    is complete)."""
    cache_index = df.loc[keep].copy()
    cache_index["cache_row"] = np.flatnonzero(keep).astype(np.int64)
    cache_index = cache_index.reset_index(drop=True)
    _fsync_file(out / IMAGES_FILE)
    write_index(cache_index, out / INDEX_FILE, finding_names)
    if regions[0] is not None:
        write_cache_regions(out, regions[0], regions[2], recipe, regions[1])
    manifest = _manifest(recipe, shape, df, cache_index, failures, finding_names, source, root, workers,
                         chunk, seconds)
    manifest["warnings"] = list(warned or [])
    atomic_write_json(out / MANIFEST_FILE, manifest)  # last: from here on the cache is complete
    remove_build_files(out / BUILD_DIR)
    return manifest


def write_cache(out: str | os.PathLike, images: np.ndarray, index: pd.DataFrame,
                findings: list[str] | None = None, *, resize: str = "stretch",
                equalize: bool = True, resample: str = "area", regions: pd.DataFrame | None = None,
                source_shapes: np.ndarray | None = None) -> dict[str, Any]:
    """Store preprocessed images as a complete cache; returns the manifest.

    ``images`` is uint8 ``[N, S, S]`` (row i = index row i), ``index`` a Contract-2 frame (finding
    columns as for :func:`prepare_cache`); ``resize``/``equalize`` describe how the pixels were made.
    ``regions`` (image pixels) go into the cache with ``source_shapes``, the ``(N, 2)`` original
    ``(H, W)`` of the images. ``out`` must be new or empty. The files are the ones
    :func:`prepare_cache` writes.
    """
    import time

    started = time.perf_counter()
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise InputError(f"images must be uint8 [N, S, S], got {images.dtype} {list(images.shape)}",
                         where="write_cache", fix="preprocess the images to square uint8 first")
    df, finding_names, source = _load_index(index, findings)
    if len(df) != len(images):
        raise InputError(f"{len(images)} images for {len(df)} index rows", where="write_cache",
                         fix="give one image per index row")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError("the folder is not empty", where=str(out), fix="choose a new or empty folder")
    out.mkdir(parents=True, exist_ok=True)
    size = int(images.shape[1])
    recipe = {"size": size, "resize": resize, "equalize": bool(equalize), "resample": resample,
              "index_hash": index_hash(df, finding_names), "preprocess_version": PREPROCESS_VERSION}
    np.ascontiguousarray(images).tofile(out / IMAGES_FILE)
    keep = np.ones(len(df), dtype=bool)
    carried: tuple = (None, {})
    if regions is not None:
        shapes = np.asarray(source_shapes) if source_shapes is not None else None
        if shapes is None or shapes.shape != (len(df), 2):
            raise InputError("regions need the original (H, W) of every image", where="write_cache",
                             fix="pass source_shapes, an (N, 2) array")
        carried = (*regions_of(df, regions),
                   {i: (int(h), int(w))
                    for i, (h, w) in zip(df["image_id"].astype(str), shapes, strict=True)})
    return _finish(out, df, finding_names, keep, [], recipe, tuple(images.shape), source, None, 1, len(df),
                   time.perf_counter() - started, regions=carried)


def index_hash(df: pd.DataFrame, findings: list[str]) -> str:
    """Content hash of an index: column names, finding list and every value (row order matters)."""
    frame = df.copy()
    for f in findings:
        frame[f] = frame[f].astype(np.float32)
    h = hashlib.sha256(json.dumps([list(map(str, frame.columns)), list(findings)]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _identity(recipe: dict[str, Any]) -> str:
    """What makes two recipes the same cache. A recipe without a resampler was made with the legacy
    one (Pillow BOX): naming it ``pil-box`` gives the same identity, so such caches stay valid."""
    from cxrbench.cache.preprocess import LEGACY_RESAMPLER

    same = {k: v for k, v in recipe.items() if not (k == "resample" and v == LEGACY_RESAMPLER)}
    return stable_hash(same)


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or int(workers) < 1:
        raise InputError(f"{spell('--workers')}={workers!r} is not a positive number", where="prepare",
                         fix="use 1 or more worker processes (default: all cores)")
    return int(workers)


def _default_chunk(n: int, workers: int) -> int:
    # ~8 chunks per worker for load balance, bounded so a kill loses little and records stay few
    return int(min(256, max(4, -(-n // (workers * 8)))))


def _load_index(index, findings: list[str] | None) -> tuple[pd.DataFrame, list[str], str | None]:
    from cxrbench.index.findings import is_canonical
    from cxrbench.index.schema import validate_index

    if isinstance(index, pd.DataFrame):
        df, source = index, None
        names = findings if findings is not None else df.attrs.get("findings")
        if names is None:
            names = [c for c in df.columns if is_canonical(c)]  # incl. _left/_right variants
        names = list(names)
    else:
        df, names = read_index(index)
        source = str(index)
        if findings is not None:
            names = list(findings)
    where = source or "index"
    if len(df) == 0:
        raise InputError("the index has no rows", where=where, fix="check the index (and its filters)")
    df = df.drop(columns=["cache_row"], errors="ignore").reset_index(drop=True)
    validate_index(df, names, where=where)
    return df, names, source


@contextlib.contextmanager
def _build_lock(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out`` for the whole build: a second `prepare` into it is refused."""
    try:
        with file_lock(out / LOCK_FILE, wait=False):
            yield
    except BlockingIOError:
        raise InputError("another `cxrbench prepare` is building this cache right now", where=str(out),
                         fix=f"wait for it to finish, or choose another {spell('--out')}") from None
    finally:
        if (out / MANIFEST_FILE).exists():
            (out / LOCK_FILE).unlink(missing_ok=True)


def _prepare_out_dir(out: Path, recipe: dict[str, Any], identity: str,
                     overwrite: bool) -> dict[str, Any] | None:
    """Returns the manifest when ``out`` already holds this cache; clears or refuses otherwise."""
    manifest_path, build = out / MANIFEST_FILE, out / BUILD_DIR
    existing: dict[str, Any] | None = None
    if manifest_path.exists():
        existing = read_json(manifest_path)
        if not isinstance(existing, dict) or existing.get("format") != CACHE_FORMAT:
            raise InputError(f"{spell('--out')} holds a {MANIFEST_FILE} that is not a cxrbench cache "
                             "manifest, so its files are not cxrbench's to replace", where=str(out),
                             fix="choose a new or empty directory for the cache")
        if _identity(existing.get("recipe", {})) == identity:
            return existing
        found = existing.get("recipe", {})
    elif (build / "state.json").exists():
        state = read_json(build / "state.json")
        if not isinstance(state, dict) or "identity" not in state:
            raise InputError(f"{spell('--out')} holds a {BUILD_DIR}/state.json that cxrbench did not write",
                             where=str(out), fix="choose a new or empty directory for the cache")
        if state.get("identity") == identity:
            return None  # an unfinished build of this recipe: resume it
        found = state.get("recipe", {})
    elif any(p.name != LOCK_FILE for p in out.iterdir()):
        raise InputError(f"{spell('--out')} is not empty and is not a cxrbench cache", where=str(out),
                         fix="choose a new or empty directory for the cache")
    else:
        return None
    if not overwrite:
        what = "a cache" if existing is not None else "an unfinished build"
        raise InputError(f"it holds {what} with a different recipe ({_describe(found)}) than "
                         f"requested ({_describe(recipe)})", where=str(out),
                         fix=f"choose another {spell('--out')}, or pass {spell('--overwrite')} "
                             "to rebuild it")
    for name in (MANIFEST_FILE, INDEX_FILE, IMAGES_FILE, REGIONS_FILE):  # manifest first: incomplete now
        (out / name).unlink(missing_ok=True)
    remove_build_files(build)
    return None


def remove_build_files(build: Path) -> None:
    """Delete the files a build writes under ``.build/`` (state, chunk records, failure list, their
    atomic-write temporaries) and the folders left empty; anything else stays."""
    if not build.is_dir():
        return
    ours = [build / "state.json", build / "failures.json", *(build / "chunks").glob("*.json")]
    ours += [p for p in build.rglob(".*.tmp")]
    for p in ours:
        p.unlink(missing_ok=True)
    for sub in (build / "chunks", build):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()


def _describe(recipe: dict[str, Any]) -> str:
    if not recipe:
        return "unknown"
    return (f"size={recipe.get('size')}, resize={recipe.get('resize')}, equalize={recipe.get('equalize')}, "
            f"resample={recipe.get('resample', 'pil-box (legacy)')}, "
            f"index {recipe.get('index_hash')}, preprocessing v{recipe.get('preprocess_version')}")


def _load_or_create_state(build: Path, recipe: dict[str, Any], identity: str, shape: tuple[int, int, int],
                          chunk: int) -> dict[str, Any]:
    state_path = build / "state.json"
    if state_path.exists():
        state = read_json(state_path)
        if state.get("identity") == identity and list(state.get("shape", [])) == list(shape):
            return state
        remove_build_files(build)
    (build / "chunks").mkdir(parents=True, exist_ok=True)
    state = {"identity": identity, "recipe": recipe, "shape": list(shape), "chunk_size": int(chunk)}
    atomic_write_json(state_path, state)
    return state


def _preallocate(path: Path, n_bytes: int) -> None:
    if path.exists() and path.stat().st_size == n_bytes:
        return
    with open(path, "wb") as f:  # sparse: untouched slots cost no disk
        f.truncate(n_bytes)












def _fail_with(failures: list[dict[str, Any]], build: Path) -> None:
    listing = build / "failures.json"
    atomic_write_json(listing, failures)
    named = "; ".join(f"{f['path']} ({f['reason']})" for f in failures[:_MESSAGE_FAILURES])
    more = len(failures) - _MESSAGE_FAILURES
    if more > 0:
        named += f"; and {more} more (all listed in {listing})"
    raise InputError(f"{len(failures)} image(s) could not be read, so no cache was completed: {named}",
                     where=str(build.parent),
                     fix="fix or remove those files and rerun (finished images are kept), "
                         f"or pass {spell('--skip-bad')} to leave them out (they are listed in "
                         "the manifest)")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest(recipe, shape, df, cache_index, failures, findings, source, root, workers, chunk,
              seconds) -> dict[str, Any]:
    from cxrbench import __version__
    from cxrbench.common.provenance import now_iso, provenance

    splits = cache_index["split"].astype(str).value_counts().sort_index()
    return {
        "format": CACHE_FORMAT,
        "format_version": CACHE_FORMAT_VERSION,
        "recipe": recipe,
        "shape": list(shape),
        "dtype": "uint8",
        "order": "C",
        "counts": {"index_rows": int(len(df)), "images": int(len(cache_index)), "failed": len(failures),
                   "by_split": {str(k): int(v) for k, v in splits.items()}},
        "failures": [{k: f[k] for k in ("image_id", "path", "reason")} for f in failures],
        "findings": list(findings),
        "source": {"index": source, "root": str(Path(root).resolve()) if root is not None else None},
        "build": {"workers": workers, "chunk_size": chunk, "seconds": round(seconds, 3),
                  "images_per_second": round(len(cache_index) / seconds, 2) if seconds > 0 else None},
        "decoders": decoder_versions(),
        "version": __version__,
        "created": now_iso(),
        "provenance": provenance(),
    }


def decoder_versions() -> dict[str, str | None]:
    """Versions of the libraries that decode and resample the pixels (so a cache can be remade)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("pillow", "pydicom", "pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg",
                 "opencv-python-headless", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        from cxrbench.common.progress import console

        console.print(message)


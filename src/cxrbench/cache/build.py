"""Building a cache (Contract 3): :func:`prepare_cache` decodes, preprocesses and stores every image
of an index once, in parallel and resumably; :func:`write_cache` stores images already in memory
(tests, synthetic data) through the same final step, so both make the same files.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.cache.read import CACHE_FORMAT, CACHE_FORMAT_VERSION
from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, file_lock, read_json
from cxrbench.common.layout import CACHE_BUILD_DIR as BUILD_DIR
from cxrbench.common.layout import CACHE_IMAGES as IMAGES_FILE
from cxrbench.common.layout import CACHE_INDEX as INDEX_FILE
from cxrbench.common.layout import CACHE_LOCK as LOCK_FILE
from cxrbench.common.layout import CACHE_MANIFEST as MANIFEST_FILE
from cxrbench.common.provenance import stable_hash
from cxrbench.index.schema import read_index, write_index

# =====================================================================================================
# Building a cache
# =====================================================================================================
PREPROCESS_VERSION = 1  # bump when imageio/preprocess change the pixels a recipe produces


_MESSAGE_FAILURES = 50  # failures named in the error line; all of them go to .build/failures.json


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
) -> dict[str, Any]:
    """Decode, preprocess and store every image of ``index`` once; returns the manifest.

    Args:
        index: a Contract-2 index file (read with ``schema.read_index``) or DataFrame. For a
            DataFrame the finding columns are ``findings``, else ``df.attrs["findings"]``, else its
            columns that are canonical finding names.
        root: the dataset root the index's ``path`` column is relative to.
        out: the cache directory (new, empty, or a cache/unfinished build of the same recipe).
        size, resize, equalize: the recipe (see :func:`cxrbench.preprocess.preprocess`).
        workers: processes (default: all cores); each writes its chunk straight into images.u8.
        skip_bad: drop unreadable images (listed in the manifest) instead of failing at the end.
        quiet: no progress bar or messages.
        overwrite: replace an existing cache or unfinished build that has a different recipe (the
            same recipe is never rebuilt: it is up to date or resumed; delete ``out`` to force).
        chunk_size: rows per work unit and resume granularity (default from N and workers).

    Resumable: chunks finished before a kill are not redone. Idempotent: the same recipe and
    index into a complete cache does nothing. Raises InputError for bad arguments, a different
    recipe in ``out`` (without ``overwrite``) and, unless ``skip_bad``, any unreadable image (all
    named, after every other image was processed; no manifest is written then).
    """
    import time

    from cxrbench.cache.preprocess import RESIZE_MODES, _check_size
    from cxrbench.common.validation import check_choice

    started = time.perf_counter()
    check_choice("--resize", resize, RESIZE_MODES)
    size = _check_size(size)
    n_workers = _resolve_workers(workers)
    root = Path(root)
    out = Path(out)
    df, finding_names, source = _load_index(index, findings)
    if not root.is_dir():
        raise InputError("dataset root is not a directory", where=str(root),
                         fix="pass the folder the index's paths are relative to as --root")
    recipe = {"size": size, "resize": resize, "equalize": bool(equalize),
              "index_hash": index_hash(df, finding_names), "preprocess_version": PREPROCESS_VERSION}
    identity = _identity(recipe)
    n = len(df)
    shape = (n, size, size)

    if out.exists() and not out.is_dir():
        raise InputError("--out exists and is not a directory", where=str(out), fix="choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with _build_lock(out):
        up_to_date = _prepare_out_dir(out, recipe, identity, overwrite)
        if up_to_date is not None:
            _say(f"nothing to do: {out} is up to date (same recipe and index)", quiet)
            return up_to_date
        return _build(df, finding_names, source, root, out, recipe, identity, shape, n_workers,
                      skip_bad, quiet, chunk_size, started)


def _build(df, finding_names, source, root, out, recipe, identity, shape, n_workers, skip_bad, quiet,
           chunk_size, started) -> dict[str, Any]:
    import time

    n = shape[0]
    build = out / BUILD_DIR
    state = _load_or_create_state(build, recipe, identity, shape, chunk_size or _default_chunk(n, n_workers))
    chunk = int(state["chunk_size"])
    _preallocate(out / IMAGES_FILE, int(np.prod(shape)))

    records = _read_chunk_records(build)
    jobs = _pending_jobs(df, n, chunk, records)
    done_rows = n - sum(len(job["rows"]) for job in jobs)
    if records and jobs:
        _say(f"resuming {out}: {done_rows} of {n} images already done", quiet)

    _run_jobs(jobs, out, root, shape, recipe, n_workers, done_rows, quiet)

    failures = _collect_failures(_read_chunk_records(build))
    if failures and not skip_bad:
        _fail_with(failures, build)
    keep = np.ones(n, dtype=bool)
    keep[[int(f["row"]) for f in failures]] = False
    if not keep.any():
        first = failures[0]
        raise InputError(f"none of the {n} images could be read (the first: {first['path']}: "
                         f"{first['reason']})", where=str(root), fix="check --root and the index's paths")
    return _finish(out, df, finding_names, keep, failures, recipe, shape, source, root, n_workers, chunk,
                   time.perf_counter() - started)


def _finish(out: Path, df: pd.DataFrame, finding_names: list[str], keep: np.ndarray, failures: list[dict],
            recipe: dict[str, Any], shape: tuple[int, int, int], source: str | None, root: Path | None,
            workers: int, chunk: int, seconds: float) -> dict[str, Any]:
    """images.u8 is written: add index.parquet, then manifest.json (last: the cache is complete)."""
    cache_index = df.loc[keep].copy()
    cache_index["cache_row"] = np.flatnonzero(keep).astype(np.int64)
    cache_index = cache_index.reset_index(drop=True)
    _fsync_file(out / IMAGES_FILE)
    write_index(cache_index, out / INDEX_FILE, finding_names)
    manifest = _manifest(recipe, shape, df, cache_index, failures, finding_names, source, root, workers,
                         chunk, seconds)
    atomic_write_json(out / MANIFEST_FILE, manifest)  # last: from here on the cache is complete
    shutil.rmtree(out / BUILD_DIR, ignore_errors=True)
    return manifest


def write_cache(out: str | os.PathLike, images: np.ndarray, index: pd.DataFrame,
                findings: list[str] | None = None, *, resize: str = "stretch",
                equalize: bool = True) -> dict[str, Any]:
    """Store preprocessed images as a complete cache; returns the manifest.

    ``images`` is uint8 ``[N, S, S]`` (row i = index row i), ``index`` a Contract-2 frame (finding
    columns as for :func:`prepare_cache`); ``resize``/``equalize`` describe how the pixels were made.
    ``out`` must be new or empty. The files are the ones :func:`prepare_cache` writes.
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
    recipe = {"size": size, "resize": resize, "equalize": bool(equalize),
              "index_hash": index_hash(df, finding_names), "preprocess_version": PREPROCESS_VERSION}
    np.ascontiguousarray(images).tofile(out / IMAGES_FILE)
    keep = np.ones(len(df), dtype=bool)
    return _finish(out, df, finding_names, keep, [], recipe, tuple(images.shape), source, None, 1, len(df),
                   time.perf_counter() - started)


def index_hash(df: pd.DataFrame, findings: list[str]) -> str:
    """Content hash of an index: column names, finding list and every value (row order matters)."""
    frame = df.copy()
    for f in findings:
        frame[f] = frame[f].astype(np.float32)
    h = hashlib.sha256(json.dumps([list(map(str, frame.columns)), list(findings)]).encode())
    h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _identity(recipe: dict[str, Any]) -> str:
    return stable_hash(recipe)


def _resolve_workers(workers: int | None) -> int:
    if workers is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)
    if isinstance(workers, bool) or int(workers) < 1:
        raise InputError(f"--workers={workers!r} is not a positive number", where="prepare",
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
                         fix="wait for it to finish, or choose another --out") from None
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
        if not isinstance(existing, dict):
            existing = {}
        if _identity(existing.get("recipe", {})) == identity:
            return existing
        found = existing.get("recipe", {})
    elif (build / "state.json").exists():
        state = read_json(build / "state.json")
        if state.get("identity") == identity:
            return None  # an unfinished build of this recipe: resume it
        found = state.get("recipe", {})
    elif any(p.name != LOCK_FILE for p in out.iterdir()):
        raise InputError("--out is not empty and is not a cxrbench cache", where=str(out),
                         fix="choose a new or empty directory for the cache")
    else:
        return None
    if not overwrite:
        what = "a cache" if existing is not None else "an unfinished build"
        raise InputError(f"it holds {what} with a different recipe ({_describe(found)}) than "
                         f"requested ({_describe(recipe)})", where=str(out),
                         fix="choose another --out, or pass --overwrite to rebuild it")
    for name in (MANIFEST_FILE, INDEX_FILE, IMAGES_FILE):  # manifest first: incomplete from now on
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(build, ignore_errors=True)
    return None


def _describe(recipe: dict[str, Any]) -> str:
    if not recipe:
        return "unknown"
    return (f"size={recipe.get('size')}, resize={recipe.get('resize')}, equalize={recipe.get('equalize')}, "
            f"index {recipe.get('index_hash')}, preprocessing v{recipe.get('preprocess_version')}")


def _load_or_create_state(build: Path, recipe: dict[str, Any], identity: str, shape: tuple[int, int, int],
                          chunk: int) -> dict[str, Any]:
    state_path = build / "state.json"
    if state_path.exists():
        state = read_json(state_path)
        if state.get("identity") == identity and list(state.get("shape", [])) == list(shape):
            return state
        shutil.rmtree(build, ignore_errors=True)
    (build / "chunks").mkdir(parents=True, exist_ok=True)
    state = {"identity": identity, "recipe": recipe, "shape": list(shape), "chunk_size": int(chunk)}
    atomic_write_json(state_path, state)
    return state


def _preallocate(path: Path, n_bytes: int) -> None:
    if path.exists() and path.stat().st_size == n_bytes:
        return
    with open(path, "wb") as f:  # sparse: untouched slots cost no disk
        f.truncate(n_bytes)


def _read_chunk_records(build: Path) -> dict[int, dict[str, Any]]:
    records: dict[int, dict[str, Any]] = {}
    for path in sorted((build / "chunks").glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            records[int(rec["chunk"])] = rec
        except (ValueError, KeyError, OSError):
            continue  # a damaged record means the chunk is redone
    return records


def _pending_jobs(df: pd.DataFrame, n: int, chunk: int, records: dict[int, dict[str, Any]]) -> list[dict]:
    """Work units: unfinished chunks in full, finished chunks' failed rows again (files may be fixed)."""
    paths = df["path"].astype(str).to_numpy(dtype=object)
    ids = df["image_id"].astype(str).to_numpy(dtype=object)
    jobs = []
    for cid, start in enumerate(range(0, n, chunk)):
        stop = min(n, start + chunk)
        rec = records.get(cid)
        if rec is None or rec.get("start") != start or rec.get("stop") != stop:
            rows = list(range(start, stop))
        else:
            rows = sorted(int(f["row"]) for f in rec.get("failed", []))
        if rows:
            jobs.append({"chunk": cid, "start": start, "stop": stop, "rows": rows,
                         "paths": [paths[r] for r in rows], "ids": [ids[r] for r in rows]})
    return jobs


def _run_jobs(jobs: list[dict], out: Path, root: Path, shape: tuple[int, int, int], recipe: dict[str, Any],
              n_workers: int, done_rows: int, quiet: bool) -> None:
    from cxrbench.common.progress import make_progress

    args = {"out": str(out), "root": str(root), "shape": shape, "size": recipe["size"],
            "resize": recipe["resize"], "equalize": recipe["equalize"]}
    if n_workers == 1 or len(jobs) <= 1:
        with make_progress(quiet) as progress:
            task = progress.add_task("prepare", total=shape[0], completed=done_rows)
            for job in jobs:
                _build_chunk({**args, **job})
                progress.advance(task, len(job["rows"]))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # fork (Linux): works from scripts and notebooks without a __main__ guard; the workers only use
    # numpy/Pillow/pydicom. The pool forks all its workers at the first submit, before the progress
    # bar starts its thread. Elsewhere spawn.
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(_build_chunk, {**args, **job}): job for job in jobs}
        try:
            with make_progress(quiet) as progress:
                task = progress.add_task("prepare", total=shape[0], completed=done_rows)
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        fut.result()  # re-raise an internal failure of a worker
                        progress.advance(task, len(futures[fut]["rows"]))
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _build_chunk(job: dict[str, Any]) -> int:
    """Worker: decode + preprocess the job's rows into images.u8 (opened r+), then record the chunk."""
    from cxrbench.cache.decode import read_image
    from cxrbench.cache.preprocess import preprocess
    from cxrbench.common.fileio import resolve_inside

    out = Path(job["out"])
    images = np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="r+", shape=tuple(job["shape"]))
    failed = []
    for row, rel, image_id in zip(job["rows"], job["paths"], job["ids"], strict=True):
        try:
            full = resolve_inside(job["root"], rel, where=f"index row {row}")
            images[row] = preprocess(read_image(full), job["size"], job["resize"], job["equalize"])
        except InputError as e:
            failed.append({"row": int(row), "image_id": image_id, "path": rel, "reason": e.what})
    images.flush()
    del images
    record = {"chunk": job["chunk"], "start": job["start"], "stop": job["stop"], "failed": failed}
    atomic_write_json(out / BUILD_DIR / "chunks" / f"{job['chunk']:07d}.json", record)
    return len(job["rows"])


def _collect_failures(records: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((f for rec in records.values() for f in rec.get("failed", [])), key=lambda f: f["row"])


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
                         "or pass --skip-bad to leave them out (they are listed in the manifest)")


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
        "version": __version__,
        "created": now_iso(),
        "provenance": provenance(),
    }


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        from cxrbench.common.progress import console

        console.print(message)


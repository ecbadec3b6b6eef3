"""The parallel, resumable work of a cache build: chunks of rows decoded by worker processes
straight into images.u8, each finished chunk recorded under ``.build/chunks/`` (resume after a kill).

One odd file never stops a build: any exception while reading or preprocessing one file becomes a
named entry of the chunk's failure list. Library warnings raised while decoding a file (e.g. Pillow
on corrupt EXIF data) are not printed: they are counted per message in the chunk record and the
manifest (``warnings``), with the files they came from.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json
from cxrbench.common.layout import CACHE_BUILD_DIR as BUILD_DIR
from cxrbench.common.layout import CACHE_IMAGES as IMAGES_FILE

_WARNING_EXAMPLES = 5  # files named per warning message in the manifest


def read_chunk_records(build: Path) -> dict[int, dict[str, Any]]:
    """Finished chunks by number (a damaged record means the chunk is redone)."""
    records: dict[int, dict[str, Any]] = {}
    for path in sorted((build / "chunks").glob("*.json")):
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
            records[int(rec["chunk"])] = rec
        except (ValueError, KeyError, OSError):
            continue
    return records


def pending_jobs(df: pd.DataFrame, n: int, chunk: int, records: dict[int, dict[str, Any]]) -> list[dict]:
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


def run_jobs(jobs: list[dict], out: Path, root: Path, shape: tuple[int, int, int], recipe: dict[str, Any],
             n_workers: int, done_rows: int, quiet: bool) -> None:
    """Run the jobs (in a process pool when there are several workers), with a progress bar."""
    from cxrbench.common.progress import make_progress

    args = {"out": str(out), "root": str(root), "shape": shape, "size": recipe["size"],
            "resize": recipe["resize"], "equalize": recipe["equalize"],
            "resample": recipe.get("resample", "pil-box")}
    if n_workers == 1 or len(jobs) <= 1:
        with make_progress(quiet, lines=True) as progress:
            task = progress.add_task("prepare", total=shape[0], completed=done_rows)
            for job in jobs:
                build_chunk({**args, **job})
                progress.advance(task, len(job["rows"]))
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # fork (Linux): works from scripts and notebooks without a __main__ guard; the workers only use
    # numpy/Pillow/pydicom. The pool forks all its workers at the first submit, before the progress
    # bar starts its thread. Elsewhere spawn.
    context = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=min(n_workers, len(jobs)), mp_context=context) as pool:
        futures = {pool.submit(build_chunk, {**args, **job}): job for job in jobs}
        try:
            with make_progress(quiet, lines=True) as progress:
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


def build_chunk(job: dict[str, Any]) -> int:
    """Worker: decode + preprocess the job's rows into images.u8 (opened r+), then record the chunk."""
    from cxrbench.cache.decode import read_image
    from cxrbench.cache.preprocess import preprocess
    from cxrbench.common.fileio import resolve_inside

    out = Path(job["out"])
    images = np.memmap(out / IMAGES_FILE, dtype=np.uint8, mode="r+", shape=tuple(job["shape"]))
    failed = []
    noted: dict[str, list[str]] = {}
    shapes: dict[str, list[int]] = _earlier_shapes(out, job)  # decoded (H, W) per row: regions need them
    for row, rel, image_id in zip(job["rows"], job["paths"], job["ids"], strict=True):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                full = resolve_inside(job["root"], rel,
                                      where=f"index row {int(row) + 1} (image_id {str(image_id)!r})")
                decoded = read_image(full)
                images[row] = preprocess(decoded, job["size"], job["resize"], job["equalize"],
                                         job["resample"])
                shapes[str(int(row))] = [int(decoded.shape[0]), int(decoded.shape[1])]
            except InputError as e:
                failed.append({"row": int(row), "image_id": image_id, "path": rel, "reason": e.what})
            except Exception as e:
                reason = " ".join(str(e).split())[:300] or type(e).__name__
                failed.append({"row": int(row), "image_id": image_id, "path": rel,
                               "reason": f"unexpected {type(e).__name__} while reading: {reason}"})
        for w in caught:
            noted.setdefault(warning_text(w), []).append(rel)
    images.flush()
    del images
    record = {"chunk": job["chunk"], "start": job["start"], "stop": job["stop"], "failed": failed,
              "warnings": {msg: files for msg, files in noted.items()}, "shapes": shapes}
    atomic_write_json(out / BUILD_DIR / "chunks" / f"{job['chunk']:07d}.json", record)
    return len(job["rows"])


def _earlier_shapes(out: Path, job: dict[str, Any]) -> dict[str, list[int]]:
    """The shapes an earlier run of this chunk recorded (a retry redoes only its failed rows)."""
    path = out / BUILD_DIR / "chunks" / f"{job['chunk']:07d}.json"
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(rec, dict) or rec.get("start") != job["start"] or rec.get("stop") != job["stop"]:
        return {}
    shapes = rec.get("shapes")
    return dict(shapes) if isinstance(shapes, dict) else {}


def collect_shapes(records: dict[int, dict[str, Any]]) -> dict[int, tuple[int, int]]:
    """Row -> decoded ``(H, W)`` of every image the chunks read (records of older builds have none)."""
    out: dict[int, tuple[int, int]] = {}
    for rec in records.values():
        for row, hw in (rec.get("shapes") or {}).items():
            out[int(row)] = (int(hw[0]), int(hw[1]))
    return out


def warning_text(w: warnings.WarningMessage) -> str:
    """A warning's category and message, without the library's internal file paths and line numbers."""
    text = " ".join(str(w.message).split())
    text = re.sub(r"(/[\w.\-]+)+\.py(:\d+)?", "<library>", text)
    return f"{w.category.__name__}: {text}"[:300]


def collect_failures(records: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every failed row of every chunk, in row order."""
    return sorted((f for rec in records.values() for f in rec.get("failed", [])), key=lambda f: f["row"])


def collect_warnings(records: dict[int, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per distinct warning message: the count of files and a few of them (for the manifest)."""
    merged: dict[str, list[str]] = {}
    for rec in records.values():
        for msg, files in (rec.get("warnings") or {}).items():
            merged.setdefault(msg, []).extend(files)
    return [{"message": msg, "files": len(files), "examples": sorted(files)[:_WARNING_EXAMPLES]}
            for msg, files in sorted(merged.items(), key=lambda kv: -len(kv[1]))]

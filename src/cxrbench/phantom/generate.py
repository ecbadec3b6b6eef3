"""``generate()``: a synthetic dataset laid out like an official release, plus its ground truth."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_write_json, ensure_dir
from cxrbench.common.layout import regions_path
from cxrbench.common.progress import make_progress
from cxrbench.common.validation import check_choice
from cxrbench.index.regions import (
    decode_rle,
    empty_regions,
    encode_rle,
    make_regions,
    mask_box,
    write_regions,
)
from cxrbench.index.schema import validate_index, write_index
from cxrbench.phantom.anatomy import sample_params
from cxrbench.phantom.cohort import check_prevalence, check_views, sample_cohort
from cxrbench.phantom.formats import FORMATS
from cxrbench.phantom.formats.base import MASK_THRESHOLD, REGION_MASKS, PhantomFormat
from cxrbench.phantom.render import BOX_NAMES, render
from cxrbench.phantom.style import SiteStyle, site_style

MARKER_DIR = "_phantom"
TRUTH_FILE = "truth.parquet"
INFO_FILE = "phantom.json"  # the marker: what was generated and every file written


def truth_regions(truth: pd.DataFrame, drawn: dict[str, dict[str, str]], masks_of: dict[str, tuple[str, ...]],
                  size: int) -> pd.DataFrame:
    """One mask region per (image, positive truth finding drawn in a known region)."""
    fields = ("image_id", "finding", "kind", "x0", "y0", "x1", "y1", "mask")
    cols: dict[str, list[Any]] = {k: [] for k in fields}
    findings = [f for f in truth.columns if f in masks_of]
    values = {f: truth[f].to_numpy(dtype=np.float64) for f in findings}
    ids = truth["image_id"].to_numpy(dtype=object)
    for i, image_id in enumerate(ids):
        codes = drawn.get(str(image_id), {})
        for f in findings:
            names = [n for n in masks_of[f] if n in codes]
            if values[f][i] != 1 or not names:
                continue
            if len(names) == 1:
                code = codes[names[0]]
                mask = decode_rle(code, size, size, "phantom")
            else:
                mask = np.logical_or.reduce([decode_rle(codes[n], size, size, "phantom") for n in names])
                code = encode_rle(mask)
            box = mask_box(mask)
            if box is None:
                continue
            for k, v in zip(fields, (ids[i], f, "mask", *box, code), strict=True):
                cols[k].append(v)
    if not cols["image_id"]:
        return empty_regions()
    n = len(cols["image_id"])
    return make_regions(**cols, label=cols["finding"], width=[size] * n, height=[size] * n)


def format_options(fmt: str) -> dict[str, Any]:
    """Option name -> (default, help) of a format: for ``--help`` and error messages."""
    cls = FORMATS[check_choice("--format", fmt, FORMATS)]
    return {o.name: (o.default, o.help) for o in cls.all_options()}


def truth_findings(fmt: str) -> tuple[str, ...]:
    """The finding columns of the truth frame of ``fmt``."""
    return FORMATS[check_choice("--format", fmt, FORMATS)].truth_findings


PENDING_FILE = ".phantom-publish.json"  # the files a publish is moving into place (a kill mid-way)


def phantom_files(out: Path) -> set[str] | None:
    """The files (relative, with ``/``) a previous phantom in ``out`` wrote, from its marker (and a
    publish a kill interrupted); None when ``out`` holds no phantom written by cxrbench."""
    listed: set[str] = set()
    marker = out / MARKER_DIR / INFO_FILE
    found = False
    for record in (marker, out / PENDING_FILE):
        try:
            info = json.loads(record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        files = info.get("files") if isinstance(info, dict) else None
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            listed.update(files)
            found = True
    if not found:
        return None
    return listed | {f"{MARKER_DIR}/{INFO_FILE}", PENDING_FILE}


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``out`` unless ``overwrite`` and every file in it is a previous phantom's
    own (listed in its marker); then remove exactly those files. Nothing else is ever deleted."""
    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a directory", where=str(out), fix="choose a directory path")
    if out.is_dir():
        present = sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                         if not p.is_dir() and not p.relative_to(out).parts[0].startswith(".phantom-"))
        if present and not overwrite:
            raise InputError("output directory is not empty", where=str(out),
                             fix=f"choose an empty or new directory, or pass {spell('--overwrite')} to "
                                 "replace a previous phantom")
        if present:
            ours = phantom_files(out)
            if ours is None:
                raise InputError(f"{spell('--overwrite')} replaces only a phantom dataset cxrbench wrote, "
                                 f"and this folder holds none (no {MARKER_DIR}/{INFO_FILE} listing its "
                                 f"files); it would delete: {_listing(present)}", where=str(out),
                                 fix="choose an empty or new directory")
            foreign = [f for f in present if f not in ours]
            if foreign:
                raise InputError(f"{spell('--overwrite')} would delete files the previous phantom did not "
                                 f"write: {_listing(foreign)}", where=str(out),
                                 fix="move them out, or choose an empty or new directory")
            for rel in present:
                (out / rel).unlink()
            for sub in sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(sub.iterdir()) and not sub.relative_to(out).parts[0].startswith(".phantom-"):
                    sub.rmdir()
    ensure_dir(out)
    for stale in out.glob(".phantom-*"):  # staging folders of interrupted runs (mkdtemp names)
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)


def _listing(names: list[str], limit: int = 10) -> str:
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def generate(
    out: str | os.PathLike,
    fmt: str,
    n_patients: int,
    size: int = 256,
    site: str = "A",
    seed: int = 0,
    **options: Any,
) -> pd.DataFrame:
    """Write a phantom dataset shaped like the official release of ``fmt`` under ``out``.

    Returns the ground truth as a valid Contract-2 index (also written with ``write_index`` to
    ``out/_phantom/truth.parquet``): ``path`` relative to ``out``, ``split`` the official split where
    the format has one, finding columns (float32 0/1) as listed in ``truth_findings(fmt)``.
    Options (see docs/phantom.md): common ``prevalence``, ``views``, ``images_per_patient``,
    ``mild_rate``, ``val_fraction``/``test_fraction`` (where the format has that split), ``batch_size``,
    ``quiet``, ``overwrite``; plus the format's own (``format_options(fmt)``).
    Everything but ``_phantom/phantom.json`` is byte-identical for identical arguments.
    The truth's localization ground truth (every positive finding drawn in a known region: the
    union of its render masks, as masks in the written images' pixels) goes beside it in the regions
    table (``_phantom/truth.regions.parquet``, :mod:`cxrbench.index.regions`).

    Args:
        out: the dataset folder to write (new, empty, or a previous phantom with ``overwrite=True``).
        fmt: the layout to imitate: a name of ``cxrbench.phantom.FORMATS`` (``nih``, ``chexpert``,
            ``mimic``, ``padchest``, ``vindr``, ``vindr-pcxr``, ``rsna``, ``siim``, ``csv``, ...).
        n_patients: number of synthetic patients (each with one or more images).
        size: image side, px (32-4096). site: acquisition site (``A``, ``B``, ``C`` presets: detector,
            processing, collimation). seed: everything is drawn from it.
        options: the options above.

    Returns:
        The ground-truth index (DataFrame) described above; ``build_index(fmt, out)`` reads the
        written files back as a user's dataset would be read.

    Example::

        truth = cxrbench.generate_phantom("data/nih-phantom", "nih", n_patients=200, size=64, seed=0)
        df, findings, _ = cxrbench.build_index("nih", "data/nih-phantom")
    """
    fmt = check_choice(spell("--format", "fmt"), fmt, FORMATS)
    cls = FORMATS[fmt]
    opts = cls.resolve_options(options)
    _check_numbers(n_patients, size, seed)
    style = site_style(site)
    check_prevalence(opts["prevalence"], cls.drawn)  # validate everything before touching the disk
    check_views(opts["views"])
    out = Path(out)
    _prepare_out(out, bool(opts["overwrite"]))
    t0 = time.perf_counter()

    rng_cohort, rng_plan, rng_anat, rng_tables = (
        np.random.default_rng(s) for s in np.random.SeedSequence([int(seed), 0xC4B]).spawn(4)
    )
    writer = cls(opts, int(size), int(seed))
    cohort = sample_cohort(
        int(n_patients),
        rng_cohort,
        prevalence=opts["prevalence"],
        views=opts["views"],
        images_per_patient=float(opts["images_per_patient"]),
        mild_rate=float(opts["mild_rate"]),
        allowed=cls.drawn,
        one_image_per_patient=cls.one_image_per_patient,
        one_image_per_study=cls.one_image_per_study,
    )
    plan = writer.plan(cohort, rng_plan).reset_index(drop=True)
    params = sample_params(plan, rng_anat)

    staging = Path(tempfile.mkdtemp(prefix=".phantom-", dir=out))
    try:
        drawn = _render_images(writer, cls, plan, params, staging, int(size), style, opts, fmt)
        writer.finish(staging, plan, rng_tables)
        truth = writer.truth(plan)
        validate_index(truth, list(cls.truth_findings), where=f"phantom truth ({fmt})")
        (staging / MARKER_DIR).mkdir(exist_ok=True)
        write_index(truth, staging / MARKER_DIR / TRUTH_FILE, list(cls.truth_findings))
        regions = truth_regions(truth, drawn, {**REGION_MASKS, **cls.region_masks}, int(size))
        if len(regions):
            write_regions(regions, regions_path(staging / MARKER_DIR / TRUTH_FILE),
                          {"space": "image", "dataset": fmt, "phantom": True})
        info = {
            "format": fmt,
            "n_patients": int(n_patients),
            "n_images": len(truth),
            "size": int(size),
            "site": style.name,
            "seed": int(seed),
            "options": {k: v for k, v in opts.items() if k not in ("quiet", "overwrite")},
            "findings": list(cls.truth_findings),
            "seconds": round(time.perf_counter() - t0, 3),
        }
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if not p.is_dir())
        info["files"] = [*files, f"{MARKER_DIR}/{INFO_FILE}"]
        (staging / MARKER_DIR / INFO_FILE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        # Publish: record what is about to move (a kill mid-way leaves only files cxrbench can name),
        # move every top-level entry into place, the truth folder last (it marks completion).
        atomic_write_json(out / PENDING_FILE, {"files": info["files"]})
        entries = sorted(staging.iterdir(), key=lambda p: p.name == MARKER_DIR)
        for entry in entries:
            os.replace(entry, out / entry.name)
        (out / PENDING_FILE).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return truth


def _render_images(writer: PhantomFormat, cls: type[PhantomFormat], plan: pd.DataFrame, params: pd.DataFrame,
                   staging: Path, size: int, style: SiteStyle, opts: dict[str, Any],
                   fmt: str) -> dict[str, dict[str, str]]:
    """Render and write every planned image into ``staging`` in batches; returns image id -> mask name
    -> run-length code of its non-empty finding masks (``size`` x ``size`` px), for the truth regions."""
    drawn: dict[str, dict[str, str]] = {}
    records = plan.to_dict("records")
    batch = int(opts["batch_size"])
    with make_progress(bool(opts["quiet"])) as progress:
        task = progress.add_task(f"phantom {fmt}", total=len(plan))
        for start in range(0, len(plan), batch):
            chunk = params.iloc[start : start + batch]
            # masks for the truth regions; boxes from the same masks are those of the box-only path
            got = render(chunk, int(size), style, batch_size=batch, return_masks=True,
                         return_boxes=cls.needs_boxes)
            imgs, masks = got[0], got[1]
            boxes = got[2] if cls.needs_boxes else None
            for j in range(len(chunk)):
                on = {k: masks[k][j] > MASK_THRESHOLD for k in BOX_NAMES}
                codes = {k: encode_rle(m) for k, m in on.items() if m.any()}
                drawn[str(records[start + j]["image_id"])] = codes
                if cls.needs_masks:
                    writer.take_masks(records[start + j], on)
                b: dict[str, tuple[float, float, float, float] | None] | None = None
                if boxes is not None:
                    b = {k: (None if np.isnan(v[j, 0]) else (float(v[j, 0]), float(v[j, 1]), float(v[j, 2]),
                                                             float(v[j, 3])))
                         for k, v in boxes.items()}
                writer.write_image(staging, records[start + j], imgs[j], b)
            progress.advance(task, len(chunk))
    return drawn


def _check_numbers(n_patients: Any, size: Any, seed: Any) -> None:
    """InputError naming the argument (as the caller writes it) unless each is a whole number in range."""
    def whole(v: Any) -> bool:
        return not isinstance(v, bool) and isinstance(v, int | np.integer)

    if not whole(n_patients) or n_patients < 1:
        raise InputError(f"number of patients is {n_patients!r}", where=spell("--patients", "n_patients"),
                         fix="give an integer >= 1")
    if not whole(size) or not 32 <= size <= 4096:
        raise InputError(f"image size is {size!r}", where=spell("--size"),
                         fix="give an integer between 32 and 4096")
    if not whole(seed) or seed < 0:
        raise InputError(f"seed is {seed!r}", where=spell("--seed"), fix="give an integer >= 0")

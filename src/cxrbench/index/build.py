"""``build_index``: official metadata -> a validated Contract-2 index (+ a report beside it).

The index is written with :func:`cxrbench.index.schema.write_index`; the report (source files,
options, dropped rows by reason, unknown terms, label-value counts, split method, image checks,
provenance) goes to ``<index stem>.report.json`` next to it, so ``cxrbench describe`` can show
what was left out and why. Images are never opened; see :mod:`cxrbench.index.sources.base`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.common.errors import InputError, spell, warn
from cxrbench.common.fileio import atomic_write_json, file_sha256
from cxrbench.common.layout import index_report_path, regions_path
from cxrbench.common.provenance import provenance
from cxrbench.index.regions import attach_regions, regions_meta, write_regions
from cxrbench.index.schema import write_index
from cxrbench.index.sources import get_source
from cxrbench.index.sources.base import IndexOptions, finalize, recount_splits
from cxrbench.index.sources.files import check_image_files, found_info, missing_images, scan_images

report_path = index_report_path  # where the report of an index lives (older name)


def build_index(
    dataset: str,
    root: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    options: IndexOptions | None = None,
    quiet: bool = True,
    **option_values: Any,
) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Index ``dataset`` under ``root``, as ``cxrbench index``; reads metadata only, never an image.

    Args:
        dataset: the source: ``nih``, ``chexpert``, ``mimic``, ``padchest``, ``vindr`` or ``csv``
            (your own data, with ``mapping=``).
        root: the dataset folder as released (the index's ``path`` column is relative to it).
        out: where to write the index (``.parquet``, atomically) and its report beside it
            (:func:`cxrbench.common.layout.index_report_path`); None writes nothing.
        options: an :class:`~cxrbench.index.sources.base.IndexOptions`, or instead
        option_values: its fields as keywords (``labels="study-cxr14", uncertain="zeros",
            split_mode="hash", split_seed=0, ...``: the options of ``cxrbench index``).
        quiet: hide the progress bar of the image-file check.

    Returns:
        ``(df, findings, report)``: the Contract-2 index (one row per image: ``image_id``,
        ``patient_id``, ``path``, ``split``, ``view``, ``sex``, ``age``, one float32 column per
        finding coded 1/0/NaN), its finding columns, and the report dict (dropped rows by reason,
        split counts, policies, ``warnings``).

    Example::

        df, findings, report = cxrbench.build_index("nih", "/data/nih", out="nih.parquet",
                                                     labels="study-cxr14")
        df.groupby("split").size()
 Every bad input raises :class:`~cxrbench.common.errors.InputError`; each line of
    ``report["warnings"]`` (thin splits, missing image files, ...) is also issued as a
    :class:`~cxrbench.common.errors.CxrbenchWarning` pointing at the caller's line.
    """
    if options is not None and option_values:
        raise InputError("give either options= or option keywords, not both", where="build_index",
                         fix="put every option into the IndexOptions")
    opts = options.validated() if options is not None else IndexOptions.from_dict(option_values,
                                                                                   where="build_index")
    adapter = get_source(dataset)
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            "dataset root is not a folder", where=str(root), fix="pass the folder holding the release"
        )
    for name, value in ((spell("--labels-file"), opts.labels_file), (spell("--mapping"), opts.mapping),
                        (spell("--demographics"), opts.demographics)):
        if value is not None and not Path(value).is_file():
            raise InputError(f"{name} file not found", where=str(value), fix="check the path")
    data = adapter(root, opts)
    df, findings, report = finalize(data, opts)
    located = df.attrs.pop("image_found", None)  # the adapter listed the image folders already
    if opts.check_files or opts.drop_missing:
        keep, checked = check_image_files(root, df["path"], drop=opts.drop_missing, quiet=quiet,
                                          found=located)
        report["images"] = {**report.get("images", {}), **checked}
        if not keep.all():
            report.setdefault("dropped", {})["missing_images"] = int((~keep).sum())
            df = df.loc[keep].reset_index(drop=True)
            if df.empty:
                raise InputError(f"no image file found under {spell('--root')}", where=str(root),
                                 fix=f"check {spell('--root')}")
            # the split counts and the warnings that quote them: of the index written, after the drop
            recount_splits(df, findings, opts, report, str(root))
    else:  # the fast check, on by default: missing images are found now, not after minutes of decoding
        found, checked = scan_images(root, df["path"]) if located is None else found_info(df["path"], located)
        report["images"] = {**report.get("images", {}), **checked}
        if found is not None and not found.all():
            what, fix = missing_images(int((~found).sum()), len(df), root, checked)
            report.setdefault("warnings", []).append(f"{what}; {fix}")
    regions, report_regions = attach_regions(data.regions, df, where=", ".join(
        str(p) for p in report.get("files", {}).values()) or data.dataset)
    if report_regions:
        report["regions"] = report_regions
    report = {
        "dataset": data.dataset,
        "root": str(root),
        "images_indexed": len(df),
        "patients_indexed": int(df["patient_id"].nunique()),
        "options": opts.report(),
        **report,
    }
    if out is not None:
        write_index(df, out, findings)
        report["index_sha256"] = file_sha256(out)
        report["provenance"] = provenance()
        _write_regions(regions, out, data.dataset, report)
        atomic_write_json(index_report_path(out), report)
    for line in report.get("warnings", []):  # also in the report; as warnings a notebook can filter
        warn(line)
    return df, findings, report


def _write_regions(regions: pd.DataFrame, out: str | os.PathLike, dataset: str,
                   report: dict[str, Any]) -> None:
    """The regions beside the index (``X.regions.parquet``), tied to it by its hash; an earlier regions
    file cxrbench wrote there is removed when this index has none (it described another index)."""
    path = regions_path(out)
    if len(regions):
        write_regions(regions, path, {"space": "image", "dataset": dataset,
                                      "index_sha256": report["index_sha256"]})
        report["regions"]["file"] = str(path)
    elif path.is_file() and regions_meta(path) is not None:
        path.unlink()

"""``build_index``: official metadata -> a validated Contract-2 index (+ a report beside it).

The index is written with :func:`cxrbench.schema.write_index`; the report (source files, options,
dropped rows by reason, unknown terms, label-value counts, split method, image checks,
provenance) goes to ``<index stem>.report.json`` next to it, so ``cxrbench describe`` can show
what was left out and why. Images are never opened; see :mod:`cxrbench.sources.base`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.errors import InputError
from cxrbench.fileio import atomic_write_json, file_sha256
from cxrbench.provenance import provenance
from cxrbench.schema import write_index
from cxrbench.sources import get_source
from cxrbench.sources.base import IndexOptions, check_image_files, finalize
from cxrbench.splits import DEFAULT_FRACTIONS, parse_fractions


def report_path(index_path: str | os.PathLike) -> Path:
    """``foo/bar.parquet`` -> ``foo/bar.report.json`` (where the index's report lives)."""
    p = Path(index_path)
    return p.with_name(p.name.removesuffix(".parquet") + ".report.json")


def build_index(
    dataset: str,
    root: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    labels: str = "all",
    uncertain: str = "zeros",
    blank: str = "zeros",
    views: str = "frontal",
    split_mode: str = "official",
    split_seed: int = 0,
    split_fractions: str | Sequence[float] = DEFAULT_FRACTIONS,
    readers: str = "majority",
    labeler: str = "chexpert",
    radiologist_test: bool = False,
    labels_file: str | os.PathLike | None = None,
    mapping: str | os.PathLike | None = None,
    check_files: bool = False,
    drop_missing: bool = False,
    quiet: bool = True,
) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Index ``dataset`` under ``root``; returns (index frame, finding columns, report).

    With ``out`` the index is written there (atomically) and the report to
    :func:`report_path` ``(out)``. Options mirror ``cxrbench index`` (see its ``--help``); ``quiet``
    hides the progress bar of ``check_files``/``drop_missing``.
    Every bad input raises :class:`~cxrbench.errors.InputError`.
    """
    adapter = get_source(dataset)
    root = Path(root)
    if not root.is_dir():
        raise InputError(
            "dataset root is not a folder", where=str(root), fix="pass the folder holding the release"
        )
    if isinstance(split_seed, bool) or not str(split_seed).lstrip("-").isdigit():
        raise InputError(f"--split-seed got {split_seed!r}", fix="give an integer")
    for name, value in (("--labels-file", labels_file), ("--mapping", mapping)):
        if value is not None and not Path(value).is_file():
            raise InputError(f"{name} file not found", where=str(value), fix="check the path")
    opts = IndexOptions(
        labels=labels,
        uncertain=uncertain,
        blank=blank,
        views=views,
        split_mode=split_mode,
        split_seed=int(split_seed),
        split_fractions=parse_fractions(split_fractions),
        readers=readers,
        labeler=labeler,
        radiologist_test=radiologist_test,
        labels_file=Path(labels_file) if labels_file is not None else None,
        mapping=Path(mapping) if mapping is not None else None,
        check_files=check_files,
        drop_missing=drop_missing,
    ).validated()
    data = adapter(root, opts)
    df, findings, report = finalize(data, opts)
    if check_files or drop_missing:
        keep, checked = check_image_files(root, df["path"], drop=drop_missing, quiet=quiet)
        report["images"] = {**report.get("images", {}), **checked}
        if not keep.all():
            df = df.loc[keep].reset_index(drop=True)
            if df.empty:
                raise InputError("no image file found under --root", where=str(root), fix="check --root")
    report = {
        "dataset": data.dataset,
        "root": str(root),
        "images_indexed": len(df),
        "patients_indexed": int(df["patient_id"].nunique()),
        "options": {
            "labels": labels,
            "uncertain": uncertain,
            "blank": blank,
            "views": views,
            "split_mode": split_mode,
            "split_seed": int(split_seed),
            "split_fractions": list(opts.split_fractions),
            "readers": readers,
            "labeler": labeler,
            "radiologist_test": radiologist_test,
            "check_files": check_files,
            "drop_missing": drop_missing,
            "labels_file": str(labels_file) if labels_file is not None else None,
            "mapping": str(mapping) if mapping is not None else None,
        },
        **report,
    }
    if out is not None:
        write_index(df, out, findings)
        report["index_sha256"] = file_sha256(out)
        report["provenance"] = provenance()
        atomic_write_json(report_path(out), report)
    return df, findings, report

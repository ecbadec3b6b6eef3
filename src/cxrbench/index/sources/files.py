"""Where the images of an index are: relative paths cleaned and kept inside the root, image
folders located once per folder (``os.scandir``), missing files counted or dropped."""


from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.sources.tables import at_row


def clean_relative_paths(paths: pd.Series, where: str, column: str = "path") -> pd.Series:
    """Normalize relative paths (``\\`` -> ``/``, ``./`` removed); refuse absolute or escaping ones."""
    paths = paths.astype(str).str.replace("\\", "/", regex=False)
    norm = (
        pd.Series([posixpath.normpath(p) for p in paths], index=paths.index, dtype=str)
        if paths.str.contains(r"(?:^|/)\.{1,2}(?:/|$)|//", regex=True).any()
        else paths
    )
    bad = (
        norm.str.startswith("/")
        | (norm == "..")
        | norm.str.startswith("../")
        | norm.str.match(r"^[A-Za-z]:/")
    ).to_numpy()
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        label = paths.index[pos]
        row = int(label) if isinstance(label, int | np.integer) else pos  # the row as read from the file
        raise InputError(
            f"path {paths.iloc[pos]!r} in column {column!r} is absolute or escapes the dataset root",
            where=at_row(where, row),
            fix="paths must be relative to --root, without '..'",
        )
    return norm


def locate_images(
    root: Path, names: pd.Series, default: pd.Series, patterns: Sequence[str], by_stem: bool = False
) -> tuple[pd.Series, dict[str, Any]]:
    """Relative paths of images named ``names``, found by listing the folders matching
    ``patterns`` (globs relative to ``root``; ``"."`` = root itself), one ``scandir`` per folder.

    Nothing is opened or stat'ed per file. When none of the folders holds a file, the images are
    taken as absent and ``default`` (the official layout) is used. ``by_stem`` matches names
    without extension (VinDr ids against ``.dicom``/``.dcm``/``.png`` files).
    """
    found: dict[str, str] = {}
    folders = 0
    for pattern in patterns:
        if pattern == ".":
            dirs = [root]
        elif any(c in pattern for c in "*?["):
            dirs = sorted(p for p in root.glob(pattern) if p.is_dir())
        else:  # a plain name: one stat instead of a listing of root
            dirs = [root / pattern] if (root / pattern).is_dir() else []
        for d in dirs:
            if d != root and not d.resolve().is_relative_to(root.resolve()):
                raise InputError(f"image folder {pattern!r} is outside the dataset root", where=str(root),
                                 fix="folder names in the metadata must stay inside --root")
            rel = "" if d == root else d.relative_to(root).as_posix() + "/"
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            n = 0
            for e in entries:
                if e.is_file():
                    key = e.name.rsplit(".", 1)[0] if by_stem else e.name
                    found.setdefault(key, rel + e.name)
                    n += 1
            folders += n > 0
    if not found:
        return default, {
            "located": False,
            "found": 0,
            "missing": None,
            "note": "no images found under --root; paths follow the official layout",
        }
    keys = names.str.rsplit(".", n=1).str[0] if by_stem and not names.empty else names
    hit = keys.map(found)
    n_found = int(hit.notna().sum())
    if n_found == 0:
        return default, {
            "located": False,
            "found": 0,
            "missing": None,
            "note": "no images found under --root; paths follow the official layout",
        }
    paths = hit.where(hit.notna(), default).astype(str)
    missing = int(len(names) - n_found)
    return paths, {"located": True, "found": n_found, "missing": missing, "folders": folders}


def check_image_files(
    root: Path, paths: pd.Series, drop: bool, quiet: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stat every image (``--check-files``/``--drop-missing``); returns (keep mask, info).

    With ``drop`` missing images are dropped (counted); otherwise the first missing image is an
    InputError. Each path goes through :func:`cxrbench.fileio.resolve_inside`.
    """
    from cxrbench.common.fileio import resolve_inside
    from cxrbench.common.progress import track

    items = track(paths, total=len(paths), description="checking images", quiet=quiet)
    exists = np.fromiter(
        (resolve_inside(root, p, where="index path").is_file() for p in items), dtype=bool, count=len(paths)
    )
    missing = int((~exists).sum())
    if missing and not drop:
        first = paths.iloc[int(np.flatnonzero(~exists)[0])]
        raise InputError(
            f"{missing} image file(s) missing under {root}, first {first!r}",
            where="--check-files",
            fix="complete the download, fix --root, or pass --drop-missing",
        )
    return exists, {"checked": True, "missing": missing, "dropped": missing if drop else 0}


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

from cxrbench.common.errors import InputError, spell
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
            fix=f"paths must be relative to {spell('--root')}, without '..'",
        )
    return norm


def locate_images(
    root: Path, names: pd.Series, default: pd.Series, patterns: Sequence[str], by_stem: bool = False
) -> tuple[pd.Series, dict[str, Any], np.ndarray | None]:
    """Relative paths of images named ``names``, found by listing the folders matching
    ``patterns`` (globs relative to ``root``; ``"."`` = root itself), one ``scandir`` per folder.

    Nothing is opened or stat'ed per file. When none of the folders holds a file, the images are
    taken as absent and ``default`` (the official layout) is used. ``by_stem`` matches names
    without extension (VinDr ids against ``.dicom``/``.dcm``/``.png`` files). The third value is
    the found mask (None when nothing was located): the existence check needs no second listing.
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
                                 fix=f"folder names in the metadata must stay inside {spell('--root')}")
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
    absent = {"located": False, "found": 0, "missing": None,
              "note": "no images found under --root; paths follow the official layout"}
    if not found:
        return default, absent, None
    keys = names.str.rsplit(".", n=1).str[0] if by_stem and not names.empty else names
    hit = keys.map(found)
    mask = hit.notna().to_numpy()
    n_found = int(mask.sum())
    if n_found == 0:
        return default, absent, None
    paths = hit.where(hit.notna(), default).astype(str)
    missing = int(len(names) - n_found)
    return paths, {"located": True, "found": n_found, "missing": missing, "folders": folders}, mask


def scan_images(root: Path, paths: pd.Series) -> tuple[np.ndarray | None, dict[str, Any]]:
    """Which listed images exist, with one directory listing per folder (never a ``stat`` per file).

    Returns ``(exists mask, info)``; the mask is None when no image folder exists under ``root`` at
    all (a metadata-only copy of a release: nothing to check). A folder whose top-level folder is
    not in ``root`` is never listed, so a missing release tree costs one system call. A name in a
    listing counts as present (a folder named like an image is named by ``prepare`` instead).
    """
    base = os.fspath(root)
    try:
        top = set(os.listdir(base))
    except OSError:
        return None, {"checked": False, "note": "--root cannot be listed: image files not checked"}
    import pyarrow as pa
    import pyarrow.compute as pc

    text = paths.astype(str)
    heads = pc.unique(pc.list_element(pc.split_pattern(pa.array(text), "/", max_splits=1), 0)).to_pylist()
    if not top.intersection(heads):  # a metadata-only copy of a release: nothing to check
        return None, {"checked": False, "note": "no image folder under --root: image files not checked"}
    rel = text.tolist()
    split = [p.rpartition("/") for p in rel]
    folders = [d for d in dict.fromkeys(s[0] for s in split) if d and d.partition("/")[0] in top]
    listing: dict[str, set[str] | None] = {"": top, **_list_folders(base, folders)}
    listed = sum(v is not None for k, v in listing.items() if k)
    if not listed and not any(not s[0] for s in split):
        return None, {"checked": False, "note": "no image folder under --root: image files not checked"}
    found = np.fromiter(((listing.get(d) is not None and name in listing[d]) for d, _, name in split),
                        dtype=bool, count=len(split))
    return found_info(paths, found, root, folders_listed=listed)


def found_info(paths: pd.Series, found: np.ndarray, root: Path | None = None,
               **extra: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """``(found, info)``: the missing count, a few examples and, under ``root``, a sub-folder that
    holds them (a ``path_prefix`` to suggest)."""
    info: dict[str, Any] = {"checked": True, **extra, "missing": int((~found).sum())}
    if info["missing"]:
        miss = paths.astype(str).to_numpy()[np.flatnonzero(~found)[:20]].tolist()
        info["examples"] = miss[:5]
        prefix = _common_prefix(root, miss) if root is not None else None
        if prefix:
            info["prefix_hint"] = prefix
    return found, info


def _list_folders(base: str, folders: list[str]) -> dict[str, set[str] | None]:
    """``{folder: names in it, or None}``: one ``listdir`` per folder (threads were tried: building
    the name sets holds the GIL, and CheXpert's 187,641 folders took 8x longer)."""
    out: dict[str, set[str] | None] = {}
    for d in folders:
        try:
            out[d] = set(os.listdir(os.path.join(base, d)))
        except OSError:  # missing, or not a folder
            out[d] = None
    return out


def _common_prefix(root: Path, missing: list[str]) -> str | None:
    """A sub-folder of ``root`` under which the missing files exist (a ``path_prefix`` to suggest)."""
    try:
        subdirs = [e.name for e in os.scandir(root) if e.is_dir()]
    except OSError:
        return None
    for name in sorted(subdirs)[:200]:
        if missing and all((root / name / m).is_file() for m in missing[:5]):
            return name + "/"
    return None


def missing_images(n_missing: int, n_total: int, root: Path, info: dict[str, Any]) -> tuple[str, str]:
    """(what, fix) for missing image files: the count, a few examples, and the fix."""
    ex = ", ".join(info.get("examples", [])[:3])
    what = (f"{n_missing:,} of {n_total:,} image files listed in the metadata are missing under {root} "
            f"(e.g. {ex})")
    hint = info.get("prefix_hint")
    if hint:
        there = root / hint.rstrip("/")
        fix = (f"they exist under {hint}: use {spell(f'--root {there}', f'root={str(there)!r}')} (or "
               f"path_prefix: {hint} in a csv mapping)")
    else:
        fix = (f"complete the download or fix {spell('--root')}, or pass "
               f"{spell('--drop-missing')} to leave them out")
    return what, fix


def check_image_files(
    root: Path, paths: pd.Series, drop: bool, quiet: bool = True, found: np.ndarray | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Every image file listed must exist (``--check-files``) or is dropped (``--drop-missing``);
    returns (keep mask, info). One listing per folder (:func:`scan_images`), or none when the
    adapter's ``found`` mask is given."""
    found, info = scan_images(root, paths) if found is None else found_info(paths, found, root)
    if found is None:
        found = np.zeros(len(paths), dtype=bool)
        info = {"checked": True, "missing": len(paths), "examples": paths.astype(str).head(5).tolist()}
    missing = int((~found).sum())
    if missing and not drop:
        what, fix = missing_images(missing, len(paths), root, info)
        raise InputError(what, where=spell("--check-files"), fix=fix)
    return found, {**info, "dropped": missing if drop else 0}

"""The export folder: written atomically, and never a file the export did not write.

``OUT/.cxrbench-export.json`` lists every file an export wrote with its SHA-256. A new export may
replace those (when they are unchanged since); any other file in OUT, or one of ours edited since,
blocks a write to its name with an InputError and is never touched, and files with other names are
left alone. Files are staged in a temporary folder inside OUT and moved into place at the end, so a
failed export leaves OUT as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, file_sha256
from cxrbench.common.layout import EXPORT_MANIFEST
from cxrbench.common.provenance import now_iso

MANIFEST_FORMAT = "cxrbench.export/1"


def read_manifest(out: Path) -> dict[str, str]:
    """``{file name: sha256}`` of what earlier exports wrote into ``out`` (empty when none)."""
    path = out / EXPORT_MANIFEST
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        doc = None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != MANIFEST_FORMAT
        or not isinstance(doc.get("files"), dict)
    ):
        raise InputError(
            f"{EXPORT_MANIFEST} is not an export manifest cxrbench wrote",
            where=str(path),
            fix="choose another OUT folder",
        )
    return {str(k): str(v) for k, v in doc["files"].items()}


def check_writable(out: Path, names: list[str]) -> dict[str, str]:
    """Refuse (InputError) when a file to write exists in ``out`` and is not ours, unchanged; returns the
    manifest. Nothing is written."""
    if out.exists() and not out.is_dir():
        raise InputError(
            "the export target exists and is not a folder",
            where=str(out),
            fix="give a folder (new, empty, or an earlier export's)",
        )
    manifest = read_manifest(out) if out.is_dir() else {}
    for name in names:
        path = out / name
        if not path.exists() and not path.is_symlink():
            continue
        if name not in manifest:
            raise InputError(
                f"{name} exists and was not written by cxrbench export",
                where=str(path),
                fix="move it away or export into another folder (nothing was changed)",
            )
        if not path.is_file() or file_sha256(path) != manifest[name]:
            raise InputError(
                f"{name} was changed since cxrbench export wrote it",
                where=str(path),
                fix="move it away or export into another folder (nothing was changed)",
            )
    return manifest


@contextlib.contextmanager
def staged_export(out: Path, names: list[str]) -> Iterator[Path]:
    """Yield a staging folder; on success move each of ``names`` from it into ``out`` and record them.

    The ownership check runs before anything is staged and again just before the move.
    """
    check_writable(out, names)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".cxrbench-export-", dir=out))
    done = False
    try:
        yield stage
        missing = [n for n in names if not (stage / n).is_file()]
        if missing:
            raise RuntimeError(f"export staged no {missing}")
        manifest = check_writable(out, names)
        mask = os.umask(0)
        os.umask(mask)
        for name in names:
            manifest[name] = file_sha256(stage / name)
            os.chmod(stage / name, 0o666 & ~mask)  # some writers make 0600 files
            os.replace(stage / name, out / name)
        kept = {n: h for n, h in manifest.items() if (out / n).is_file()}
        atomic_write_json(
            out / EXPORT_MANIFEST, {"format": MANIFEST_FORMAT, "updated": now_iso(), "files": kept}
        )
        done = True
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if created and not done:
            with contextlib.suppress(OSError):
                out.rmdir()  # a failed export leaves no empty folder behind (only if it is empty)


def exported_files(out: Path) -> list[str]:
    """The files of ``out`` that exports wrote (what ``--push`` uploads)."""
    return sorted(n for n in read_manifest(out) if (out / n).is_file())

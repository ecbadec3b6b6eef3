"""File I/O every stage shares: atomic writes, the one JSON sanitizer, the one file-lock idiom,
hashing, and paths that stay inside a dataset root."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is untouched, so finished work
    is never lost to a failed write.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give them the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically (through :func:`json_safe`)."""
    atomic_write_text(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, default=str) + "\n")


def json_safe(obj: Any) -> Any:
    """``obj`` as strict JSON allows: NaN -> null, +/-inf -> the strings "inf"/"-inf", NumPy
    scalars -> Python numbers, tuples -> lists, mapping keys -> str (recursively).

    The one sanitizer for every JSON file cxrbench writes (metrics, manifests, markers, logs).
    """
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if getattr(obj, "shape", None) == () and hasattr(obj, "item"):  # NumPy scalar or 0-d array
        obj = obj.item()
    elif hasattr(obj, "shape") and hasattr(obj, "tolist"):  # an array
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return "inf" if obj > 0 else "-inf"
    return obj


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, raising InputError with the path when it is missing or invalid."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("file not found", where=str(path), fix="check the path") from None
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON ({e.msg} at line {e.lineno})", where=str(path),
                         fix="the file is damaged; regenerate it") from None


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, wait: bool = True,
              on_busy: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created) for the ``with`` block.

    ``wait=False`` raises :class:`BlockingIOError` at once when another process holds it;
    with ``wait=True`` ``on_busy()`` is called once (e.g. to print "waiting") before blocking.
    Without POSIX ``fcntl`` (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise
            if on_busy is not None:
                on_busy()
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def resolve_inside(root: str | os.PathLike, relative: str, where: str | None = None) -> Path:
    """``root / relative`` resolved, refusing absolute paths and paths that escape ``root``.

    Paths from CSVs go through here so a crafted row cannot read outside the dataset.
    """
    root_path = Path(root).resolve()
    rel = Path(relative)
    if rel.is_absolute() or relative.startswith(("/", "\\")):
        raise InputError(f"path {relative!r} is absolute", where=where,
                         fix="paths in the metadata must be relative to the dataset root")
    full = (root_path / rel).resolve()
    if full != root_path and root_path not in full.parents:
        raise InputError(f"path {relative!r} escapes the dataset root {str(root_path)!r}", where=where,
                         fix="remove '..' components; every image must live under --root")
    return full

"""File I/O every stage shares: reading text and atomic writes that turn every OS error into one
InputError (missing, a folder where a file is expected, permission denied, not UTF-8, disk full),
the one JSON sanitizer, the one file-lock idiom, hashing, and paths that stay inside a dataset root."""

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


def os_error(err: OSError, path: str | os.PathLike, action: str = "read") -> InputError:
    """The InputError for an OS error on ``path``: what happened, where, and the fix."""
    where = str(path)  # the path the user gave (not a temporary file beside it)
    if isinstance(err, FileNotFoundError):
        return InputError("not found", where=where, fix="check the path")
    if isinstance(err, IsADirectoryError):
        return InputError("is a folder, not a file", where=where,
                          fix="give a file path (e.g. a name inside that folder)")
    if isinstance(err, NotADirectoryError):
        return InputError("a part of the path is a file, not a folder", where=where,
                          fix="choose a path whose parent folders are folders")
    if isinstance(err, PermissionError):
        return InputError(f"cannot be {'read' if action == 'read' else 'written'}: permission denied",
                          where=where, fix=f"choose a {'readable' if action == 'read' else 'writable'} "
                          "location or fix its permissions")
    reason = err.strerror or type(err).__name__
    return InputError(f"cannot be {'read' if action == 'read' else 'written'} ({reason})", where=where,
                      fix="check the path, the free disk space and the permissions")


def read_text(path: str | os.PathLike, what: str = "file") -> str:
    """A UTF-8 text file's content; missing, folder, unreadable or non-UTF-8 -> one InputError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise os_error(e, path) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the {what} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})",
                         where=str(path), fix="save it as UTF-8 (in most editors: 'Save with encoding')",
                         ) from None


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create the folder ``path`` (and parents); an existing file or an unwritable place -> InputError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError("exists and is a file, not a folder", where=str(path), fix="choose a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise os_error(e, path, "write") from None
    return path


def check_writable(path: str | os.PathLike) -> Path:
    """Fail fast, before hours of work, when the file ``path`` could not be written: it is a folder,
    a parent is a file, or the nearest existing folder refuses a new file (probed with a temporary
    file, removed at once). Creates nothing that stays."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not a file", where=str(path),
                         fix=f"give a file name, e.g. {path / 'out'}{path.suffix or ''}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError("a part of the path is a file, not a folder", where=str(path),
                         fix="choose a path whose parent folders are folders")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cxrbench-probe-", dir=parent)
    except OSError as e:
        raise os_error(e, path, "write") from None
    os.close(fd)
    os.unlink(probe)
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is untouched, so finished work
    is never lost to a failed write. A target that is a folder, or a place that cannot be written,
    is an InputError before anything is written.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not a file", where=str(path),
                         fix=f"give a file name, e.g. {path / 'out'}{path.suffix or ''}")
    ensure_dir(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise os_error(e, path.parent, "write") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give them the mode a plain open() would
            os.chmod(tmp_path, 0o666 & ~_umask())
        try:
            os.replace(tmp_path, path)
        except OSError as e:
            raise os_error(e, path, "write") from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def remove_stale_temps(folder: str | os.PathLike, name: str) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` leaves beside ``folder/name`` when a process is
    killed mid-write (``.<name>.*.tmp``); returns what was removed. Only that pattern is touched."""
    folder = Path(folder)
    removed = []
    for p in folder.glob(f".{name}.*.tmp") if folder.is_dir() else ():
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


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
    text = read_text(path, "JSON file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON ({e.msg} at line {e.lineno})", where=str(path),
                         fix="the file is damaged; regenerate it") from None


def _what_it_is(head: bytes) -> str:
    """What a file that should be Parquet looks like instead, from its first bytes."""
    if head.startswith(b"PK\x03\x04"):
        return "a zip archive"
    if head[:1] == b"\x80" or head.startswith(b"\x93NUMPY"):
        return "a pickle or NumPy file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of another format" if b"\0" in head else "text that is not UTF-8"
    first = text.splitlines()[0] if text.strip() else ""
    if any(sep in first for sep in (",", "\t", ";")):
        return "CSV/TSV text"
    return "a text file"


@contextlib.contextmanager
def parquet_errors(path: str | os.PathLike, what: str, fix: str) -> Iterator[None]:
    """Read a Parquet file the user named inside this block: missing, a folder, unreadable, empty, not
    Parquet (a CSV, a text file) or damaged is one InputError naming the file, what it is, and ``fix``."""
    import pyarrow as pa

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        raise os_error(e, path) from None
    if not head:
        raise InputError(f"the {what} is empty (0 bytes)", where=str(path), fix=fix)
    if not head.startswith(b"PAR1"):
        raise InputError(f"the {what} must be a Parquet file, but this is {_what_it_is(head)}",
                         where=str(path), fix=fix)
    try:
        yield
    except InputError:  # a ValueError too: a check inside the block names its own problem
        raise
    except (pa.ArrowException, ValueError, OSError) as e:
        reason = " ".join(str(e).split())[:200]
        raise InputError(f"the {what} is not a readable Parquet file ({reason})", where=str(path),
                         fix=fix) from None


def read_json_or_none(path: str | os.PathLike) -> Any:
    """A JSON file's content, or None when it is missing, unreadable or invalid (outputs a study
    gathers that may not exist yet; use :func:`read_json` where the file must be there)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    except OSError as e:
        raise os_error(e, path) from None
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

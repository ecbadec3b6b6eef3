"""Reading any weight file without unpickling code, and writing safetensors.

A weight file is read either with safetensors or with ``torch.load(weights_only=True)``. A pickle
that needs anything beyond tensors and plain containers is refused with an explanation (loading it
would let the file run arbitrary code). timm itself is only ever handed a safetensors file: other
formats are converted by :func:`as_safetensors` first. Nested checkpoints (``state_dict_ema`` ...)
are unwrapped and ``module.``/``_orig_mod.`` prefixes removed.
"""


from __future__ import annotations

import json
import os
import pickle
import re
import struct
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_path, os_error

if TYPE_CHECKING:
    import torch

SAFETENSORS_NAME = "model.safetensors"
# Nested checkpoint keys, in timm's order of preference (EMA weights first, as timm loads them).
NESTED_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "state_dict", "model")


# Prefixes left by DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")


def detect_format(path: str | os.PathLike) -> str:
    """``safetensors``, ``torch-zip``, ``torch-legacy``, ``numpy`` or ``unknown``, from the bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise os_error(e, path) from None
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 1 < header_len < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except zipfile.BadZipFile:
            return "unknown"
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip"
        if names and all(n.endswith(".npy") for n in names):
            return "numpy"
        return "unknown"
    if head[:6] == b"\x93NUMPY":
        return "numpy"
    if head[:1] == b"\x80":
        return "torch-legacy"
    return "unknown"


_RESAVE = (
    "in the environment that wrote it, re-save only the tensors: "
    "`torch.save(model.state_dict(), 'weights.pth')` or safetensors' `save_file(model.state_dict(), ...)`"
)


def _unsafe_pickle_error(path: Path, err: Exception, damaged_fix: str = "copy it again") -> InputError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    if found is None:  # not a forbidden reference: a damaged file or an unsupported pickle instruction
        reason = next(
            (
                ln.strip()
                for ln in str(err).splitlines()
                if ln.strip() and "weights_only" not in ln and "PyTorch 2.6" not in ln
            ),
            type(err).__name__,
        )
        return InputError(
            f"cannot be read with torch.load(weights_only=True) ({reason[:160]}): the file is damaged "
            "or holds more than tensors",
            where=str(path),
            fix=f"{damaged_fix}; if it persists, {_RESAVE}",
        )
    return InputError(
        f"refusing to load this pickle: it references {found.group(1)!r}, "
        "and unpickling it could run "
        "arbitrary code (cxrbench reads weights only with safetensors or torch.load(weights_only=True))",
        where=str(path),
        fix=_RESAVE,
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensor mapping inside a loaded checkpoint (nested keys as timm; wrapper prefixes removed)."""
    import torch

    if isinstance(obj, Mapping):
        for key in NESTED_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise InputError(
            f"holds a {type(obj).__name__}, not a state dict of tensors",
            where=str(path),
            fix="save `model.state_dict()`, not the model object",
        )
    others = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if others:
        raise InputError(
            f"entries {others[:5]} are not tensors: this is not a plain state dict",
            where=str(path),
            fix=f"save the model's state dict alone (nested keys understood: {', '.join(NESTED_KEYS)})",
        )
    return {_strip_prefixes(str(k)): v for k, v in obj.items()}


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def torch_load(path: Path, fmt: str | None = None, *, map_location: Any = "cpu",
               fix: str = "download or copy it again") -> Any:
    """``torch.load(weights_only=True)`` of a PyTorch file, whatever its name; every failure is one
    InputError (a pickle that wants code: refused, naming what it references; damaged: says so).

    The file is chosen by its bytes, never its name: torch.load hands a path ending in
    ``.safetensors`` to safetensors, so such a file is opened here and passed as a file object. The
    unpickler's warnings (an unusual pickle protocol) are kept off the console. ``fix`` is the advice
    for a damaged file.
    """
    import torch

    fmt = fmt or detect_format(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if str(path).endswith(".safetensors") or fmt != "torch-zip":
                with open(path, "rb") as f:
                    return torch.load(f, map_location=map_location, weights_only=True)
            return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        raise _unsafe_pickle_error(path, e, fix) from None
    except OSError as e:
        raise os_error(e, path) from None
    except Exception as e:  # the unpickler raises many types on damaged input (EOFError, KeyError...)
        first = (str(e).splitlines() or [""])[0][:200]
        raise InputError(f"damaged PyTorch file ({type(e).__name__}{': ' + first if first else ''})",
                         where=str(path), fix=fix) from None


@contextmanager
def safetensors_errors(path: str | os.PathLike, fix: str = "download or copy it again") -> Iterator[None]:
    """Turn any failure of the safetensors library on ``path`` into one InputError that says what the
    file is: a damaged (e.g. truncated) safetensors file, or another format under a safetensors name
    (a pickle named ``.safetensors`` is never unpickled here)."""
    from safetensors import SafetensorError

    try:
        yield
    except InputError:  # a ValueError too: a check inside the block names its own problem
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, json.JSONDecodeError) as e:
        if isinstance(e, OSError) and not Path(path).is_file():
            raise os_error(e, path) from None
        fmt = detect_format(path) if Path(path).is_file() else "unknown"
        reason = " ".join(str(e).split())[:200]
        if fmt in ("torch-zip", "torch-legacy", "numpy"):
            what = {"numpy": "NumPy"}.get(fmt, "PyTorch (pickle)")
            raise InputError(
                f"is named and read as safetensors but holds {what} data ({reason}); it was not unpickled",
                where=str(path),
                fix="give it its real extension (.pth/.bin) or convert it: "
                "`cxrbench weights import NAME FILE` converts a PyTorch state dict to safetensors",
            ) from None
        raise InputError(f"damaged safetensors file ({reason})", where=str(path), fix=fix) from None


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file safely into ``{name: tensor}`` on CPU.

    safetensors is read with safetensors; a PyTorch file (zip or legacy) with
    ``torch.load(weights_only=True)``; anything else is refused. Checkpoints nesting the weights under
    ``state_dict_ema``/``model_ema``/``state_dict``/``model`` are unwrapped (timm's order), and
    ``module.``/``_orig_mod.`` prefixes (DDP, torch.compile) are removed.
    """

    path = Path(path)
    if not path.is_file():
        raise InputError("weight file not found", where=str(path), fix="check the path")
    fmt = detect_format(path)
    if fmt == "safetensors":
        from safetensors.torch import load_file

        with safetensors_errors(path):
            return _unwrap(load_file(str(path), device="cpu"), path)
    if fmt in ("torch-zip", "torch-legacy"):
        return _unwrap(torch_load(path, fmt), path)
    if fmt == "numpy":
        raise InputError(
            "NumPy/JAX weight files (.npz/.npy) are not supported",
            where=str(path),
            fix="use the PyTorch copy on the Hugging Face hub (`cxrbench weights fetch NAME`)",
        )
    raise InputError(
        "not a weight file cxrbench can read (expected .safetensors, or a PyTorch .pth/.bin/.pt)",
        where=str(path),
        fix="point to the model's safetensors or PyTorch state dict",
    )


def tensor_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Names and shapes in a safetensors file, read from its header only (no tensor data)."""
    from safetensors import safe_open

    with safetensors_errors(path), safe_open(str(path), framework="pt") as f:
        return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}


def read_tensors(path: str | os.PathLike, names: list[str]) -> dict[str, torch.Tensor]:
    """Only the named tensors of a safetensors file (lazy read; e.g. a classifier head)."""
    from safetensors import safe_open

    with safetensors_errors(path), safe_open(str(path), framework="pt") as f:
        return {n: f.get_tensor(n) for n in names}


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> None:
    """Write tensors to a safetensors file atomically (shared or strided tensors are copied)."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for name, t in state_dict.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if (ptr is not None and ptr in seen) or not t.is_contiguous():
            t = t.contiguous().clone()
        if ptr is not None:
            seen.add(ptr)
        tensors[name] = t
    meta = {"format": "pt", **dict(metadata or {})}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _has_wrapper_prefix(names: list[str]) -> bool:
    return any(n.startswith(WRAPPER_PREFIXES) for n in names)


@contextmanager
def as_safetensors(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a clean safetensors file with the weights of ``path``.

    A safetensors file with plain keys is yielded as is. Anything else (a PyTorch pickle, a
    checkpoint with nested keys or DDP/compile prefixes) is read with :func:`load_state_dict` and
    written to a temporary safetensors file that is removed afterwards.
    """
    path = Path(path)
    if detect_format(path) == "safetensors" and not _has_wrapper_prefix(list(tensor_shapes(path))):
        yield path
        return
    state = load_state_dict(path)
    with tempfile.TemporaryDirectory(prefix="cxrbench-weights-") as tmp:
        out = Path(tmp) / SAFETENSORS_NAME
        save_state_dict(state, out)
        del state
        yield out


"""Pretrained weight files: where they live, fetching, importing, and loading them safely.

Two places hold weights, searched in this order:

1. **cxrbench's own store**, ``$CXRBENCH_HOME/weights/<key>/model.safetensors`` (default
   ``~/.cache/cxrbench``), filled by ``cxrbench weights import NAME FILE``. ``<key>`` is the timm
   model name with its tag (e.g. ``vit_base_patch14_dinov2.lvd142m``), so every init name that maps
   to the same weights shares one copy. ``weights.json`` beside it records the source file, its
   SHA-256 and the conversion; ``model.safetensors`` is written last, so a folder without it is an
   interrupted import and is ignored.
2. **The Hugging Face hub cache** (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), filled by ``cxrbench weights fetch NAME`` (or by any other tool that
   uses huggingface_hub). Only the cache is read here: looking up weights never touches the network.

Safe loading: a weight file is read either with safetensors or with ``torch.load(weights_only=True)``.
A pickle that needs anything beyond tensors and plain containers is refused with an explanation
(loading it would let the file run arbitrary code). timm itself is only ever handed a safetensors
file: other formats are converted by :func:`load_state_dict` first.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench import __version__
from cxrbench.errors import InputError
from cxrbench.fileio import atomic_path, atomic_write_json, file_sha256
from cxrbench.provenance import now_iso

if TYPE_CHECKING:
    import torch

SAFETENSORS_NAME = "model.safetensors"
HF_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
IMPORT_RECORD = "weights.json"
# Nested checkpoint keys, in timm's order of preference (EMA weights first, as timm loads them).
NESTED_KEYS: tuple[str, ...] = ("state_dict_ema", "model_ema", "state_dict", "model")
# Prefixes left by DistributedDataParallel and torch.compile.
WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "_orig_mod.")
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class WeightSource:
    """Where the weights of one pretrained initialization come from.

    ``key`` names the weights (timm ``model.tag``) and is the folder of an imported copy;
    ``hf_repo`` is the Hugging Face hub repository; ``files`` are the candidate weight files in the
    repository, preferred first; ``extra_files`` are fetched too (e.g. ``config.json``); ``url`` is
    the original non-hub download location when there is one (shown in messages only);
    ``revision`` pins a branch, tag or commit of the repository (default: ``main``).
    """

    key: str
    hf_repo: str | None
    files: tuple[str, ...] = HF_WEIGHT_FILES
    extra_files: tuple[str, ...] = ()
    url: str | None = None
    importable: bool = True
    revision: str | None = None


@dataclass(frozen=True)
class WeightLocation:
    """A weight file found on disk: ``origin`` is ``imported`` or ``hf-cache``."""

    path: Path
    origin: str
    revision: str | None = None

    def describe(self) -> str:
        """``origin: path`` for tables and logs."""
        return f"{self.origin}: {self.path}"


# --------------------------------------------------------------------------- locations


def cxrbench_home() -> Path:
    """cxrbench's own cache root: ``$CXRBENCH_HOME`` or ``~/.cache/cxrbench``."""
    env = os.environ.get("CXRBENCH_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "cxrbench"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, resolved from the environment at call time.

    Same precedence as huggingface_hub: ``HF_HUB_CACHE``, legacy ``HUGGINGFACE_HUB_CACHE``,
    ``HF_HOME/hub``, ``XDG_CACHE_HOME/huggingface/hub``, ``~/.cache/huggingface/hub``. Resolved here
    rather than read from ``huggingface_hub.constants`` because those are frozen at import.
    """
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` asks for no network access."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def imported_dir(key: str) -> Path:
    """The folder of an imported copy of the weights named ``key``."""
    if not _KEY_RE.match(key):
        raise InputError(
            f"weight key {key!r} cannot name a folder",
            where="weights",
            fix="use a timm model name with its tag, e.g. vit_base_patch14_dinov2.lvd142m",
        )
    return cxrbench_home() / "weights" / key


def _hf_cached(
    repo: str, filename: str, cache_dir: Path, revision: str | None = None
) -> WeightLocation | None:
    """A file of ``repo`` in the hub cache (refs/main, else the only snapshot holding it)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, cache_dir=str(cache_dir), revision=revision)
    if isinstance(found, str) and Path(found).is_file():
        path = Path(found)
        return WeightLocation(path=path, origin="hf-cache", revision=path.parent.name)
    # A download pinned to a commit has a snapshot but no refs/main: accept it when unambiguous.
    snapshots = cache_dir / ("models--" + repo.replace("/", "--")) / "snapshots"
    candidates = sorted(snapshots.glob(f"*/{filename}")) if snapshots.is_dir() and not revision else []
    if len(candidates) == 1 and candidates[0].is_file():
        return WeightLocation(path=candidates[0], origin="hf-cache", revision=candidates[0].parent.name)
    return None


def locate(source: WeightSource) -> WeightLocation | None:
    """The weight file for ``source`` on disk (imported copy first, then hub cache), or None."""
    if source.importable:
        imported = imported_dir(source.key) / SAFETENSORS_NAME
        if imported.is_file():
            return WeightLocation(path=imported, origin="imported")
    if source.hf_repo:
        cache_dir = hf_hub_cache()
        if all(_hf_cached(source.hf_repo, f, cache_dir, source.revision) for f in source.extra_files):
            for filename in source.files:
                found = _hf_cached(source.hf_repo, filename, cache_dir, source.revision)
                if found is not None:
                    return found
    return None


def locate_extra(source: WeightSource, filename: str) -> Path | None:
    """An extra file (e.g. ``config.json``) of ``source`` in the hub cache, or None."""
    if not source.hf_repo:
        return None
    found = _hf_cached(source.hf_repo, filename, hf_hub_cache(), source.revision)
    return found.path if found else None


def missing_weights_error(source: WeightSource, init: str) -> InputError:
    """The error for weights that are not on disk: what is missing, where it was looked for, how to get it."""
    looked = []
    if source.hf_repo:
        wanted = " or ".join(source.files)
        extra = f" (+ {', '.join(source.extra_files)})" if source.extra_files else ""
        looked.append(f"{wanted}{extra} of hub repo {source.hf_repo} in the HF cache {hf_hub_cache()}")
    if source.importable:
        looked.append(f"an imported copy {imported_dir(source.key) / SAFETENSORS_NAME}")
    fixes = []
    if source.hf_repo:
        fixes.append(f"online, run `cxrbench weights fetch {init}`")
    if source.importable:
        origin = f" (a copy of {source.url} or of the hub file)" if source.url else ""
        fixes.append(f"from a copied file{origin}, run `cxrbench weights import {init} FILE`")
    if not fixes:
        fixes.append("download the repository on a machine with network and copy the HF cache folder here")
    return InputError(
        f"pretrained weights for {init!r} are not available offline: missing {'; '.join(looked)}",
        where=f"init {init}",
        fix="; or ".join(fixes),
    )


def require(source: WeightSource, init: str) -> WeightLocation:
    """:func:`locate` or raise :func:`missing_weights_error`."""
    found = locate(source)
    if found is None:
        raise missing_weights_error(source, init)
    return found


# --------------------------------------------------------------------------- fetch


def fetch(source: WeightSource, init: str, force: bool = False) -> WeightLocation:
    """Download the weights of ``source`` into the Hugging Face cache (huggingface_hub) and return them.

    The first of ``source.files`` that the repository has is downloaded, plus ``extra_files``.
    Tokens come from huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``).
    """
    if not source.hf_repo:
        where = source.url or "its publisher"
        raise InputError(
            f"{init!r} has no Hugging Face hub repository to fetch from",
            where=f"init {init}",
            fix=f"download the file from {where} and run `cxrbench weights import {init} FILE`",
        )
    if not force:
        found = locate(source)
        if found is not None and found.origin == "hf-cache":
            return found
    if hf_offline():
        raise InputError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded",
            where=f"init {init}",
            fix=f"unset HF_HUB_OFFLINE on a machine with network, or copy the file here and run "
            f"`cxrbench weights import {init} FILE`",
        )
    import huggingface_hub
    from huggingface_hub import utils as hf_errors  # re-exports the error classes in every version

    cache_dir = str(hf_hub_cache())
    endpoint = os.environ.get("HF_ENDPOINT") or None

    def download(filename: str) -> str:
        return huggingface_hub.hf_hub_download(
            source.hf_repo,
            filename,
            revision=source.revision,
            cache_dir=cache_dir,
            force_download=force,
            endpoint=endpoint,
        )

    where = f"hub repo {source.hf_repo}"
    try:
        for filename in source.extra_files:
            download(filename)
        for filename in source.files:
            try:
                path = Path(download(filename))
            except hf_errors.LocalEntryNotFoundError:
                raise
            except hf_errors.EntryNotFoundError:
                continue
            return WeightLocation(path=path, origin="hf-cache", revision=path.parent.name)
    except hf_errors.GatedRepoError:
        raise InputError(
            "the repository is gated: its licence must be accepted first",
            where=where,
            fix=f"accept it at https://huggingface.co/{source.hf_repo}, then log in "
            "(`hf auth login` or HF_TOKEN) and fetch again",
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise InputError(
            "repository not found (or private)",
            where=where,
            fix="check the name; for a private repository log in (`hf auth login` or HF_TOKEN)",
        ) from None
    except hf_errors.LocalEntryNotFoundError:
        raise InputError(
            "could not reach the Hugging Face hub",
            where=where,
            fix=f"check the network (or HF_ENDPOINT); or copy the file here and run "
            f"`cxrbench weights import {init} FILE`",
        ) from None
    except hf_errors.EntryNotFoundError as e:  # an extra file is missing
        raise InputError(
            f"file missing in the repository ({e})", where=where, fix="check the repository's file list"
        ) from None
    except (hf_errors.HfHubHTTPError, OSError) as e:
        raise InputError(
            f"download failed ({type(e).__name__}: {e})",
            where=where,
            fix=f"retry; if it persists, download the file by hand and `cxrbench weights import {init} FILE`",
        ) from None
    raise InputError(
        f"none of {', '.join(source.files)} exists in the repository",
        where=where,
        fix=f"download the weights by hand and run `cxrbench weights import {init} FILE`",
    )


# --------------------------------------------------------------------------- safe loading


def detect_format(path: str | os.PathLike) -> str:
    """``safetensors``, ``torch-zip``, ``torch-legacy``, ``numpy`` or ``unknown``, from the bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
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


def _unsafe_pickle_error(path: Path, err: Exception) -> InputError:
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
            fix=f"copy it again; if it persists, {_RESAVE}",
        )
    return InputError(
        f"refusing to load this pickle: it references {found.group(1)!r}, "
        "and unpickling it would let the file run "
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


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a weight file safely into ``{name: tensor}`` on CPU.

    safetensors is read with safetensors; a PyTorch file (zip or legacy) with
    ``torch.load(weights_only=True)``; anything else is refused. Checkpoints nesting the weights under
    ``state_dict_ema``/``model_ema``/``state_dict``/``model`` are unwrapped (timm's order), and
    ``module.``/``_orig_mod.`` prefixes (DDP, torch.compile) are removed.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError("weight file not found", where=str(path), fix="check the path")
    fmt = detect_format(path)
    if fmt == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(path), device="cpu"), path)
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(
                f"damaged safetensors file ({e})", where=str(path), fix="download or copy it again"
            ) from None
    if fmt in ("torch-zip", "torch-legacy"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=fmt == "torch-zip")
        except pickle.UnpicklingError as e:
            raise _unsafe_pickle_error(path, e) from None
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
            raise InputError(
                f"damaged PyTorch file ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
                where=str(path),
                fix="download or copy it again",
            ) from None
        return _unwrap(obj, path)
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
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise InputError(
            f"damaged safetensors file ({e})", where=str(path), fix="download or copy it again"
        ) from None


def read_tensors(path: str | os.PathLike, names: list[str]) -> dict[str, torch.Tensor]:
    """Only the named tensors of a safetensors file (lazy read; e.g. a classifier head)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
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


# --------------------------------------------------------------------------- import



def weight_file(path: Path, names: Sequence[str], fix: str) -> Path:
    """``path`` itself when it is a file, else the first of ``names`` inside the folder ``path``."""
    if path.is_dir():
        inner = next((path / n for n in names if (path / n).is_file()), None)
        if inner is None:
            raise InputError(f"folder holds none of {', '.join(names)}", where=str(path), fix=fix)
        path = inner
    if not path.is_file():
        raise InputError("file not found", where=str(path), fix="check the path")
    return path

def import_weights(
    source: WeightSource,
    init: str,
    file: str | os.PathLike,
    verify: Callable[[Path], None] | None = None,
    force: bool = False,
) -> WeightLocation:
    """Copy or convert a local weight file into cxrbench's store, where loading finds it first.

    ``file`` is a ``.safetensors`` file, a PyTorch state dict (``.pth``/``.bin``/``.pt``, read with
    ``weights_only=True``), or a folder holding ``model.safetensors`` / ``pytorch_model.bin`` (e.g. a
    hub snapshot). The result is always ``model.safetensors``. ``verify(path)`` is called on the
    converted file before it is put in place (cxrbench passes a real model build + strict load), so a
    file that does not fit the architecture never lands in the store.
    """
    if not source.importable:
        raise InputError(
            f"{init!r} cannot be imported",
            where=f"init {init}",
            fix="for a local copy of a hub repository use `--init checkpoint:FOLDER`",
        )
    src = weight_file(Path(file).expanduser(), HF_WEIGHT_FILES, fix="point to the weight file itself")
    dest_dir = imported_dir(source.key)
    dest = dest_dir / SAFETENSORS_NAME
    if dest.exists() and not force:
        raise InputError(
            f"weights for {source.key} were already imported",
            where=str(dest),
            fix="add --force to replace them",
        )
    fmt = detect_format(src)
    sha = file_sha256(src)
    dest_dir.mkdir(parents=True, exist_ok=True)
    staged = dest_dir / f".staged-{os.getpid()}.safetensors"
    try:
        if fmt == "safetensors" and not _has_wrapper_prefix(list(tensor_shapes(src))):
            shutil.copyfile(src, staged)
            converted = False
        else:
            state = load_state_dict(src)  # refuses unsafe pickles before anything is written
            save_state_dict(state, staged, metadata={"cxrbench_source": src.name})
            del state
            converted = True
        if verify is not None:
            verify(staged)
        record = {
            "key": source.key,
            "init": init,
            "hf_repo": source.hf_repo,
            "source_file": str(src.resolve()),
            "source_sha256": sha,
            "source_format": fmt,
            "converted_to_safetensors": converted,
            "sha256": file_sha256(staged),
            "imported": now_iso(),
            "cxrbench": __version__,
        }
        atomic_write_json(dest_dir / IMPORT_RECORD, record)
        os.replace(staged, dest)  # written last: its presence means the import is complete
    finally:
        if staged.exists():
            staged.unlink()
    return WeightLocation(path=dest, origin="imported")


def import_record(key: str) -> dict[str, Any] | None:
    """The ``weights.json`` of an imported copy, or None."""
    path = imported_dir(key) / IMPORT_RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None

"""Where pretrained weight files live: looking them up, fetching and importing them.

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

Files are read and converted by :mod:`cxrbench.models.safeload`, never unpickled.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrbench import __version__
from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, file_sha256
from cxrbench.common.provenance import now_iso
from cxrbench.models.safeload import (
    SAFETENSORS_NAME,
    _has_wrapper_prefix,
    detect_format,
    load_state_dict,
    save_state_dict,
    tensor_shapes,
)

HF_WEIGHT_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


IMPORT_RECORD = "weights.json"


_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class WeightSource:
    """Where the weights of one pretrained initialization come from.

    ``key`` names the weights (timm ``model.tag``) and is the folder of an imported copy;
    ``hf_repo`` is the Hugging Face hub repository; ``files`` are the candidate weight files in the
    repository, preferred first; ``extra_files`` are fetched too (e.g. ``config.json``); ``url`` is
    the original non-hub download location when there is one (shown in messages only);
    ``revision`` pins a branch, tag or commit of the repository (default: ``main``); ``convert`` is
    the repository's format when timm cannot read it (``hf-dinov2``): then only the converted copy
    in cxrbench's store is a usable weight file (:mod:`cxrbench.models.convert` writes it).
    """

    key: str
    hf_repo: str | None
    files: tuple[str, ...] = HF_WEIGHT_FILES
    extra_files: tuple[str, ...] = ()
    url: str | None = None
    importable: bool = True
    revision: str | None = None
    convert: str | None = None


@dataclass(frozen=True)
class WeightLocation:
    """A weight file found on disk: ``origin`` is ``imported`` or ``hf-cache``."""

    path: Path
    origin: str
    revision: str | None = None

    def describe(self) -> str:
        """``origin: path`` for tables and logs."""
        return f"{self.origin}: {self.path}"


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
    """The weight file for ``source`` on disk (imported copy first, then hub cache), or None.

    For a source that needs conversion only the converted copy counts (the hub file is not timm's).
    """
    if source.importable:
        imported = imported_dir(source.key) / SAFETENSORS_NAME
        if imported.is_file():
            return WeightLocation(path=imported, origin="imported")
    if source.convert:
        return None
    return locate_hub(source)


def locate_hub(source: WeightSource) -> WeightLocation | None:
    """The weight file of ``source`` in the hub cache, when its ``extra_files`` are there too, or None."""
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
    if source.convert:
        files = ", ".join((*source.files, *source.extra_files))
        return InputError(
            f"pretrained weights for {init!r} are not available offline: no converted copy "
            f"{imported_dir(source.key) / SAFETENSORS_NAME}",
            where=f"init {init}",
            fix=f"online, run `cxrbench weights fetch {init}` (downloads {source.hf_repo} and converts it to "
            f"timm); or copy the repository folder ({files}) here and run `cxrbench weights import {init} "
            "FOLDER`",
        )
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
        found = locate_hub(source)
        if found is not None:
            return found
    if hf_offline():
        what = "the repository folder" if source.convert else "the file"
        raise InputError(
            "HF_HUB_OFFLINE is set, so nothing can be downloaded",
            where=f"init {init}",
            fix=f"unset HF_HUB_OFFLINE on a machine with network, or copy {what} here and run "
            f"`cxrbench weights import {init} {'FOLDER' if source.convert else 'FILE'}`",
        )
    import huggingface_hub
    from huggingface_hub import utils as hf_errors  # re-exports the error classes in every version

    cache_dir = str(hf_hub_cache())
    endpoint = os.environ.get("HF_ENDPOINT") or None

    def download(filename: str) -> str:
        return huggingface_hub.hf_hub_download(
            str(source.hf_repo),
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
    if dest.exists() and import_record(source.key) is None:  # not an import cxrbench made
        raise InputError(
            f"{SAFETENSORS_NAME} is there without the {IMPORT_RECORD} cxrbench writes with every import, "
            "so it is not cxrbench's to replace",
            where=str(dest),
            fix="move it away if you put it there, then import again (--force replaces only imports)",
        )
    fmt = detect_format(src)
    sha = file_sha256(src)
    made_dir = not dest_dir.exists()
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
        if made_dir and not dest.exists():
            with contextlib.suppress(OSError):
                dest_dir.rmdir()  # a refused import leaves no empty folder (only if it is empty)
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


"""Provenance written beside every output: versions, git commit, hashes, time."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from cxrbench import __version__

_PACKAGES = ("torch", "timm", "numpy", "pandas", "scikit-learn", "scipy", "pydicom", "safetensors")


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The git commit of the cxrbench source tree, or None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape results."""
    versions: dict[str, str | None] = {"cxrbench": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def now_iso() -> str:
    """Current UTC time, ISO 8601, seconds resolution."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Content hash of a JSON-serializable object (key order independent)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def provenance() -> dict[str, Any]:
    """A dict to embed in manifests, run configs and reports."""
    return {"versions": package_versions(), "git_commit": git_commit(), "created": now_iso(),
            "host": platform.node()}

"""The example studies shipped with the package (``cxrbench/configs/*.yaml``), for wheel users who
have no checkout: ``cxrbench study example NAME`` writes one out; :func:`example_text` reads one.

``study-2024`` is the reference study's matrix (six datasets x three initializations x three seeds)
and ``study-dinov3`` its DINOv3 follow-up, the files the README names as ``configs/*.yaml`` (the
package holds identical copies; tests/test_packaging.py checks); ``demo`` is ``cxrbench demo``'s
study on phantoms.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_write_text
from cxrbench.common.validation import check_choice

EXAMPLES: dict[str, str] = {
    "study-2024": "the reference study: DINOv2 vs ImageNet-21k vs MIMIC-CXR pretraining on six datasets",
    "study-dinov3": "its follow-up: DINOv3 backbones, frozen and fine-tuned, on the same datasets",
    "demo": "`cxrbench demo`'s study on phantoms (CPU, minutes)",
}
"""Example name -> what it is."""


def example_text(name: str) -> str:
    """The packaged YAML of example ``name`` (one of :data:`EXAMPLES`)."""
    check_choice(spell("NAME", "name"), name, EXAMPLES)
    return resources.files("cxrbench").joinpath(f"configs/{name}.yaml").read_text(encoding="utf-8")


def write_example(name: str, out: str | os.PathLike | None = None) -> tuple[Path, bool]:
    """Write example ``name`` to ``out`` (a ``.yaml`` file, or a folder to hold ``NAME.yaml``; default:
    the current folder); returns ``(path, written)``. A file already there is left alone when it is the
    same, and refused when it differs (cxrbench replaces only what it wrote)."""
    text = example_text(name)
    path = Path(out) if out is not None else Path(f"{name}.yaml")
    if path.is_dir() or path.suffix.lower() not in (".yaml", ".yml"):  # a folder, made when missing
        path = path / f"{name}.yaml"
    if path.exists():
        if path.is_file() and path.read_text(encoding="utf-8", errors="replace") == text:
            return path, False
        raise InputError("a different file is there already and would be replaced", where=str(path),
                         fix="choose another --out, or move that file away")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path, True

"""Vision-language model folders as their libraries write them (a hub repository's copy, ``--init
local-dir:DIR``, the tiny test models): which format, which configs, which weight file, which timm plan."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import read_json
from cxrbench.models.vlm_convert import (
    HF_CONFIG,
    HF_PREPROCESSOR,
    HF_WEIGHTS,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    SIGLIP_TYPES,
    TowerPlan,
    open_clip_plan,
    siglip_plan,
)


@dataclass(frozen=True)
class LibFolder:
    """A vision-language model folder as its library writes it: format, configs, weight file."""

    folder: Path
    family: str
    config: dict[str, Any]
    preprocessor: dict[str, Any] | None
    weights: Path

    def plan(self) -> TowerPlan:
        where = str(self.folder)
        return (
            open_clip_plan(self.config, where)
            if self.family == "open-clip"
            else siglip_plan(self.config, self.preprocessor, where)
        )


def folder_format(folder: Path) -> str | None:
    """``open-clip`` or ``hf-siglip`` when ``folder`` holds such a model's configs, else None."""
    if not folder.is_dir():
        return None
    if (folder / OPEN_CLIP_CONFIG).is_file():
        return "open-clip"
    config = folder / HF_CONFIG
    if config.is_file():
        cfg = read_json(config)
        if isinstance(cfg, dict) and cfg.get("model_type") in (*SIGLIP_TYPES, "siglip2"):
            return "hf-siglip"
    return None


def read_folder(folder: Path, what: str) -> LibFolder:
    """The configs and weight file of an open_clip or transformers SigLIP folder (InputError otherwise)."""
    from cxrbench.models import store as wt

    family = folder_format(folder)
    if family is None:
        raise InputError(
            f"neither {OPEN_CLIP_CONFIG} nor a SigLIP {HF_CONFIG} here",
            where=str(folder),
            fix=f"copy the whole repository folder of {what} (its configs name the architecture)",
        )
    names = OPEN_CLIP_WEIGHTS if family == "open-clip" else HF_WEIGHTS
    weights = wt.weight_file(folder, names, fix=f"copy {' or '.join(names)} into the folder")
    if family == "open-clip":
        return LibFolder(folder, family, read_json(folder / OPEN_CLIP_CONFIG), None, weights)
    pre_path = folder / HF_PREPROCESSOR
    pre = read_json(pre_path) if pre_path.is_file() else None
    return LibFolder(folder, family, read_json(folder / HF_CONFIG), pre, weights)


def tiny_plan(name: str) -> TowerPlan:
    """The timm plan of a tiny test model (``clip-test``, ``siglip-test``)."""
    from cxrbench.models.vlm_tiny import (
        TINY_SIGLIP_PREPROCESSOR,
        TINY_VLMS,
        tiny_clip_config,
        tiny_siglip_config,
    )

    where = f"init random-{name}"
    if TINY_VLMS[name] == "open-clip":
        return open_clip_plan(tiny_clip_config(), where)
    return siglip_plan(tiny_siglip_config(), TINY_SIGLIP_PREPROCESSOR, where)

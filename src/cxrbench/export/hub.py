"""``cxrbench export RUN OUT --format hub``: a folder timm loads as is, and ``--push`` to the hub.

The folder is what ``timm.create_model("local-dir:OUT", pretrained=True)`` reads (and, once pushed,
``hf-hub:REPO``): ``config.json`` (timm's hub config, written by ``timm.models.save_for_hf``:
``architecture``, ``num_classes``, ``label_names``, ``model_args``, ``pretrained_cfg`` with input
size, mean and std; plus a ``cxrbench`` section), ``model.safetensors`` (the run's best weights, as a
native timm state dict), ``thresholds.json`` (the validation thresholds) and ``README.md`` (the model
card, :mod:`cxrbench.export.card`). Nothing in OUT that the export did not write is replaced
(:mod:`cxrbench.export.files`).
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, atomic_write_text
from cxrbench.common.layout import EXPORT_CARD, EXPORT_CONFIG, EXPORT_ONNX, EXPORT_THRESHOLDS, EXPORT_WEIGHTS
from cxrbench.export.card import RunFacts, collect, cxrbench_config, model_card, thresholds_doc
from cxrbench.export.files import exported_files, read_manifest, staged_export
from cxrbench.train.methods import method_of

FORMATS: tuple[str, ...] = ("hub", "onnx")


@dataclass
class ExportResult:
    """What an export wrote."""

    out: Path
    format: str
    files: list[str]
    max_abs_diff: float | None = None  # onnx: onnxruntime vs PyTorch on the same inputs
    url: str | None = None  # --push: the repository
    notes: list[str] = field(default_factory=list)


def write_timm_files(model: Any, facts: RunFacts, stage: Path) -> None:
    """config.json and model.safetensors into ``stage`` through timm's own writer (``save_for_hf``),
    then cxrbench's corrections to the config (the init's licence, no source tag, a cxrbench section)."""
    import timm.models

    meta = facts.meta
    size = int(meta["image_size"])
    tmp = stage / "_timm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        timm.models.save_for_hf(
            model,
            str(tmp),
            model_config={"label_names": facts.findings},
            safe_serialization=True,
            data_config={
                "input_size": (3, size, size),
                "mean": tuple(meta["mean"]),
                "std": tuple(meta["std"]),
                "crop_pct": 1.0,
                "interpolation": "bilinear",
            },
        )
    doc = json.loads((tmp / EXPORT_CONFIG).read_text(encoding="utf-8"))
    pcfg = doc.setdefault("pretrained_cfg", {})
    pcfg.pop("tag", None)  # the empty architecture's tag, not where these weights come from
    pcfg["license"] = meta.get("license") or "other"
    doc["cxrbench"] = cxrbench_config(facts)
    atomic_write_json(stage / EXPORT_CONFIG, doc)
    os.replace(tmp / EXPORT_WEIGHTS, stage / EXPORT_WEIGHTS)
    shutil.rmtree(tmp)


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    fmt: str = "hub",
    *,
    push: str | None = None,
    atol: float = 1e-4,
    opset: int = 17,
) -> ExportResult:
    """Export the run's best model into the folder ``out`` (``hub`` or ``onnx``); optionally push it."""
    from cxrbench.evaluate.inference import load_run_model

    if fmt not in FORMATS:
        raise InputError(
            f"unknown export format {fmt!r}", where="--format", fix=f"use {' or '.join(FORMATS)}"
        )
    if fmt == "onnx":
        from cxrbench.export.onnx import check_onnx_options

        check_onnx_options(atol, opset)  # before anything is loaded or written
    run_dir, out = Path(run_dir), Path(out)
    facts = collect(run_dir)
    method = method_of(facts.meta)
    if fmt not in method.export_formats:
        raise InputError(method.no_export(fmt), where=str(run_dir),
                         fix=f"use --format {' or '.join(method.export_formats)}")
    model, _ = load_run_model(run_dir, "cpu")
    names = ([EXPORT_CONFIG, EXPORT_WEIGHTS] if fmt == "hub" else [EXPORT_CONFIG, EXPORT_ONNX]) + [
        EXPORT_THRESHOLDS,
        EXPORT_CARD,
    ]
    result = ExportResult(out=out, format=fmt, files=names)
    with staged_export(out, names) as stage:
        write_timm_files(model, facts, stage)
        if fmt == "onnx":
            from cxrbench.export.onnx import export_onnx

            (stage / EXPORT_WEIGHTS).unlink()
            result.max_abs_diff = export_onnx(model, facts, stage / EXPORT_ONNX, atol=atol, opset=opset)
        atomic_write_json(stage / EXPORT_THRESHOLDS, thresholds_doc(facts))
        files = sorted(set(read_manifest(out)) | set(names)) if out.is_dir() else names
        load = f"hf-hub:{push}" if push else f"local-dir:{out.resolve()}"
        atomic_write_text(stage / EXPORT_CARD, model_card(facts, files, load))
    if facts.thresholds is None:
        result.notes.append(
            "no validation thresholds (evaluate the run first: cxrbench evaluate RUN --split val)"
        )
    if push:
        result.url = push_folder(out, push)
    return result


def push_folder(out: Path, repo: str) -> str:
    """Upload the files exports wrote into ``out`` (never others) to the hub model repository ``repo``."""
    from huggingface_hub import HfApi, constants

    offline = constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if offline:
        raise InputError(
            "--push needs the network, but HF_HUB_OFFLINE is set",
            where="--push",
            fix=f"unset HF_HUB_OFFLINE on a machine with internet, or later: hf upload {repo} {out}",
        )
    files = exported_files(out)
    try:
        api = HfApi()
        url = api.create_repo(repo, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo,
            repo_type="model",
            folder_path=str(out),
            allow_patterns=files,
            commit_message="cxrbench export",
        )
    except Exception as err:  # network, authentication, permissions: one line
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise InputError(
            f"could not push to the Hugging Face hub: {first}",
            where=f"--push {repo}",
            fix="check the network and your token (`hf auth login`); the export in OUT is complete",
        ) from None
    return str(getattr(url, "url", url))

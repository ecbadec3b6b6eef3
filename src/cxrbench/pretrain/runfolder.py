"""The pretraining run folder: new, resumed or restarted; ``config.yaml``; ``best.json`` of the teacher.

The folder has Contract 4's names (``config.yaml``, ``checkpoints/last.pt``, ``best.safetensors`` +
``best.json``, ``log.jsonl``, ``tensorboard/``) plus ``pretrain_images.parquet``, the images used.
``best.safetensors`` holds the **teacher backbone** (no head) after the last finished epoch and
``best.json`` what ``create_model("checkpoint:RUN/best.safetensors", ...)`` needs (``arch``,
``model_kwargs``, ``mean``/``std`` the views were normalized with, ``image_size``, ``patch_size``,
``findings: []``), plus ``pretraining`` (the data: datasets, counts, hash of the image list) and
``pretrained_on`` (those datasets with the init's own), which the patient-overlap guard of
fine-tuning and the contamination audit read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_write_text
from cxrbench.common.layout import RUN_CONFIG, RUN_LAST, RUN_PRETRAIN_IMAGES
from cxrbench.pretrain.config import SECTION, PretrainConfig
from cxrbench.train.runfolder import check_restart
from cxrbench.train.runfolder import start_run_dir as train_start_run_dir

METHOD = "dinov2-self-distillation"  # DINO + iBOT (the default objective)


def method_name(cfg: PretrainConfig) -> str:
    """The objective a run trains, by its losses: ``dinov2-self-distillation`` (DINO + iBOT),
    ``dino-self-distillation`` (no iBOT) or ``ibot-self-distillation`` (no DINO loss)."""
    dino, ibot = cfg.dino_weight > 0, cfg.ibot and cfg.ibot_weight > 0
    return METHOD if dino and ibot else "dino-self-distillation" if dino else "ibot-self-distillation"


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``RUN/config.yaml`` of a pretraining run (InputError when it is not one)."""
    from cxrbench.train.runfolder import read_run_config

    doc = read_run_config(run_dir)
    if not isinstance(doc.get(SECTION), dict):
        raise InputError(
            f"{RUN_CONFIG} has no '{SECTION}' section: not a pretraining run",
            where=str(run_dir),
            fix=f"give a folder made by `cxrbench pretrain`, or another {spell('--out')}",
        )
    return doc


def check_run_dir(
    run_dir: Path, cfg: PretrainConfig, overwrite: bool, fingerprints: list[str], images_sha: str
) -> bool:
    """New run, resume (True) or restart: check ``run_dir`` against ``cfg`` without changing anything."""
    resume = False
    if (run_dir / RUN_CONFIG).is_file() and not overwrite:
        saved = read_config(run_dir)
        saved_cfg = PretrainConfig.from_dict(saved[SECTION], where=str(run_dir / RUN_CONFIG))
        diffs = saved_cfg.differences(cfg)
        if diffs:
            raise InputError(
                f"this run folder was started with other settings ({'; '.join(diffs)})",
                where=str(run_dir),
                fix=f"pass the same options to resume it, {spell('--overwrite')} to "
                f"restart it, or another {spell('--out')} for a new run",
            )
        data = saved.get("data") or {}
        if data.get("manifest_sha256") != fingerprints:
            raise InputError(
                "the caches changed since this run started (manifest sha256 differ, or another "
                f"order of {spell('--cache', 'caches')})",
                where=str(run_dir),
                fix=f"resume with the original caches in their order, or restart with {spell('--overwrite')}",
            )
        if data.get("images_sha256") != images_sha:
            raise InputError(
                "the selected images differ from the ones this run started with (another "
                f"{spell('--exclude', 'exclude')}, or changed indexes)",
                where=str(run_dir),
                fix=f"resume with the original {spell('--exclude', 'exclude')} list, or restart with "
                f"{spell('--overwrite')}",
            )
        resume = (run_dir / RUN_LAST).is_file()
    else:  # new, empty, or restarted: only a run's own files may go (the training rule)
        check_restart(run_dir, overwrite, extra=OWN_FILES)
    return resume


OWN_FILES = (RUN_PRETRAIN_IMAGES,)  # a pretraining run's files beyond a training run's


def start_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Start a run folder: with ``overwrite``, delete the previous run's own files (only those)."""
    train_start_run_dir(run_dir, overwrite, extra=OWN_FILES)


def shared_recipe(recipes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The caches' common recipe (size, resize, equalize), or None when they differ."""
    first = dict(recipes[0])
    return first if all(dict(r) == first for r in recipes) else None


def write_run_config(
    run_dir: Path,
    cfg: PretrainConfig,
    env,
    selection,
    fingerprints: list[str],
    recipes: list[dict[str, Any]],
    nets,
    derived: dict[str, Any],
) -> None:
    """``config.yaml``: the config (absolute paths), the data, the model, derived figures, provenance."""
    import yaml

    from cxrbench.common.provenance import provenance

    info = nets.info
    doc = {
        SECTION: {
            **cfg.to_dict(),
            "caches": [str(Path(c).resolve()) for c in cfg.caches],
            "unlabeled": [str(Path(c).resolve()) for c in cfg.unlabeled],
            "exclude": list(selection.exclude),
            "out": str(Path(cfg.out).resolve()),
        },
        "data": {
            **selection.summary(),
            "manifest_sha256": list(fingerprints),
            "recipes": list(recipes),
            "images_file": RUN_PRETRAIN_IMAGES,
        },
        "model": {
            "init": info.init,
            "arch": info.arch,
            "global_size": nets.global_size,
            "local_size": nets.local_size,
            "patch_size": nets.patch_size,
            "mean": list(info.mean),
            "std": list(info.std),
            "model_kwargs": nets.model_kwargs,
            "weights": info.weights,
            "family": info.family,
        },
        "derived": {"world_size": env.world_size, **derived},
        "provenance": {**provenance(), "seed": cfg.seed},
    }
    atomic_write_text(run_dir / RUN_CONFIG, yaml.safe_dump(doc, sort_keys=False))


def pretrained_on(init: str) -> list[str]:
    """The datasets the init itself was pretrained on (its registry entry or its best.json)."""
    from cxrbench.models.contamination import pretraining_datasets

    try:
        return list(pretraining_datasets(init))
    except InputError:
        return []


def best_meta(
    cfg: PretrainConfig,
    nets,
    selection,
    recipes: list[dict[str, Any]],
    epoch: int,
    step: int,
    precision: str,
    loss: float,
) -> dict[str, Any]:
    """``best.json`` of the teacher backbone: what ``checkpoint:`` needs, and the pretraining data."""
    from cxrbench.common.provenance import now_iso

    info = nets.info
    summary = selection.summary()
    return {
        "findings": [],
        "num_classes": 0,
        "image_size": nets.global_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "init": info.init,
        "arch": info.arch,
        "patch_size": nets.patch_size,
        "model_kwargs": nets.model_kwargs,
        "head": [],
        "family": info.family,
        "pretrained_weights": info.weights,
        "license": info.license,
        "recipe": shared_recipe(recipes),
        "weights": "teacher backbone (EMA of the student)",
        "pretraining": {
            "method": method_name(cfg),
            "images_file": RUN_PRETRAIN_IMAGES,
            "base_init": cfg.init,
            "epochs": cfg.epochs,
            **{
                k: summary[k]
                for k in ("images", "patients", "datasets", "per_dataset", "split", "images_sha256", "caches")
            },
        },
        "pretrained_on": sorted(set(pretrained_on(cfg.init)) | set(summary["datasets"])),
        "metric": {"name": "ssl_loss", "value": loss},
        "epoch": epoch,
        "step": step,
        "linear_probe": False,
        "precision": precision,
        "created": now_iso(),
    }

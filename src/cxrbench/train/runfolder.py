"""The run folder (Contract 4): new, resumed or restarted; ``config.yaml``, ``best.json`` and the
patient-overlap guard of checkpoint inits.

:func:`check_run_dir` decides, without changing anything, whether a run starts, resumes (same
identity keys and cache manifest) or is refused; :func:`start_run_dir` then makes the folder.
:func:`read_run_config` is the one reader of a run's ``config.yaml``. :func:`build_run_model`
builds the model and, for every init spelling that loads a checkpoint (``checkpoint:``,
``local-dir:``), first checks that the checkpoint's training patients are not in this cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_write_text, ensure_dir
from cxrbench.common.layout import (
    CACHE_INDEX,
    RUN_CHECKPOINTS,
    RUN_CONFIG,
    RUN_LAST,
    RUN_PRETRAIN_IMAGES,
    is_run_file,
)
from cxrbench.train.config import TrainConfig


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """The parsed ``RUN/config.yaml`` (InputError naming the file when missing or invalid)."""
    from cxrbench.common.yamlio import load_yaml

    path = Path(run_dir) / RUN_CONFIG
    if not path.is_file():
        raise InputError(f"no {RUN_CONFIG} in the run folder", where=str(run_dir),
                         fix=spell("give the folder made by `cxrbench train`",
                                   "give the run folder of cxrbench.train(cfg), cfg.out"))
    doc, _ = load_yaml(path, f"run's {RUN_CONFIG}")
    doc = doc or {}
    if not isinstance(doc, dict):
        raise InputError(f"{RUN_CONFIG} is not a mapping", where=str(path),
                         fix=f"restart the run with {spell('--overwrite')}")
    return doc


def check_run_dir(run_dir: Path, cfg: TrainConfig, overwrite: bool, cache_sha: str) -> bool:
    """New run, resume (True) or restart: check ``run_dir`` against ``cfg`` without changing anything.

    ``overwrite`` restarts only a cxrbench run holding nothing but the files the run contract names:
    a folder that is not a run, or a run holding anything else, is refused with what would go.
    """
    config_path = run_dir / RUN_CONFIG
    resume = False
    if config_path.is_file() and not overwrite:
        saved = read_run_config(run_dir)
        saved_cfg = TrainConfig.from_dict(saved.get("train", {}), where=str(config_path))
        diffs = saved_cfg.differences(cfg)
        if diffs:
            raise InputError(f"this run folder was started with other settings ({'; '.join(diffs)})",
                             where=str(run_dir),
                             fix=f"pass the same options to resume it, {spell('--overwrite')} to restart it, "
                             f"or another {spell('--out')} for a new run")
        saved_sha = (saved.get("cache") or {}).get("manifest_sha256")
        if saved_sha != cache_sha:
            raise InputError(f"the cache changed since this run started (manifest sha256 "
                             f"{str(saved_sha)[:12]}..., now {cache_sha[:12]}...)", where=str(run_dir),
                             fix=f"resume with the original cache, or restart with {spell('--overwrite')}")
        resume = (run_dir / RUN_LAST).is_file()
    else:
        check_restart(run_dir, overwrite)
    return resume


def check_restart(run_dir: Path, overwrite: bool, extra: tuple[str, ...] = ()) -> None:
    """Refuse to start in ``run_dir`` unless it is new, empty, or (with ``overwrite``) a cxrbench run
    holding only the files its contract names (plus ``extra``): what would go is listed."""
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{spell('--out')} is a file, not a folder", where=str(run_dir),
                         fix="choose a folder for the run")
    if not run_dir.exists() or not any(run_dir.iterdir()):
        return
    owned, foreign = run_files(run_dir, extra)
    if not (run_dir / RUN_CONFIG).is_file():
        what = f"{spell('--overwrite')} would delete files it did not write" if overwrite else \
            "it is not empty"
        raise InputError(f"the folder is not a cxrbench run (no {RUN_CONFIG}) and {what}: "
                         f"{_listing(owned + foreign, run_dir)}", where=str(run_dir),
                         fix=f"choose a new or empty {spell('--out')}")
    if foreign:
        raise InputError(f"{spell('--overwrite')} would delete files that are not the run's own: "
                         f"{_listing(foreign, run_dir)}", where=str(run_dir),
                         fix=f"move them out of the run folder, or choose another {spell('--out')}")


def run_files(run_dir: Path, extra: tuple[str, ...] = ()) -> tuple[list[Path], list[Path]]:
    """(files the run contract names, every other file) under ``run_dir``."""
    owned: list[Path] = []
    foreign: list[Path] = []
    for path in sorted(p for p in run_dir.rglob("*") if not p.is_dir()):
        (owned if is_run_file(path.relative_to(run_dir).as_posix(), extra) else foreign).append(path)
    return owned, foreign


def _listing(paths: list[Path], base: Path, limit: int = 10) -> str:
    names = [p.relative_to(base).as_posix() for p in paths]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def start_run_dir(run_dir: Path, overwrite: bool, extra: tuple[str, ...] = ()) -> None:
    """Make the run folder; with ``overwrite``, first delete the previous run's own files (only those,
    as :func:`check_run_dir` allowed), and always the temporary files of writes a kill interrupted."""
    if run_dir.is_dir():
        owned, _ = run_files(run_dir, extra)
        for path in owned:
            if overwrite or path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)
        if overwrite:
            for sub in sorted((p for p in run_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(sub.iterdir()):
                    sub.rmdir()
    ensure_dir(run_dir / RUN_CHECKPOINTS)


def clean_interrupted_writes(run_dir: Path) -> list[Path]:
    """Remove the temporary files atomic writes leave when a run is killed (on every start)."""
    owned, _ = run_files(run_dir) if run_dir.is_dir() else ([], [])
    removed = [p for p in owned if p.name.endswith(".tmp")]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def build_run_model(cfg: TrainConfig, findings: list[str], image_size: int):
    """create_model (head drawn from the seed), after the patient-overlap check when the init loads
    a checkpoint; returns ``(model, ModelInfo, note or None)``."""
    from cxrbench.models.build import create_model
    from cxrbench.models.resolve import parse_init, resolve_init

    notes = []
    if parse_init(cfg.init).is_checkpoint:
        notes.append(check_overlap(Path(str(resolve_init(cfg.init).checkpoint)), cfg))
    model, info = create_model(cfg.init, len(findings), image_size=image_size, seed=cfg.seed,
                               keep_head_for=findings if cfg.keep_shared_head else None)
    if cfg.keep_shared_head:
        kept = ", ".join(info.head_rows_kept) or "none"
        notes.append(f"kept the checkpoint's head rows of {len(info.head_rows_kept)} shared finding(s): "
                     f"{kept}")
    return model, info, "; ".join(notes) or None


def check_overlap(source: Path, cfg: TrainConfig) -> str:
    """Refuse (unless allowed) when the checkpoint's training cache shares patients with this cache.

    Patients are compared by (dataset, patient_id) over every row of both caches' indexes.
    """
    from cxrbench.common.fileio import read_json
    from cxrbench.index.schema import read_index

    meta_path = source.with_suffix(".json")  # best.safetensors -> best.json
    meta = read_json(meta_path) if meta_path.is_file() else {}
    if isinstance(meta, dict) and isinstance(meta.get("pretraining"), dict):
        return check_ssl_overlap(source, cfg)
    a_cache = (meta.get("cache") or {}).get("path") if isinstance(meta, dict) else None
    if a_cache is None:
        if cfg.allow_overlap:
            return "patient overlap with the checkpoint's training data not checked (--allow-overlap)"
        raise InputError(f"cannot check patient overlap: {meta_path.name} beside the checkpoint does not "
                         "record the cache it was trained on", where=str(source),
                         fix="use a checkpoint written by `cxrbench train`, or pass "
                             f"{spell('--allow-overlap')} if you know its training patients are not in this "
                             "cache")
    a_index_path = Path(a_cache) / CACHE_INDEX
    if not a_index_path.is_file():
        if cfg.allow_overlap:
            return f"patient overlap not checked: {a_cache} is gone (--allow-overlap)"
        raise InputError(f"cannot check patient overlap: the checkpoint's training cache {a_cache} is not "
                         "available", where=str(source),
                         fix="make that cache available at its recorded path, or pass "
                             f"{spell('--allow-overlap')}")
    a_index, _ = read_index(a_index_path)
    b_index, _ = read_index(Path(cfg.cache) / CACHE_INDEX)
    a_keys = set(zip(a_index["dataset"].astype(str), a_index["patient_id"].astype(str), strict=True))
    b_keys = set(zip(b_index["dataset"].astype(str), b_index["patient_id"].astype(str), strict=True))
    shared = a_keys & b_keys
    if shared and not cfg.allow_overlap:
        ds, pid = sorted(shared)[0]
        raise InputError(f"{len(shared)} patient(s) of this cache are also in the checkpoint's training "
                         f"cache {a_cache} (e.g. {ds}/{pid}): its weights have seen them", where=cfg.init,
                         fix="pretrain on data without these patients, or pass "
                             f"{spell('--allow-overlap')} to accept it")
    if shared:
        return f"{len(shared)} patient(s) shared with the checkpoint's training cache (--allow-overlap)"
    return f"no patient shared with the checkpoint's training cache ({len(a_keys):,} patients checked)"


def check_ssl_overlap(source: Path, cfg: TrainConfig) -> str:
    """The guard for a self-supervised checkpoint (``cxrbench pretrain``): labels were never read, so
    its images may come from this cache's train split, but none may belong to a val or test patient.

    Patients are compared by (dataset, patient_id) between the run's image list and this cache.
    """
    import pandas as pd

    from cxrbench.index.schema import read_index

    images = source.parent / RUN_PRETRAIN_IMAGES
    if not images.is_file():
        if cfg.allow_overlap:
            return "patients of the self-supervised pretraining not checked (--allow-overlap)"
        raise InputError(f"cannot check patient overlap: the self-supervised checkpoint has no {images.name} "
                         "beside it", where=str(source),
                         fix="copy the whole pretraining run folder, or pass "
                             f"{spell('--allow-overlap')} if you know its images hold no val/test patient of "
                             "this cache")
    seen = pd.read_parquet(images, columns=["dataset", "patient_id"]).astype(str)
    seen_keys = set(zip(seen["dataset"], seen["patient_id"], strict=True))
    b_index, _ = read_index(Path(cfg.cache) / CACHE_INDEX)
    b = b_index[["dataset", "patient_id", "split"]].astype(str)
    held = b[b["split"] != "train"]
    shared = seen_keys & set(zip(held["dataset"], held["patient_id"], strict=True))
    if shared and not cfg.allow_overlap:
        ds, pid = sorted(shared)[0]
        raise InputError(f"{len(shared)} val/test patient(s) of this cache are among the images the "
                         f"self-supervised checkpoint was pretrained on (e.g. {ds}/{pid})", where=cfg.init,
                         fix=f"pretrain with this cache's index in {spell('--exclude', 'exclude=')}, or pass "
                             f"{spell('--allow-overlap')} to accept it")
    train = b[b["split"] == "train"]
    train_keys = set(zip(train["dataset"], train["patient_id"], strict=True))
    note = (f"self-supervised checkpoint: {len(seen_keys & train_keys):,} of this cache's train patients "
            f"were in its (unlabeled) pretraining images")
    if shared:
        return f"{note}; {len(shared)} val/test patient(s) too (--allow-overlap)"
    return f"{note}, no val/test patient ({len(seen_keys):,} pretraining patients checked)"


def write_run_config(run_dir, cfg, env, train_ds, val_ds, info, image_size, cache_sha, derived) -> None:
    """``config.yaml``: the train config, the cache it used, the model, derived figures, provenance."""
    import yaml

    from cxrbench.common.provenance import provenance

    cache = str(Path(cfg.cache).resolve())
    doc = {
        "train": {**cfg.to_dict(), "cache": cache, "out": str(Path(cfg.out).resolve())},
        "cache": {"path": cache, "manifest_sha256": cache_sha, "recipe": train_ds.recipe,
                  "findings": list(train_ds.findings), "n_train": len(train_ds), "n_val": len(val_ds)},
        "model": {"init": info.init, "arch": info.arch, "image_size": image_size,
                  "patch_size": info.patch_size, "mean": list(info.mean), "std": list(info.std),
                  "model_kwargs": info.model_kwargs, "weights": info.weights, "family": info.family},
        "derived": {"world_size": env.world_size, **derived},
        "provenance": {**provenance(), "seed": cfg.seed},
    }
    atomic_write_text(run_dir / RUN_CONFIG, yaml.safe_dump(doc, sort_keys=False))


def best_meta(cfg, info, findings, image_size, train_ds, cache_sha, head_keys, val, epoch, step,
              precision, adaptation: dict[str, Any] | None = None) -> dict[str, Any]:
    """``best.json``: everything needed to use best.safetensors without the run's config;
    ``adaptation`` adds what the adaptation records (``adaptation``, ``trainable_params``, ...)."""
    from cxrbench.common.provenance import now_iso

    return {
        "findings": list(findings), "num_classes": len(findings), "image_size": image_size,
        "mean": list(info.mean), "std": list(info.std), "init": info.init, "arch": info.arch,
        "patch_size": info.patch_size, "model_kwargs": info.model_kwargs, "head": head_keys,
        "family": info.family, "pretrained_weights": info.weights, "license": info.license,
        "recipe": dict(train_ds.recipe),
        "metric": {"name": "val_mean_auroc", "value": val["mean_auroc"], "per_finding": val["auroc"]},
        "epoch": epoch, "step": step, "linear_probe": cfg.linear_probe, "precision": precision,
        "cache": {"path": str(Path(cfg.cache).resolve()), "manifest_sha256": cache_sha},
        **({"training_labels": train_ds.label_changes} if train_ds.label_changes else {}),
        "created": now_iso(),
        **(adaptation or {"adaptation": cfg.adaptation}),
    }


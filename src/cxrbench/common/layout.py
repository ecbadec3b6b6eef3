"""Every on-disk name of Contracts 2-4, in one place, with the small path helpers that use them.

An index (Contract 2) is one Parquet file with its report beside it; a cache (Contract 3) and a
run (Contract 4) are folders whose files are named here. Code elsewhere asks this module for a
path instead of spelling a file name, so a name changes in one line and a reader finds every
file of a contract below.
"""

from __future__ import annotations

import os
from pathlib import Path

# --- Contract 2: the index ---------------------------------------------------------------------
INDEX_FILE = "index.parquet"  # the conventional name (a cache's copy, a study's index)
INDEX_REPORT_SUFFIX = ".report.json"
FINDINGS_META_KEY = b"cxrbench.findings"  # Parquet schema metadata: the ordered finding list


def index_report_path(index_path: str | os.PathLike) -> Path:
    """``foo/bar.parquet`` -> ``foo/bar.report.json`` (where an index's report lives)."""
    p = Path(index_path)
    return p.with_name(p.name.removesuffix(".parquet") + INDEX_REPORT_SUFFIX)


# --- Contract 3: the cache -----------------------------------------------------------------------
CACHE_IMAGES = "images.u8"  # raw uint8 [N, S, S], C order
CACHE_INDEX = INDEX_FILE  # the index rows in cache order, plus cache_row
CACHE_MANIFEST = "manifest.json"  # written last: its presence means the cache is complete
CACHE_BUILD_DIR = ".build"  # only while a build runs: chunk records for resume
CACHE_LOCK = ".prepare.lock"
CACHE_FILES: tuple[str, ...] = (CACHE_IMAGES, CACHE_INDEX, CACHE_MANIFEST)


# --- Contract 4: the run folder -------------------------------------------------------------------
RUN_CONFIG = "config.yaml"
RUN_CHECKPOINTS = "checkpoints"
RUN_LAST = f"{RUN_CHECKPOINTS}/last.pt"
RUN_BEST_WEIGHTS = "best.safetensors"
RUN_BEST_META = "best.json"
RUN_LOG = "log.jsonl"
RUN_TENSORBOARD = "tensorboard"
RUN_EVAL = "eval"
PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
SUBGROUPS_FILE = "subgroups.json"  # beside metrics.json: per-subgroup metrics, gaps, underdiagnosis
CALIBRATION_FILE = "calibration.json"  # beside metrics.json: ECE, Brier, slope, reliability, recalibration
EVAL_EXTRA_FILES: tuple[str, ...] = (SUBGROUPS_FILE, CALIBRATION_FILE)
# A metadata-only baseline folder (`cxrbench shortcut`): the fitted model, plus eval/<split>/ as in a run.
SHORTCUT_MODEL = "shortcut.json"
# A folder of saliency overlays (`cxrbench predict --saliency OUT`): the list of the files written there.
SALIENCY_MANIFEST = "saliency.json"
# Everything a run folder may hold; `train --overwrite` removes these and nothing else.
RUN_OUTPUTS: tuple[str, ...] = (RUN_CONFIG, RUN_CHECKPOINTS, RUN_BEST_WEIGHTS, RUN_BEST_META, RUN_LOG,
                                RUN_TENSORBOARD, RUN_EVAL)


def run_file(run_dir: str | os.PathLike, name: str) -> Path:
    """``RUN/<name>`` for one of the run names above."""
    return Path(run_dir) / name


def eval_dir(run_dir: str | os.PathLike, split: str) -> Path:
    """``RUN/eval/SPLIT``: predictions.parquet and metrics.json of one split."""
    return Path(run_dir) / RUN_EVAL / split


def predictions_path(run_dir: str | os.PathLike, split: str) -> Path:
    """``RUN/eval/SPLIT/predictions.parquet``."""
    return eval_dir(run_dir, split) / PREDICTIONS_FILE


def metrics_path(run_dir: str | os.PathLike, split: str) -> Path:
    """``RUN/eval/SPLIT/metrics.json``."""
    return eval_dir(run_dir, split) / METRICS_FILE


def subgroups_path(run_dir: str | os.PathLike, split: str) -> Path:
    """``RUN/eval/SPLIT/subgroups.json``."""
    return eval_dir(run_dir, split) / SUBGROUPS_FILE


def calibration_path(run_dir: str | os.PathLike, split: str) -> Path:
    """``RUN/eval/SPLIT/calibration.json``."""
    return eval_dir(run_dir, split) / CALIBRATION_FILE

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


# The localization ground truth beside an index (boxes and masks, one row per region, keyed by the
# index's image_id; see cxrbench.index.regions): ``foo/bar.parquet`` -> ``foo/bar.regions.parquet``.
# A cache holds its own copy in cache pixels beside its index: ``CACHE/index.regions.parquet``.
REGIONS_SUFFIX = ".regions.parquet"
REGIONS_META_KEY = b"cxrbench.regions"  # Parquet schema metadata: space (image/cache), index hash, ...


def regions_path(index_path: str | os.PathLike) -> Path:
    """``foo/bar.parquet`` -> ``foo/bar.regions.parquet`` (where an index's regions live)."""
    p = Path(index_path)
    return p.with_name(p.name.removesuffix(".parquet") + REGIONS_SUFFIX)


# --- Contract 3: the cache -----------------------------------------------------------------------
CACHE_IMAGES = "images.u8"  # raw uint8 [N, S, S], C order
CACHE_INDEX = INDEX_FILE  # the index rows in cache order, plus cache_row
CACHE_MANIFEST = "manifest.json"  # written last: its presence means the cache is complete
CACHE_BUILD_DIR = ".build"  # only while a build runs: chunk records for resume
CACHE_LOCK = ".prepare.lock"
CACHE_REGIONS = "index.regions.parquet"  # optional: the index's regions in cache pixels (= regions_path)
CACHE_FILES: tuple[str, ...] = (CACHE_IMAGES, CACHE_INDEX, CACHE_MANIFEST)
# Frozen-backbone embeddings, written by `train --adaptation linear|knn` and the evaluation of knn runs
# into a sub-folder of the cache (the cache's own files are never touched):
# CACHE/embeddings/<key>/{embeddings.json, <split>.safetensors}, one <key> per (weights, model, size,
# precision).
CACHE_EMBEDDINGS = "embeddings"
EMBEDDINGS_META = "embeddings.json"
EMBEDDINGS_LOCK = ".embeddings.lock"


def embeddings_dir(cache_dir: str | os.PathLike, key: str) -> Path:
    """``CACHE/embeddings/<key>``: the embeddings of one frozen backbone over the cache's splits."""
    return Path(cache_dir) / CACHE_EMBEDDINGS / key


def embeddings_file(cache_dir: str | os.PathLike, key: str, split: str) -> Path:
    """``CACHE/embeddings/<key>/<split>.safetensors`` (tensor ``embeddings``, float32 [N, D])."""
    return embeddings_dir(cache_dir, key) / f"{split}.safetensors"


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
# beside metrics.json with `evaluate --localization`: saliency maps scored against the boxes and masks
# (summary, settings) and the per-image scores behind it (paired tests between models)
LOCALIZATION_FILE = "localization.json"
LOCALIZATION_ROWS = "localization.parquet"
# beside metrics.json with `evaluate --study-level max|mean`: the metrics of image scores aggregated per study
STUDY_METRICS_FILE = "study_metrics.json"
EVAL_EXTRA_FILES: tuple[str, ...] = (SUBGROUPS_FILE, CALIBRATION_FILE, LOCALIZATION_FILE, LOCALIZATION_ROWS,
                                     STUDY_METRICS_FILE)
# A metadata-only baseline folder (`cxrbench shortcut`): the fitted model, plus eval/<split>/ as in a run.
SHORTCUT_MODEL = "shortcut.json"
# A folder of saliency overlays (`cxrbench predict --saliency OUT`): the list of the files written there.
SALIENCY_MANIFEST = "saliency.json"
RUN_TRACKER = "tracker.json"  # which MLflow / W&B run this run logs to (resumed with it)
RUN_WANDB = "wandb"  # W&B's own folder (offline runs, logs): everything in it is the run's
RUN_KNN_BANK = "knn_bank.safetensors"  # adaptation knn: L2-normalized train embeddings + labels it votes with
RUN_ZEROSHOT = "zeroshot.safetensors"  # adaptation zeroshot: its head (prompts' text embeddings, ...)
# The top-level entries of a run folder; `train --overwrite` removes only files is_run_file accepts.
RUN_OUTPUTS: tuple[str, ...] = (RUN_CONFIG, RUN_CHECKPOINTS, RUN_BEST_WEIGHTS, RUN_BEST_META, RUN_LOG,
                                RUN_TENSORBOARD, RUN_EVAL, RUN_TRACKER, RUN_WANDB, RUN_KNN_BANK, RUN_ZEROSHOT)
RUN_TOP_FILES: tuple[str, ...] = (RUN_CONFIG, RUN_BEST_WEIGHTS, RUN_BEST_META, RUN_LOG, RUN_TRACKER,
                                  RUN_KNN_BANK, RUN_ZEROSHOT)
RUN_EVAL_FILES: tuple[str, ...] = (PREDICTIONS_FILE, METRICS_FILE, *EVAL_EXTRA_FILES)  # RUN/eval/<split>/
RUN_EVAL_SPLITS: tuple[str, ...] = ("train", "val", "test")
TENSORBOARD_PREFIX = "events.out.tfevents."


def is_temp_of(name: str, target: str) -> bool:
    """True for the temporary file an interrupted atomic write of ``target`` leaves (``.target.*.tmp``)."""
    return name.startswith(f".{target}.") and name.endswith(".tmp")


def is_run_file(rel: str, extra: tuple[str, ...] = ()) -> bool:
    """True when the run contract names the file ``rel`` (a path relative to the run folder, with
    ``/``): config, weights, log, last.pt, TensorBoard events, eval/<split>/ results, the top-level
    ``extra`` names of a run kind (a pretraining run's image list), and the temporary files their
    atomic writes leave when killed. Nothing else is cxrbench's to delete."""
    parts = rel.split("/")
    name = parts[-1]

    def owned(allowed: list[str] | tuple[str, ...]) -> bool:
        return name in allowed or any(is_temp_of(name, a) for a in allowed)

    if len(parts) == 1:
        return owned((*RUN_TOP_FILES, *extra))
    if parts[0] == RUN_CHECKPOINTS and len(parts) == 2:
        return owned([RUN_LAST.split("/")[-1]])
    if parts[0] == RUN_TENSORBOARD:
        return name.startswith(TENSORBOARD_PREFIX)
    if parts[0] == RUN_WANDB:  # written by the W&B tracker for this run
        return True
    if parts[0] == RUN_EVAL and len(parts) == 3 and parts[1] in RUN_EVAL_SPLITS:
        return owned(RUN_EVAL_FILES)
    return False


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


# beside an external validation's metrics.json: the source threshold against the target's optimum
OPERATING_FILE = "operating.json"

# --- comparisons (`cxrbench compare --out`, a study's compare and pooled steps): one format, see
# cxrbench.evaluate.compare.write_comparison; a pooled file adds the arms' metrics pooled over seeds
COMPARISON_JSON = "comparison.json"
COMPARISON_CSV = "comparison.csv"
POOLED_FILE = "pooled.json"

# --- a study's report folder ------------------------------------------------------------------------------
REPORT_HTML = "index.html"
REPORT_MARKDOWN = "report.md"
RESULTS_CSV = "results.csv"
REPORT_FILES: tuple[str, ...] = (REPORT_HTML, REPORT_MARKDOWN, RESULTS_CSV)
STUDY_COPY = "study.yaml"  # the validated config as run, in the study folder
DEMO_CONFIG = "demo.yaml"  # `cxrbench demo`: the study it ran, in its output folder

# --- a pretraining run folder (cxrbench pretrain): Contract 4's names plus the images it used --------
RUN_PRETRAIN_IMAGES = "pretrain_images.parquet"  # dataset, image_id, patient_id, cache of every image

# --- an exported model folder (`cxrbench export`): timm / Hugging Face hub layout, ONNX --------------
EXPORT_CONFIG = "config.json"  # timm's hub config: architecture, num_classes, label_names, pretrained_cfg
EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CARD = "README.md"  # the model card
EXPORT_THRESHOLDS = "thresholds.json"
EXPORT_ONNX = "model.onnx"
EXPORT_MANIFEST = ".cxrbench-export.json"  # what the export wrote (it replaces only these files)

"""Saliency scored against the localization ground truth: is the model right for the right reasons?

:func:`localization_rows` draws the saliency map of every (image, finding) of a cache split that has a
box or mask of a finding the run predicts (the cache's regions, :meth:`cxrbench.cache.read.Cache.
regions`, in cache pixels), with the run's own classifier as its method builds it for scoring
(:meth:`cxrbench.train.methods.base.Method.scorer`; a kNN run has none and is refused in one line),
on the pixels the run scores (its eval transform), in float32. Maps (Grad-CAM or attention rollout,
:mod:`cxrbench.evaluate.saliency`) are resized to the cache's pixels (bilinear) and scaled to [0, 1];
the regions of one (image, finding) are united (several readers, several parts). Each map is scored
against its region by :func:`cxrbench.stats.localization.image_scores`: pointing game, energy inside
the region, IoU and hit at the stated map levels, each beside its chance level.

:func:`evaluate_localization` adds the statistics (:mod:`cxrbench.evaluate.localization_stats`:
per finding the mean with its patient-bootstrap CI, against chance) and writes, beside the split's
``metrics.json``, ``localization.parquet`` (the per-image rows, for paired tests between models) and
``localization.json`` (settings, summary table, what could not be scored). ``cxrbench evaluate RUN
--localization`` and the study's ``localization`` steps call it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.layout import CACHE_REGIONS
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.localization_stats import ROW_COLUMNS, summarize_localization
from cxrbench.evaluate.saliency import SALIENCY_METHODS
from cxrbench.stats.bootstrap import CLUSTERS
from cxrbench.stats.localization import image_scores, metric_names

LOCALIZATION_FORMAT = "cxrbench.localization/1"
DEFAULT_LEVELS: tuple[float, ...] = (0.5,)
# A map binarized at a level "hits" the region when their IoU reaches this: the lenient end of the
# IoU criteria weakly supervised localization on chest radiographs is reported at (0.1 ... 0.7).
DEFAULT_HIT_IOU = 0.1


class NothingToScore(InputError):
    """The split has no region of a finding the run predicts (no regions in the cache, none in the split,
    or none of a predicted finding): :func:`evaluate_localization` with ``missing_ok`` records it."""


@dataclass(frozen=True)
class LocalizationOptions:
    """What :func:`localization_rows` scores: the saliency ``method`` (``gradcam`` or ``rollout``), the
    map ``levels`` in (0, 1] at which maps are binarized (maps are scaled to [0, 1] per image), the
    IoU a binarized map needs to count as a hit, the saliency batch size, and optionally only some
    ``findings``."""

    method: str = "gradcam"
    levels: tuple[float, ...] = DEFAULT_LEVELS
    hit_iou: float = DEFAULT_HIT_IOU
    batch_size: int = 16
    findings: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_choice("--saliency-method", self.method, SALIENCY_METHODS)
        levels = tuple(float(t) for t in self.levels)
        if not levels or len(set(levels)) != len(levels) or not all(0 < t <= 1 for t in levels):
            raise InputError(f"map levels {list(self.levels)}", where="--localization-level",
                             fix="give one or more distinct levels in (0, 1], e.g. 0.5")
        object.__setattr__(self, "levels", levels)
        if not 0 < float(self.hit_iou) <= 1:
            raise InputError(f"hit IoU {self.hit_iou}", where="--hit-iou", fix="give a number in (0, 1]")
        if int(self.batch_size) < 1:
            raise InputError(f"batch size {self.batch_size}", where="--batch-size", fix="use 1 or more")

    def describe(self) -> dict[str, Any]:
        """The settings as stored with the results."""
        return {"method": self.method, "levels": list(self.levels), "hit_iou": float(self.hit_iou),
                "metrics": metric_names(self.levels)}


def check_classifier(meta: dict[str, Any], where: str) -> None:
    """InputError (one line) for a run whose method has no classifier network to explain (kNN)."""
    from cxrbench.train.methods import method_of

    method = method_of(meta)
    if not method.has_classifier:
        raise InputError(f"{method.no_classifier()}; saliency maps, and so their localization, need one",
                         where=where, fix="score the localization of a full, lora or linear run of the "
                                          "same init")


def region_masks(regions: pd.DataFrame, size: int) -> dict[tuple[str, str], np.ndarray]:
    """(image id, finding) -> the union of its regions as a boolean ``(size, size)`` mask (cache pixels)."""
    from cxrbench.index.regions import region_mask

    out: dict[tuple[str, str], np.ndarray] = {}
    for row in regions.to_dict(orient="records"):
        key = (str(row["image_id"]), str(row["finding"]))
        mask = region_mask(row, size, size, where=f"region of image {key[0]!r}")
        out[key] = out[key] | mask if key in out else mask
    return {k: v for k, v in out.items() if v.any()}


def _maps_at(maps: np.ndarray, size: int) -> np.ndarray:
    """(B, s, s) maps -> (B, size, size) in [0, 1] (bilinear, then min-max scaled per map)."""
    import torch

    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    if maps.shape[-1] != size:
        t = torch.nn.functional.interpolate(torch.from_numpy(maps)[:, None], size=(size, size),
                                            mode="bilinear", align_corners=False)
        maps = t[:, 0].numpy()
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0.0).astype(np.float32)


def localization_rows(run_dir: str | os.PathLike, split: str = "test", *,
                      cache_dir: str | os.PathLike | None = None,
                      options: LocalizationOptions | None = None,
                      device: Any = None) -> pd.DataFrame:
    """Scores of the run's saliency maps against every region of ``split``: columns
    :data:`~cxrbench.evaluate.localization_stats.ROW_COLUMNS`, one row per image, finding and metric.
    ``attrs["coverage"]`` says what could not be scored (findings without regions, regions of findings
    the run does not predict)."""
    from cxrbench.cache.read import open_cache
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.evaluate.inference import check_recipe, run_cache_dir, run_scorer
    from cxrbench.evaluate.saliency import require_gradcam, saliency_maps
    from cxrbench.train.checkpoint import read_best_meta

    opts = options or LocalizationOptions()
    run_dir = Path(run_dir)
    meta = read_best_meta(run_dir)
    check_classifier(meta, str(run_dir))
    if opts.method == "gradcam":
        require_gradcam()
    cache_dir = Path(cache_dir) if cache_dir is not None else run_cache_dir(run_dir)
    if not (cache_dir / CACHE_REGIONS).is_file():
        raise NothingToScore("the cache has no localization ground truth (boxes or masks)",
                             where=str(cache_dir),
                             fix="index a source that releases boxes or masks, then `cxrbench prepare` it")
    regions = open_cache(cache_dir).regions()
    ds = CacheDataset(cache_dir, split=split)
    check_recipe(meta, ds.recipe, where=str(cache_dir))
    findings = _findings(meta, opts, regions, str(run_dir))
    position = pd.Index(ds.image_ids.astype(str))
    in_split = regions[regions["image_id"].astype(str).isin(position)]
    masks = region_masks(in_split[in_split["finding"].isin(findings)], int(ds.size))
    if not masks:
        raise NothingToScore(f"no image of the {split} split has a region of {', '.join(findings)}",
                             where=str(cache_dir), fix="score a split whose images have boxes or masks")
    scorer = run_scorer(run_dir, device)
    if scorer.classifier is None:  # a method that says it has one must build it
        raise InputError("the run's scorer has no classifier network", where=str(run_dir),
                         fix="re-train the run with this version of cxrbench")
    records: list[tuple[Any, ...]] = []
    for f in findings:
        ids = sorted(i for i, g in masks if g == f)
        where = position.get_indexer(ids)
        cls = list(meta["findings"]).index(f)
        for start in range(0, len(ids), opts.batch_size):
            part = where[start:start + opts.batch_size]
            pixels, _ = ds.batch(part)
            x = scorer.transform(pixels.to(scorer.device))
            maps = _maps_at(saliency_maps(scorer.classifier, x, [cls], opts.method)[:, 0], int(ds.size))
            for b, pos in enumerate(part):
                image_id, patient = str(ds.image_ids[pos]), str(ds.patient_ids[pos])
                region = masks[(image_id, f)]
                area = float(region.mean())
                for metric, value, chance in image_scores(maps[b], region, opts.levels, opts.hit_iou):
                    records.append((image_id, patient, f, metric, value, chance, area))
    rows = pd.DataFrame.from_records(records, columns=list(ROW_COLUMNS))
    rows.attrs["coverage"] = _coverage(meta, findings, in_split, masks)
    return rows


def _findings(meta: dict[str, Any], opts: LocalizationOptions, regions: pd.DataFrame,
              where: str) -> list[str]:
    """The run's findings to score: those with regions (or ``opts.findings``, each predicted)."""
    predicted = list(meta["findings"])
    if opts.findings is not None:
        for f in opts.findings:
            check_choice("findings", f, predicted)
        return list(opts.findings)
    with_regions = set(regions["finding"].astype(str))
    chosen = [f for f in predicted if f in with_regions]
    if not chosen:
        raise NothingToScore(f"the cache's regions ({', '.join(sorted(with_regions)) or 'none'}) are of no "
                         "finding the run predicts", where=where,
                         fix=f"the run predicts {', '.join(predicted)}")
    return chosen


def _coverage(meta: dict[str, Any], findings: list[str], regions: pd.DataFrame,
              masks: dict[tuple[str, str], np.ndarray]) -> dict[str, Any]:
    """What was scored, and what was not and why (nothing is left out silently)."""
    predicted = set(meta["findings"])
    not_predicted = regions[~regions["finding"].isin(predicted)]
    return {
        "images": {f: sum(1 for _, g in masks if g == f) for f in findings},
        "no_regions_in_split": sorted(f for f in meta["findings"]
                                      if f not in {g for _, g in masks}),
        "regions_of_unpredicted_findings": {str(k): int(v) for k, v in
                                            not_predicted["finding"].value_counts().sort_index().items()},
    }


def evaluate_localization(run_dir: str | os.PathLike, split: str = "test", *,
                          cache_dir: str | os.PathLike | None = None,
                          options: LocalizationOptions | None = None, device: Any = None,
                          n_resamples: int = 1000, seed: int = 0, cluster: str = "patient",
                          ci_level: float = 0.95, out_dir: str | os.PathLike | None = None,
                          missing_ok: bool = False) -> dict[str, Any]:
    """Score the run's saliency maps on ``split`` against the regions, summarize them and write
    ``localization.parquet`` and ``localization.json`` into ``out_dir`` (default ``RUN/eval/SPLIT``);
    returns the JSON document (``scored``; its ``table``: :data:`~cxrbench.evaluate.localization_stats.
    SUMMARY_COLUMNS` records). ``missing_ok``: a split with nothing to score (:class:`NothingToScore`)
    writes a document saying why (``scored: false``, ``reason``) instead of raising."""
    from cxrbench.common.fileio import atomic_path, atomic_write_json, file_sha256
    from cxrbench.common.layout import LOCALIZATION_FILE, LOCALIZATION_ROWS, RUN_BEST_WEIGHTS, eval_dir
    from cxrbench.common.provenance import provenance

    opts = options or LocalizationOptions()
    check_choice("--split", split, ("train", "val", "test"))
    check_choice("--cluster", cluster, CLUSTERS)
    out = Path(out_dir) if out_dir is not None else eval_dir(run_dir, split)
    doc: dict[str, Any] = {"format": LOCALIZATION_FORMAT, "run": str(run_dir), "split": split,
                           "cache": str(cache_dir) if cache_dir is not None else None, **opts.describe(),
                           "bootstrap": {"n_resamples": int(n_resamples), "seed": int(seed),
                                         "cluster": cluster},
                           "ci": {"level": float(ci_level)},
                           "weights_sha256": file_sha256(Path(run_dir) / RUN_BEST_WEIGHTS)}
    try:
        rows = localization_rows(run_dir, split, cache_dir=cache_dir, options=opts, device=device)
    except NothingToScore as e:
        if not missing_ok:
            raise
        out.mkdir(parents=True, exist_ok=True)
        (out / LOCALIZATION_ROWS).unlink(missing_ok=True)  # ours: rows of an earlier scoring
        doc.update({"scored": False, "reason": e.what, "table": [], "provenance": provenance()})
        atomic_write_json(out / LOCALIZATION_FILE, doc)
        return doc
    table = summarize_localization(rows, n_resamples=n_resamples, seed=seed, cluster=cluster,
                                   ci_level=ci_level, where=f"{split} localization of {run_dir}")
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / LOCALIZATION_ROWS) as tmp:
        rows.to_parquet(tmp, index=False)
    doc.update({"scored": True, "coverage": rows.attrs["coverage"], "table": table.to_dict(orient="records"),
                "rows_sha256": file_sha256(out / LOCALIZATION_ROWS), "provenance": provenance()})
    atomic_write_json(out / LOCALIZATION_FILE, doc)
    return doc


def read_localization(folder: str | os.PathLike) -> tuple[dict[str, Any], pd.DataFrame]:
    """(``localization.json``, ``localization.parquet`` rows) of an evaluation folder, checked: the
    rows must be the ones the summary was computed from."""
    from cxrbench.common.fileio import file_sha256, read_json
    from cxrbench.common.layout import LOCALIZATION_FILE, LOCALIZATION_ROWS

    folder = Path(folder)
    doc = read_json(folder / LOCALIZATION_FILE)
    if not isinstance(doc, dict) or doc.get("format") != LOCALIZATION_FORMAT:
        raise InputError("not a cxrbench localization file", where=str(folder / LOCALIZATION_FILE),
                         fix="run `cxrbench evaluate RUN --localization` again")
    if not doc.get("scored", True):
        return doc, pd.DataFrame(columns=list(ROW_COLUMNS))
    rows_path = folder / LOCALIZATION_ROWS
    if not rows_path.is_file() or file_sha256(rows_path) != doc.get("rows_sha256"):
        raise InputError("the per-image localization rows are missing or belong to another scoring",
                         where=str(rows_path), fix="run `cxrbench evaluate RUN --localization` again")
    return doc, pd.read_parquet(rows_path)


def localization_table(doc: dict[str, Any], levels: Sequence[float] | None = None) -> pd.DataFrame:
    """The summary table of a ``localization.json`` as a DataFrame (optionally only some levels)."""
    from cxrbench.evaluate.localization_stats import SUMMARY_COLUMNS

    table = pd.DataFrame(doc.get("table") or [], columns=list(SUMMARY_COLUMNS))
    if levels is not None:
        keep = set(metric_names(levels))
        table = table[table["metric"].isin(keep)].reset_index(drop=True)
    return table

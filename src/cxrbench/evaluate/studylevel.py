"""Study-level scoring: image scores aggregated per study (frontal and lateral of one visit), with the
metrics at that level.

Some test sets are labelled per study, not per image (CheXpert's radiologist test set; MIMIC-CXR's
labels are per study too): every image of a study carries the study's labels, and a reader calls the
study, having seen all of its images. :func:`aggregate_studies` turns a split's Contract-4 predictions
into predictions of its studies: the score of a study is the ``max`` (any image suggests the finding)
or the ``mean`` of its images' scores; its label is the largest known label of its images (1 when any
image is labelled positive; unknown when none is known), and studies whose images disagree are
counted per finding (``label_conflicts``: 0 for a set labelled per study). A study is the index's
``study_id`` within a patient (``patient_id/study_id``); an image without a study id is its own study.
The study-level frame is itself a Contract-4 frame (``image_id`` holds the study key), so it is scored
by :func:`cxrbench.evaluate.scoring.evaluate_predictions` with the same settings: thresholds chosen on
the validation split's studies, the same patient-cluster resamples.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.predictions import PredictionSet, prediction_findings

AGGREGATIONS: tuple[str, ...] = ("max", "mean")
STUDY_LEVEL_FORMAT = "cxrbench.metrics/1"  # a metrics.json document, with level "study"


def study_keys(patient_ids: np.ndarray, study_ids: np.ndarray, image_ids: np.ndarray) -> np.ndarray:
    """``patient/study`` per image; ``patient/image:<image_id>`` where the study id is missing."""
    studies = pd.Series(np.asarray(study_ids, dtype=object))
    text = studies.astype(str).str.strip()
    missing = studies.isna() | (text == "")
    own = "image:" + pd.Series(np.asarray(image_ids, dtype=object)).astype(str)
    pats = pd.Series(np.asarray(patient_ids, dtype=object)).astype(str)
    return (pats + "/" + text.where(~missing, own)).to_numpy(dtype=object)


def aggregate_studies(df: pd.DataFrame, study_ids: np.ndarray, how: str = "max",
                      where: str = "predictions") -> tuple[pd.DataFrame, dict[str, Any]]:
    """A Contract-4 predictions frame of the studies of ``df`` (``study_ids`` aligned with its rows), and
    what was aggregated (studies, images, studies with several images, label conflicts per finding)."""
    check_choice("--study-level", how, AGGREGATIONS)
    findings = prediction_findings(df.columns, where)
    if len(study_ids) != len(df):
        raise ValueError(f"{len(study_ids)} study ids for {len(df)} predictions")
    keys = study_keys(df["patient_id"].to_numpy(), np.asarray(study_ids, dtype=object),
                      df["image_id"].to_numpy())
    work = pd.DataFrame({"image_id": keys, "patient_id": df["patient_id"].astype(str).to_numpy()})
    for f in findings:
        work[f"p_{f}"] = pd.to_numeric(df[f"p_{f}"]).to_numpy(np.float64)
        work[f"y_{f}"] = pd.to_numeric(df[f"y_{f}"]).to_numpy(np.float64)
    groups = work.groupby("image_id", sort=True)
    out = groups[["patient_id"]].first().reset_index()
    conflicts: dict[str, int] = {}
    for f in findings:
        out[f"p_{f}"] = getattr(groups[f"p_{f}"], how)().to_numpy()
        labels = groups[f"y_{f}"]
        out[f"y_{f}"] = labels.max().to_numpy()  # NaN only when no image of the study has a known label
        conflicts[f] = int(((labels.min() == 0) & (labels.max() == 1)).sum())
    sizes = groups.size()
    out = out[["image_id", "patient_id", *[c for f in findings for c in (f"p_{f}", f"y_{f}")]]]
    info = {"aggregation": how, "studies": int(len(out)), "images": int(len(df)),
            "studies_with_several_images": int((sizes > 1).sum()), "largest_study": int(sizes.max()),
            "label_conflicts": conflicts}
    return out, info


def study_level_frame(df: pd.DataFrame, metadata: str | os.PathLike, how: str,
                      where: str) -> tuple[pd.DataFrame, dict[str, Any]]:
    """:func:`aggregate_studies` of ``df`` with the study ids read from ``metadata`` (a cache folder or an
    index file holding its images)."""
    from cxrbench.evaluate.metadata import align_metadata, read_metadata

    meta = align_metadata(df["image_id"].astype(str).to_numpy(), read_metadata(metadata, ["study_id"]), where)
    return aggregate_studies(df, meta["study_id"].to_numpy(dtype=object), how, where)


def study_level_metrics(test: pd.DataFrame | PredictionSet, val: pd.DataFrame | PredictionSet | None,
                        metadata: str | os.PathLike | None, how: str, *, where: str = "predictions",
                        **scoring: Any) -> dict[str, Any]:
    """The metrics document of the studies of ``test`` (thresholds from ``val``'s studies when the
    policy is ``val``): :func:`~cxrbench.evaluate.scoring.evaluate_predictions` with ``scoring``, plus
    ``level: study`` and the aggregation's counts."""
    from cxrbench.evaluate.scoring import evaluate_predictions

    check_choice("--study-level", how, AGGREGATIONS)
    if metadata is None:
        raise InputError("no index to read the images' studies from (the run's cache is unknown)",
                         where="--study-level", fix="give --metadata INDEX.parquet or --cache CACHE")
    frames: dict[str, pd.DataFrame] = {}
    infos: dict[str, dict[str, Any]] = {}
    for name, part in (("test", test), ("val", val)):
        if part is None:
            continue
        frame = _frame(part)
        frames[name], infos[name] = study_level_frame(frame, metadata, how, f"{where} ({name})")
    test_ps = PredictionSet.from_frame(frames["test"], where=f"{where}, studies")
    val_ps = (PredictionSet.from_frame(frames["val"], where=f"{where}, val studies") if "val" in frames
              else None)
    result = evaluate_predictions(test_ps, val_ps, **scoring)
    return {**result, "level": "study", "aggregation": how, "studies": infos["test"],
            **({"val_studies": infos["val"]} if "val" in infos else {}), "metadata": str(metadata)}


def _frame(part: pd.DataFrame | PredictionSet) -> pd.DataFrame:
    if isinstance(part, pd.DataFrame):
        return part
    cols: dict[str, Any] = {"image_id": part.image_ids, "patient_id": part.patient_ids}
    for j, f in enumerate(part.findings):
        cols[f"p_{f}"] = part.scores[:, j]
        cols[f"y_{f}"] = part.labels[:, j]
    return pd.DataFrame(cols)


def study_summary(doc: Mapping[str, Any]) -> str:
    """One line: the aggregation, the studies and the macro AUROC at study level."""
    mean = ((doc.get("macro") or {}).get("metrics") or {}).get("auroc") or {}
    studies = doc.get("studies") or {}
    value = mean.get("value")
    text = f"{value:.3f} [{mean.get('ci_low', float('nan')):.3f}, {mean.get('ci_high', float('nan')):.3f}]" \
        if isinstance(value, float) else "n/a"
    return (f"study level ({doc.get('aggregation')} of image scores): mean AUROC {text} over "
            f"{studies.get('studies')} studies ({studies.get('studies_with_several_images')} with several "
            "images)")

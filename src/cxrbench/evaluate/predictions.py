"""The Contract-4 predictions file of one split: ``RUN/eval/SPLIT/predictions.parquet``.

Columns ``image_id``, ``patient_id`` and per finding ``p_<name>`` (score) and ``y_<name>``
(1/0/NaN). :class:`PredictionSet` validates a frame and puts it in canonical order (sorted by
``image_id``), so bootstrap resamples depend only on (seed, B, cluster, the set of images) and
every model evaluated on the same images gets the same resamples (see
:mod:`cxrbench.stats.bootstrap`). Files written by any other tool in this format work too.
"""


from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common import layout
from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_path
from cxrbench.common.validation import check_columns
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt

PREDICTIONS_FILE = layout.PREDICTIONS_FILE
METRICS_FILE = layout.METRICS_FILE
WEIGHTS_FILE = layout.RUN_BEST_WEIGHTS
PREDICTIONS_META_KEY = b"cxrbench.predictions"


eval_dir = layout.eval_dir


@dataclass(frozen=True)
class PredictionSet:
    """Validated predictions of one split, in canonical order (sorted by image id).

    ``labels`` and ``scores`` are float64 (n, K) in the order of ``findings``.
    """

    image_ids: np.ndarray
    patient_ids: np.ndarray
    findings: list[str]
    labels: np.ndarray
    scores: np.ndarray
    where: str = "predictions"

    @property
    def n(self) -> int:
        """Number of images."""
        return int(self.image_ids.size)

    @classmethod
    def from_frame(cls, df: pd.DataFrame, where: str = "predictions") -> PredictionSet:
        """Validate a Contract-4 predictions frame (any row order) and sort it by image id."""
        if isinstance(df, PredictionSet):
            return df
        check_columns(df.columns, ["image_id", "patient_id"], where,
                      fix="predictions need image_id, patient_id and p_<finding>/y_<finding> columns")
        findings = prediction_findings(df.columns, where)
        if len(df) == 0:
            raise InputError("no images (the split is empty)", where=where,
                             fix="check the split name and that the index assigns images to it")
        for col in ("image_id", "patient_id"):
            if df[col].isna().any():
                row = int(np.flatnonzero(df[col].isna().to_numpy())[0])
                raise InputError(f"column {col!r} is empty at row {row + 1} (1 = the first image)",
                                 where=where,
                                 fix="every image needs an image_id and a patient_id "
                                     "(use the image id as patient id when patients are unknown)")
        ids = df["image_id"].astype(str).to_numpy(dtype=object)
        order = np.argsort(ids, kind="stable")
        ids = np.asarray(ids[order], dtype=str)
        dup = ids[1:] == ids[:-1]
        if dup.any():
            raise InputError(f"image_id {str(ids[1:][dup][0])!r} appears more than once "
                             f"({int(dup.sum())} duplicate(s))", where=where, fix="one row per image")
        pats = np.asarray(df["patient_id"].astype(str).to_numpy(dtype=object)[order], dtype=str)
        labels = np.empty((ids.size, len(findings)))
        scores = np.empty((ids.size, len(findings)))
        for j, f in enumerate(findings):
            y, s = _numeric(df, f"y_{f}", order, where), _numeric(df, f"p_{f}", order, where)
            labels[:, j], scores[:, j] = mt.check_labels_scores(y, s, where=f"{where}, finding {f!r}",
                                                                ids=ids)
        return cls(ids, pats, findings, labels, scores, where)

    def column(self, finding: str) -> int:
        """Index of ``finding`` in :attr:`findings`."""
        return self.findings.index(finding)

    def resamples(self, n_resamples: int, seed: int, cluster: str) -> bs.Resamples:
        """The bootstrap resamples of this set (same images + same arguments = same resamples)."""
        return bs.make_resamples(self.image_ids, self.patient_ids, n_resamples, seed, cluster)


def _numeric(df: pd.DataFrame, col: str, order: np.ndarray, where: str) -> np.ndarray:
    """Column ``col`` as float64 in ``order``; text that is not a number is refused, not turned into NaN."""
    values = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)[order]
    raw = df[col].to_numpy(dtype=object)[order]
    coerced = np.isnan(values) & ~pd.isna(raw)
    if coerced.any():
        i = int(np.flatnonzero(coerced)[0])
        raise InputError(f"column {col!r} holds non-numeric value {raw[i]!r}", where=where,
                         fix="scores and labels must be numbers (labels 1, 0 or empty for unknown)")
    return values


def prediction_findings(columns, where: str = "predictions") -> list[str]:
    """Finding names from ``p_<name>``/``y_<name>`` column pairs (order of the ``p_`` columns)."""
    cols = [str(c) for c in columns]
    p_names = [c[2:] for c in cols if c.startswith("p_")]
    y_names = {c[2:] for c in cols if c.startswith("y_")}
    missing_y = [f for f in p_names if f not in y_names]
    missing_p = sorted(y_names - set(p_names))
    if missing_y or missing_p:
        parts = [f"p_{f} has no y_{f}" for f in missing_y] + [f"y_{f} has no p_{f}" for f in missing_p]
        raise InputError("; ".join(parts), where=where,
                         fix="every finding needs a score column p_<name> and a label column y_<name>")
    if not p_names:
        raise InputError("no finding columns (p_<name>/y_<name>)", where=where,
                         fix="write one p_<finding> and one y_<finding> column per finding")
    return p_names


def read_predictions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a predictions Parquet file (validated when turned into a :class:`PredictionSet`)."""
    path = Path(path)
    if not path.is_file():
        above = next((p for p in path.parents if p.is_file()), None)
        if above is not None:  # e.g. `compare RUN ...` given a file where a run folder belongs
            raise InputError("is a file, not a run folder", where=str(above),
                             fix="give the run folder (from `cxrbench train`, or one holding "
                                 "eval/SPLIT/predictions.parquet)")
        raise InputError("predictions file not found", where=str(path),
                         fix=spell("run `cxrbench evaluate RUN --split SPLIT` first",
                                   "run cxrbench.evaluate_run(run, split) first") + ", "
                             "or write Contract-4 predictions there")
    import pyarrow.parquet as pq

    from cxrbench.common.fileio import parquet_errors

    fix = "re-create it with `cxrbench evaluate RUN --repredict`"
    with parquet_errors(path, "predictions file", fix=fix):
        return pq.read_table(path).to_pandas()


def predictions_meta(path: str | os.PathLike) -> dict:
    """The cxrbench metadata stored in a predictions file (``{}`` when written by another tool)."""
    import pyarrow.parquet as pq

    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, ValueError):  # ArrowInvalid is a ValueError: read_predictions names the problem
        return {}
    raw = meta.get(PREDICTIONS_META_KEY)
    return json.loads(raw) if raw else {}


def write_predictions(df: pd.DataFrame, path: str | os.PathLike,
                      meta: Mapping[str, Any] | None = None) -> None:
    """Write a predictions frame atomically (sorted by image id), with ``meta`` in the Parquet metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = df.sort_values("image_id", kind="stable").reset_index(drop=True)
    table = pa.Table.from_pandas(out, preserve_index=False)
    schema_meta = dict(table.schema.metadata or {})
    schema_meta[PREDICTIONS_META_KEY] = json.dumps(dict(meta or {}), default=str).encode()
    table = table.replace_schema_metadata(schema_meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


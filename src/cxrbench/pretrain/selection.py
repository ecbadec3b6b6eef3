"""Which images self-supervised pretraining may use (leakage-safe by default), and reading them.

The rule: only the **train** split of each given cache, minus every patient who is in a val or test
split of any given cache or of any further index/cache passed as ``exclude`` (a study passes every
dataset it evaluates on). Patients are compared by ``(dataset, patient_id)`` with ``dataset`` the
adapter name: two datasets of one format whose patient ids coincide (e.g. phantoms, or two releases
of one dataset in other folders) count as possibly the same patient, the safe side. An image found
in two caches of the same dataset folder (one release prepared twice) is used once; images of
different folders are never duplicates of each other. Caches passed as ``unlabeled`` are the one
opt-out: data that is never evaluated on (e.g. a source hospital's archive) is used whole, every
split, still minus the held-out patients of the others. The selection is recorded in the run folder
(``pretrain_images.parquet``: dataset, image_id, patient_id, cache) with the SHA-256 of its sorted
``dataset/image_id`` list, so a reader can tell exactly which images the weights have seen.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_path
from cxrbench.common.layout import CACHE_INDEX, CACHE_MANIFEST

USED_SPLIT = "train"
HELD_OUT_SPLITS = ("val", "test")
_ID_COLUMNS = ["image_id", "patient_id", "split", "dataset"]


@dataclass(frozen=True)
class ImageSelection:
    """The images a pretraining run reads, in sampling order.

    ``caches`` are the sources, the ``unlabeled`` ones last (``whole[k]``: every split of source k is
    read). ``table`` has one row per image: ``source`` (position in ``caches``), ``position`` (the
    image's position among the rows read of that cache: its train split, or all rows when whole),
    ``dataset``, ``image_id``, ``patient_id``, ``origin`` (the dataset folder). ``dropped`` counts
    images left out because the patient is held out somewhere, or because the image came twice.
    """

    caches: tuple[str, ...]
    table: pd.DataFrame
    held_out_patients: int
    dropped: dict[str, int] = field(default_factory=dict)
    exclude: tuple[str, ...] = ()
    whole: tuple[bool, ...] = ()

    def split_of(self, k: int) -> str | None:
        """The split read from source ``k`` (None: every split)."""
        return None if self.whole and self.whole[k] else USED_SPLIT

    @property
    def n_images(self) -> int:
        return len(self.table)

    @property
    def datasets(self) -> list[str]:
        """The datasets the images come from, sorted."""
        return sorted(self.table["dataset"].astype(str).unique())

    @property
    def sha256(self) -> str:
        """SHA-256 of the sorted ``dataset/image_id`` lines: which images were used, order aside."""
        keys = sorted((self.table["dataset"].astype(str) + "/" + self.table["image_id"].astype(str)).tolist())
        return hashlib.sha256("".join(k + "\n" for k in keys).encode()).hexdigest()

    def summary(self) -> dict[str, Any]:
        """What config.yaml and best.json record about the pretraining data."""
        return {
            "images": self.n_images,
            "patients": int(self.table[[c for c in ("dataset", "origin", "patient_id") if c in self.table]]
                            .drop_duplicates().shape[0]),  # patients of other folders are other people
            "datasets": self.datasets,
            "per_dataset": {
                str(k): int(v) for k, v in self.table["dataset"].value_counts().sort_index().items()
            },
            "split": USED_SPLIT if not any(self.whole) else "train (all splits of the unlabeled caches)",
            "images_sha256": self.sha256,
            "held_out_patients": self.held_out_patients,
            "dropped": dict(self.dropped),
            "caches": list(self.caches),
            "unlabeled": [c for c, w in zip(self.caches, self.whole, strict=False) if w],
            "exclude": list(self.exclude),
        }


def _read_ids(source: str | os.PathLike, where: str) -> pd.DataFrame:
    """image_id, patient_id, split, dataset of an index file or a cache folder (only those columns)."""
    import pyarrow.parquet as pq

    path = Path(source)
    if path.is_dir():
        path = path / CACHE_INDEX
    if not path.is_file():
        raise InputError(
            "no index here",
            where=str(source),
            fix="give an index .parquet file (`cxrbench index`) or a cache folder",
        )
    from cxrbench.common.fileio import parquet_errors

    fix = "give an index .parquet file (`cxrbench index`) or a cache folder"
    with parquet_errors(path, "index", fix=fix):
        names = pq.read_schema(path).names
    missing = [c for c in _ID_COLUMNS if c not in names]
    if missing:
        raise InputError(
            f"the index lacks column(s) {', '.join(missing)}",
            where=str(path),
            fix="recreate it with `cxrbench index`",
        )
    df = pq.read_table(path, columns=_ID_COLUMNS).to_pandas()
    return df.astype({c: str for c in _ID_COLUMNS})


def _origin(source: str | os.PathLike) -> str:
    """The dataset folder a cache (its manifest) or an index (its report) was made from, or ''."""
    from cxrbench.common.fileio import read_json
    from cxrbench.common.layout import index_report_path

    path = Path(source)
    meta = path / CACHE_MANIFEST if path.is_dir() else index_report_path(path)
    try:
        doc = read_json(meta)
    except Exception:  # no or unreadable record: duplicates fall back to the dataset name
        return ""
    root = (doc.get("source") or {}).get("root") if path.is_dir() else doc.get("root")
    return str(Path(root).resolve()) if isinstance(root, str) and root else ""


def _keys(df: pd.DataFrame) -> pd.Series:
    return df["dataset"] + "\x00" + df["patient_id"]


def select_images(
    caches: Sequence[str | os.PathLike],
    exclude: Sequence[str | os.PathLike] = (),
    unlabeled: Sequence[str | os.PathLike] = (),
) -> ImageSelection:
    """The leakage-safe image selection over ``caches`` (module docstring); InputError when empty."""
    from cxrbench.cache.read import open_cache

    sources = [*caches, *unlabeled]
    whole = tuple([False] * len(caches) + [True] * len(unlabeled))
    if not sources:
        raise InputError("no cache given", where="pretrain", fix="give at least one --cache")
    frames = []
    held_out: set[str] = set()
    for k, c in enumerate(sources):
        open_cache(c)  # a complete cache, or one clear error
        df = _read_ids(c, where=str(c))
        df["source"] = k
        df["origin"] = _origin(c) or df["dataset"]
        frames.append(df)
        if not whole[k]:
            held_out.update(_keys(df[df["split"].isin(HELD_OUT_SPLITS)]))
    for other in exclude:
        df = _read_ids(other, where=str(other))
        held_out.update(_keys(df[df["split"].isin(HELD_OUT_SPLITS)]))
    parts = []
    dropped = {"held_out_images": 0, "duplicate_images": 0}
    for k, df in enumerate(frames):
        rows = df.copy() if whole[k] else df[df["split"] == USED_SPLIT].copy()
        if rows.empty:
            raise InputError(
                "the cache has no train split",
                where=str(sources[k]),
                fix="pretrain reads only train splits (pass data you never evaluate on as --unlabeled)",
            )
        rows["position"] = np.arange(len(rows), dtype=np.int64)
        keep = ~_keys(rows).isin(held_out)
        dropped["held_out_images"] += int((~keep).sum())
        parts.append(rows[keep])
    table = pd.concat(parts, ignore_index=True)
    dup = table.duplicated(subset=["dataset", "origin", "image_id"], keep="first")
    dropped["duplicate_images"] = int(dup.sum())
    table = table[~dup].reset_index(drop=True)
    if table.empty:
        raise InputError(
            "no image is left: every train patient is held out by a val/test split",
            where=", ".join(map(str, sources)),
            fix="check the caches and --exclude indexes",
        )
    table = table[["source", "position", "dataset", "image_id", "patient_id", "origin"]]
    return ImageSelection(
        caches=tuple(str(Path(c).resolve()) for c in sources),
        table=table,
        held_out_patients=len(held_out),
        dropped=dropped,
        exclude=tuple(str(Path(e).resolve()) for e in exclude),
        whole=whole,
    )


def cache_fingerprints(caches: Sequence[str | os.PathLike]) -> list[str]:
    """SHA-256 of each cache's manifest, in order (the content check on resume)."""
    from cxrbench.common.fileio import file_sha256

    return [file_sha256(Path(c) / CACHE_MANIFEST) for c in caches]


def write_selection(selection: ImageSelection, path: str | os.PathLike) -> None:
    """The run's record of the images used: Parquet with dataset, image_id, patient_id, cache."""
    df = selection.table[["dataset", "image_id", "patient_id"]].copy()
    df["cache"] = [selection.caches[k] for k in selection.table["source"]]
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_selection(path: str | os.PathLike) -> pd.DataFrame:
    """The images file of a pretraining run (dataset, image_id, patient_id, cache)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "the pretraining run has no list of the images it used",
            where=str(path),
            fix="use a run folder written by `cxrbench pretrain`",
        )
    from cxrbench.common.fileio import parquet_errors

    fix = "use a run folder written by `cxrbench pretrain`"
    with parquet_errors(path, "list of pretraining images", fix=fix):
        return pd.read_parquet(path)


class PretrainImages(Dataset):
    """The selected images of several caches as one dataset: ``ds[list] -> uint8 [B, S, S]``.

    Every cache must have the same image size. Reads go through each cache's
    :class:`~cxrbench.data.dataset.CacheDataset` (its train split, or all of an unlabeled cache), one
    pass per cache per batch.
    """

    def __init__(self, selection: ImageSelection) -> None:
        from cxrbench.data.dataset import CacheDataset

        self.parts = [
            CacheDataset(c, split=selection.split_of(k), findings=[]) for k, c in enumerate(selection.caches)
        ]
        sizes = sorted({p.size for p in self.parts})
        if len(sizes) > 1:
            raise InputError(
                f"the caches have different image sizes ({', '.join(map(str, sizes))} px)",
                where=", ".join(selection.caches),
                fix="prepare every cache with the same --size",
            )
        self.size = sizes[0]
        self.recipes = [p.recipe for p in self.parts]
        self.source = selection.table["source"].to_numpy(dtype=np.int64)
        self.position = selection.table["position"].to_numpy(dtype=np.int64)
        for k, p in enumerate(self.parts):
            if len(self.position[self.source == k]) and self.position[self.source == k].max() >= len(p):
                raise InputError(
                    "the selection does not fit the cache",
                    where=selection.caches[k],
                    fix="the cache changed; restart with --overwrite",
                )

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, indices) -> torch.Tensor:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((len(idx), self.size, self.size), dtype=np.uint8)
        src, pos = self.source[idx], self.position[idx]
        for k in np.unique(src):
            sel = src == k
            part = self.parts[int(k)]
            out[sel] = part.read_slots(part.rows[pos[sel]])
        return torch.from_numpy(out)

    def __getitem__(self, idx):
        if np.ndim(idx) == 0:
            return self.batch([int(idx)])[0]
        return self.batch(idx)

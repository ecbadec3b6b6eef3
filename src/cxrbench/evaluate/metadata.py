"""Image metadata (sex, age, view, dataset, any index column) for evaluated predictions.

Predictions files (Contract 4) carry only ids, scores and labels; the metadata lives in the index
(Contract 2) and in a cache's copy of it (Contract 3). :func:`read_metadata` reads only the columns
asked for from either; :func:`align_metadata` joins them to predictions by ``image_id``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import closest
from cxrbench.stats.subgroups import DEFAULT_AGE_EDGES, age_bands, subgroup_labels

DEFAULT_VARIABLES: tuple[str, ...] = ("sex", "age", "view", "dataset")
"""Subgroup variables used when none are named (each only when the metadata has it)."""


def _columns_of(source: Path) -> list[str]:
    import pyarrow.parquet as pq

    from cxrbench.common.layout import CACHE_INDEX

    path = source / CACHE_INDEX if source.is_dir() else source
    if not path.is_file():
        raise InputError("no index found (neither a cache folder nor an index .parquet file)",
                         where=str(source), fix="give a cache from `cxrbench prepare` or an index from "
                                                "`cxrbench index`")
    from cxrbench.common.fileio import parquet_errors

    with parquet_errors(path, "index", fix="give a cache folder (`cxrbench prepare`) or an index .parquet "
                                           "file (`cxrbench index`)"):
        return list(pq.read_schema(path).names)


def metadata_columns(source: str | os.PathLike) -> list[str]:
    """Column names of the index behind ``source`` (a cache folder or an index .parquet file)."""
    return _columns_of(Path(source))


def read_metadata(source: str | os.PathLike, columns: Sequence[str]) -> pd.DataFrame:
    """``image_id``, ``patient_id``, ``split`` and ``columns`` of a cache's index or an index file.

    Only those columns are read. A column the index lacks is an InputError naming the closest one.
    """
    source = Path(source)
    have = _columns_of(source)
    wanted = list(dict.fromkeys(["image_id", "patient_id", "split", *columns]))
    for col in wanted:
        if col not in have:
            hint = closest(col, have)
            raise InputError(f"the index has no column {col!r}", where=str(source),
                             fix=(f"did you mean {hint!r}? " if hint else "") + f"columns: {', '.join(have)}")
    if source.is_dir():
        from cxrbench.cache.read import open_cache

        return open_cache(source).columns(wanted)
    import pyarrow.parquet as pq

    from cxrbench.common.fileio import parquet_errors

    with parquet_errors(source, "index", fix="recreate it with `cxrbench index`"):
        return pq.read_table(source, columns=wanted).to_pandas()


def align_metadata(image_ids: Sequence[str] | np.ndarray, meta: pd.DataFrame, where: str) -> pd.DataFrame:
    """Rows of ``meta`` in the order of ``image_ids`` (every id must be there, once)."""
    ids = pd.Index(meta["image_id"].astype(str))
    if ids.has_duplicates:
        dup = ids[ids.duplicated()][0]
        raise InputError(f"image_id {dup!r} appears more than once in the metadata", where=where,
                         fix="give the index or cache the predictions were made from")
    wanted = np.asarray([str(i) for i in image_ids], dtype=object)
    pos = ids.get_indexer(wanted)
    if (pos < 0).any():
        missing = wanted[pos < 0]
        raise InputError(f"{missing.size} predicted image(s) are not in the metadata (e.g. {missing[0]!r})",
                         where=where, fix="give the index or cache the predictions were made from "
                                          "(--metadata / --cache)")
    return meta.iloc[pos].reset_index(drop=True)


def default_variables(available: Sequence[str]) -> list[str]:
    """The default subgroup variables the metadata has (sex, age, view, dataset)."""
    return [v for v in DEFAULT_VARIABLES if v in available]


def subgroup_arrays(meta: pd.DataFrame, variables: Sequence[str],
                    age_edges: Sequence[float] = DEFAULT_AGE_EDGES) -> dict[str, np.ndarray]:
    """Variable -> (n,) subgroup labels; ``age`` is cut into bands, any other column taken as it is."""
    out: dict[str, np.ndarray] = {}
    for v in variables:
        values = meta[v].to_numpy(dtype=object)
        out[v] = age_bands(values, age_edges) if v == "age" else subgroup_labels(values)
    return out

"""``results.csv`` read back as a typed table: the one reader of a study's results file.

Written by :func:`cxrbench.report.write_report` (:meth:`StudyResults.results_csv`), the file mixes
per-seed rows with rows pooled over the seeds (``seed`` = ``pooled``), so a plain ``pd.read_csv``
gives a text ``seed`` column. :func:`load_results` gives every column its documented type
(:data:`RESULT_DTYPES`) and splits the seed: ``seed`` is an integer (``<NA>`` on pooled rows) and
``pooled`` says which rows are pooled.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.layout import RESULTS_CSV
from cxrbench.report.results import POOLED, RESULT_COLUMNS

_TEXT = ("dataset", "init", "finding", "recipe", "adaptation", "tuning", "init_name", "subgroup",
         "seed_sd_covers")
_FLAGS = ("deterministic",)
_COUNTS = ("n", "n_positive", "n_findings", "n_seeds")

RESULT_DTYPES: dict[str, str] = {
    **{c: "float64" for c in RESULT_COLUMNS},
    **{c: "string" for c in _TEXT},
    **{c: "Int64" for c in _COUNTS},
    **{c: "boolean" for c in _FLAGS},
    "seed": "Int64",
    "pooled": "bool",
}
"""The type of every contract column of :func:`load_results`' frame: text as pandas ``string``,
counts and ``seed`` as nullable ``Int64`` (``seed`` is ``<NA>`` where ``pooled``), ``pooled`` as
``bool``, ``deterministic`` as nullable ``boolean``, every other number (AUROC and its CI, p-values,
shares, thresholds, ECE, ...) as ``float64``. Columns a later cxrbench adds keep the type pandas infers."""


def results_path(source: str | os.PathLike) -> Path:
    """``source`` itself when it is a file, else ``results.csv`` in it or in its ``report/`` folder
    (a study's output folder); InputError when there is none."""
    path = Path(source)
    if path.is_file():
        return path
    for candidate in (path / RESULTS_CSV, path / "report" / RESULTS_CSV):
        if candidate.is_file():
            return candidate
    raise InputError(f"no {RESULTS_CSV} found", where=str(path),
                     fix="give a study's output folder, its report/ folder or the results.csv file "
                         "(`cxrbench study report` writes it)")


def load_results(source: str | os.PathLike) -> pd.DataFrame:
    """A study's ``results.csv`` as a typed DataFrame.

    Args:
        source: the study's output folder (``OUT``), its ``report/`` folder, or the results.csv file
            (``run_study(...).results`` is that file).

    Returns:
        One row per dataset x recipe x condition (``adaptation``, ``label_fraction``,
        ``label_noise``) x seed x init x finding, the ``mean`` over findings included, then the
        subgroup rows; columns :data:`~cxrbench.report.results.RESULT_COLUMNS` first (with
        ``pooled`` after ``seed``), typed as :data:`RESULT_DTYPES`: ``seed`` ``Int64`` (``<NA>`` on
        the rows pooled over the seeds, where ``pooled`` is True), AUROC, CI bounds and p-values
        ``float64`` in [0, 1], counts ``Int64``, names ``string``.

    Example::

        df = cxrbench.load_results("studies/demo")
        pooled_means = df[df["pooled"] & (df["finding"] == "mean")]
        pooled_means.pivot_table(index="init", columns="dataset", values="auroc")
    """
    path = results_path(source)
    try:
        raw = pd.read_csv(path, dtype="string", keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise InputError(f"not a readable results.csv ({' '.join(str(e).split())[:200]})", where=str(path),
                         fix="re-create it with `cxrbench study report`") from None
    missing = [c for c in ("dataset", "init", "finding", "seed", "auroc") if c not in raw.columns]
    if missing:
        raise InputError(f"not a cxrbench results.csv: missing column(s) {', '.join(missing)}",
                         where=str(path), fix="give the results.csv a study report wrote")
    seed = raw["seed"]
    pooled = (seed == POOLED).fillna(False).astype(bool)
    numbers = pd.to_numeric(seed.where(~pooled), errors="coerce")
    bad = seed.notna() & ~pooled & numbers.isna()
    if bad.any():
        raise InputError(f"seed {seed[bad].iloc[0]!r} is neither a number nor {POOLED!r}",
                         where=f"{path}, row {int(bad.to_numpy().nonzero()[0][0]) + 2}",
                         fix="give the results.csv a study report wrote")
    out = raw.copy()
    out["seed"] = numbers.astype("Int64")
    out.insert(out.columns.get_loc("seed") + 1, "pooled", pooled)
    for col in out.columns:
        kind = RESULT_DTYPES.get(col)
        if kind is None:  # a column this version does not know: pandas' own inference
            out[col] = _infer(out[col])
        elif kind == "float64":
            out[col] = pd.to_numeric(out[col], errors="coerce").astype("float64")
        elif kind == "Int64":
            out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64")
        elif kind == "boolean":
            out[col] = out[col].str.lower().map({"true": True, "false": False}).astype("boolean")
    return out


def _infer(column: pd.Series) -> pd.Series:
    """A column of unknown meaning: numbers when every value is one, else text."""
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers.astype("float64") if numbers.notna().sum() == column.notna().sum() else column

"""Label coding and policies shared by the adapters.

Native label values are coded ``1`` (positive), ``0`` (negative), ``-1`` (uncertain), NaN (blank:
not mentioned) or :data:`ABSENT` (-2: not labelled at all, e.g. a column the test file lacks;
unknown whatever ``--blank`` says). The policies of ``--uncertain``/``--blank`` turn them into the
Contract-2 values 1 / 0 / NaN; ``no_finding`` is reconciled with the other findings; source terms
map to canonical findings through the explicit tables of :mod:`cxrbench.index.sources.terms`.
"""


from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.findings import NOT_ABNORMAL
from cxrbench.index.sources.tables import at_row

ABSENT = -2.0  # label code: not labelled at all (stays unknown under every policy)


def code_values(values: np.ndarray, path: Path, column: str, allowed: Iterable[float]) -> np.ndarray:
    """Check a float label column holds only ``allowed`` values or NaN (blank); return float32."""
    values = np.asarray(values, dtype=np.float32)
    ok = np.isnan(values) | np.isin(values, np.asarray(list(allowed), dtype=np.float32))
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise InputError(
            f"unknown label value {float(values[row]):g} in column {column!r}",
            where=at_row(path, row),
            fix=f"labels must be one of {', '.join(str(a) for a in allowed)} or blank",
        )
    return values






def apply_label_policy(
    block: np.ndarray, uncertain: str, blank: str, blank_is_unknown: bool
) -> dict[str, int]:
    """In place on a float32 (N, K) block coded 1/0/-1/NaN/ABSENT: uncertain -> policy, blank ->
    policy, ABSENT -> NaN.

    ``blank_is_unknown`` says NaN means "not mentioned" (CheXpert, MIMIC): ``--blank zeros`` makes
    it negative, ``ignore`` keeps it NaN (unknown, masked). Returns counts for the report.
    """
    blanks = np.isnan(block)
    unc = block == -1
    absent = block == ABSENT
    block[unc] = {"zeros": 0.0, "ones": 1.0, "ignore": np.nan}[uncertain]
    n_blank = int(blanks.sum())
    if blank_is_unknown and blank == "zeros":
        block[blanks] = 0.0
    block[absent] = np.nan
    return {"uncertain_values": int(unc.sum()), "blank_values": n_blank, "not_labelled": int(absent.sum())}


def reconcile_no_finding(block: np.ndarray, findings: Sequence[str]) -> dict[str, int]:
    """Make ``no_finding`` consistent with the other findings, in place on a (N, K) block.

    A positive abnormal finding (anything but ``support_devices``) sets ``no_finding`` to 0
    (counted as a conflict when the source said 1); ``no_finding`` = 1 turns unknown abnormal
    findings into 0 (the image was read as normal).
    """
    if "no_finding" not in findings:
        return {}
    k = list(findings).index("no_finding")
    abn = [i for i, f in enumerate(findings) if f not in NOT_ABNORMAL]
    if not abn:
        return {}
    nf = block[:, k]
    sub = block[:, abn]
    any_pos = (sub == 1).any(axis=1)
    conflict = (nf == 1) & any_pos
    unknown_set = np.isnan(nf) & any_pos
    nf[conflict | unknown_set] = 0.0
    normal = nf == 1
    fill = np.isnan(sub) & normal[:, None]
    sub[fill] = 0.0
    block[:, abn] = sub
    return {
        "no_finding_conflicts": int(conflict.sum()),
        "no_finding_set_negative": int(unknown_set.sum()),
        "unknown_filled_by_no_finding": int(fill.sum()),
    }


SEX_VALUES: dict[str, str] = {"M": "M", "MALE": "M", "F": "F", "FEMALE": "F", "O": "O", "OTHER": "O"}


def map_values(values: pd.Series, table: Mapping[str, str]) -> pd.Series:
    """``table`` applied to stripped, upper-cased values, once per distinct value; others missing."""
    codes, uniques = pd.factorize(values, sort=False)
    mapped = np.array([table.get(str(u).strip().upper()) for u in uniques] + [None], dtype=object)
    return pd.Series(mapped[codes], index=values.index, dtype="str")


def normalize_sex(values: pd.Series) -> pd.Series:
    """``M``/``F``/``O`` or missing (``Unknown`` and blanks become missing)."""
    return map_values(values, SEX_VALUES)


def terms_matrix(
    unique_terms: Sequence[Sequence[str]], table: Mapping[str, tuple[str, ...]], findings: Sequence[str]
) -> tuple[np.ndarray, dict[int, list[str]]]:
    """(U, K) 0/1 matrix of which findings each unique term list feeds; unknown terms per row."""
    col = {f: i for i, f in enumerate(findings)}
    lower = {t.lower(): v for t, v in table.items()}
    mat = np.zeros((len(unique_terms), len(findings)), dtype=np.float32)
    unknown: dict[int, list[str]] = {}
    for u, terms in enumerate(unique_terms):
        for t in terms:
            targets = table.get(t)
            if targets is None:
                targets = lower.get(t.lower())
            if targets is None:
                unknown.setdefault(u, []).append(t)
                continue
            for f in targets:
                mat[u, col[f]] = 1.0
    return mat, unknown


def native_findings(table: Mapping[str, tuple[str, ...]], terms: Iterable[str]) -> list[str]:
    """The canonical findings fed by ``terms`` (those present in a file), in display order."""
    from cxrbench.index.findings import sort_findings

    return sort_findings(f for t in terms for f in table.get(t, ()))




def label_block(n: int, findings: Sequence[str], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Stack per-finding arrays into a float32 (n, K) block; a finding without a column is ABSENT."""
    block = np.full((n, len(findings)), ABSENT, dtype=np.float32)
    for k, f in enumerate(findings):
        if f in columns:
            block[:, k] = columns[f]
    return block




UNCERTAIN_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore")


BLANK_POLICIES: tuple[str, ...] = ("zeros", "ignore")

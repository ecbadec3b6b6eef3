"""CheXpert's released demographics, joined to the index by patient as subgroup columns.

Stanford AIMI released "CheXpert Demographic Data" as ``CHEXPERT DEMO.xlsx``: one row per patient,
``PATIENT`` (``patient00001``, the folder name of the release), ``GENDER``, ``AGE_AT_CXR``,
``PRIMARY_RACE``, ``ETHNICITY``. Read from ``--demographics FILE`` or found beside ``train.csv`` /
in ``--root``; a CSV export of the sheet is read too (``.xlsx`` needs openpyxl: ``pip install
'cxrbench[demographics]'``). A table with an ``INSURANCE_TYPE`` (or ``INSURANCE``) column, as CheXpert
Plus describes for its patients, adds ``insurance``; the DEMO sheet has none.

Columns written (Contract 2's documented subgroup columns): ``race`` (``PRIMARY_RACE`` as released,
stripped: ``White``, ``Black or African American``, ``Asian``, ``Other``, ...), ``ethnicity``
(``ETHNICITY``: ``Non-Hispanic/Non-Latino``, ``Hispanic/Latino``, ...), ``insurance``. Values that say
nothing (``Unknown``, ``Patient Refused``, ``Declined``, blank ...: :data:`NOT_KNOWN`) become missing,
counted; a patient listed twice with different values gets missing, counted; a patient absent from
the table gets missing, counted. Column names are matched case-insensitively. GENDER and AGE_AT_CXR
are not used: the index's sex and age come from the image rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.sources.tables import read_csv

FILES = ("CHEXPERT DEMO.xlsx", "CHEXPERT DEMO.csv", "chexpert_demo.csv")
COLUMNS = {
    "race": ("PRIMARY_RACE", "RACE"),
    "ethnicity": ("ETHNICITY",),
    "insurance": ("INSURANCE_TYPE", "INSURANCE"),
}
KEYS = ("PATIENT", "PATIENT_ID")
NOT_KNOWN = frozenset(
    {
        "",
        "UNKNOWN",
        "PATIENT REFUSED",
        "DECLINED",
        "UNABLE TO OBTAIN",
        "RACE AND ETHNICITY UNKNOWN",
        "NOT REPORTED",
        "NAN",
        "NONE",
    }
)
MAX_BYTES = 64 << 20  # the real sheet is about 1 MB; anything this large is not it


def _read_table(path: Path) -> pd.DataFrame:
    if path.stat().st_size > MAX_BYTES:
        raise InputError(
            f"{path.stat().st_size:,} bytes: far larger than the demographics table",
            where=str(path),
            fix="give CHEXPERT DEMO.xlsx or its CSV export",
        )
    if path.suffix.lower() in (".xlsx", ".xlsm"):
        try:
            import openpyxl  # noqa: F401
        except ImportError:
            raise InputError(
                "reading .xlsx needs openpyxl",
                where=str(path),
                fix="pip install 'cxrbench[demographics]', or save the sheet as CSV",
            ) from None
        try:
            df = pd.read_excel(path, sheet_name=0, dtype=str, engine="openpyxl")
        except Exception as e:  # a damaged or foreign workbook: openpyxl's many exception types
            raise InputError(
                f"not a readable workbook ({type(e).__name__}: {str(e)[:120]})",
                where=str(path),
                fix="give CHEXPERT DEMO.xlsx as released, or its CSV export",
            ) from None
        df.columns = [str(c).strip() for c in df.columns]
        return df
    header = pd.read_csv(path, nrows=0).columns
    upper = {c.strip().upper(): c.strip() for c in header}
    key = next((upper[k] for k in KEYS if k in upper), None)
    if key is None:
        raise InputError(
            "no PATIENT column", where=str(path), fix="give CHEXPERT DEMO.xlsx or its CSV export"
        )
    wanted = [upper[n] for names in COLUMNS.values() for n in names if n in upper]
    return read_csv(path, required=[key], optional=wanted, ids=None)


def join_demographics(path: Path, patients: pd.Series, report: dict[str, Any]) -> dict[str, pd.Series]:
    """Subgroup columns (name -> values aligned with ``patients``) from the demographics table."""
    df = _read_table(path)
    upper = {str(c).strip().upper(): c for c in df.columns}
    key = next((upper[k] for k in KEYS if k in upper), None)
    if key is None:
        raise InputError("no PATIENT column", where=str(path), fix="give CHEXPERT DEMO.xlsx as released")
    found: dict[str, Any] = {}
    for name, names in COLUMNS.items():
        col = next((upper[n] for n in names if n in upper), None)
        if col is not None:
            found[name] = col
    if not {"race", "ethnicity"} & set(found):
        raise InputError(
            "neither PRIMARY_RACE nor ETHNICITY found",
            where=str(path),
            fix="give CHEXPERT DEMO.xlsx as released",
        )
    ids = df[key].astype("str").str.strip()
    info: dict[str, Any] = {"file": str(path), "rows": len(df), "patients": int(ids.nunique())}
    out: dict[str, pd.Series] = {}
    for name, col in found.items():
        raw = df[col].astype("str").str.strip()
        unknown = raw.str.upper().isin(NOT_KNOWN) | df[col].isna()
        values = raw.where(~unknown)
        per = pd.DataFrame({"id": ids, "v": values}).dropna().drop_duplicates()
        clash = per["id"].duplicated(keep=False)
        conflicting = int(per.loc[clash, "id"].nunique())
        per = per[~clash].set_index("id")["v"]
        joined = patients.map(per)
        out[name] = pd.Series(joined.to_numpy(dtype=object), index=patients.index, dtype="str")
        info[name] = {
            "not_known_values": int(unknown.sum()),
            "patients_with_conflicting_values": conflicting,
            "images_missing": int(joined.isna().sum()),
        }
    info["patients_not_in_table"] = int((~patients.drop_duplicates().isin(set(ids))).sum())
    report["demographics"] = info
    return out

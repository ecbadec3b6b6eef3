"""Shared steps of every dataset source: reading official CSVs, coding label values, locating
images, view filtering, label policies, ``no_finding`` consistency.

An adapter (one module per dataset) reads the files exactly as released and returns a
:class:`SourceData`: one row per image with Contract-2 metadata and the *official* split when the
release has one, and a float32 label block with one column per native finding coded ``1``
(positive), ``0`` (negative), ``-1`` (uncertain), NaN (blank: not mentioned) or ``ABSENT`` (-2:
not labelled at all, e.g. a column the test file lacks; unknown whatever ``--blank`` says).
:func:`finalize` (called by :func:`cxrbench.indexing.build_index`) then applies the options in a
fixed order: views -> label policy -> derived findings -> ``no_finding`` consistency -> ``--labels``
-> splits -> leakage check -> Contract-2 validation.
"""

from __future__ import annotations

import gzip
import os
import posixpath
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.errors import InputError
from cxrbench.findings import NOT_ABNORMAL
from cxrbench.schema import FRONTAL_VIEWS, SPLITS, VIEWS
from cxrbench.validation import check_choice, check_columns

ABSENT = -2.0  # label code: not labelled at all (stays unknown under every policy)
UNCERTAIN_POLICIES: tuple[str, ...] = ("zeros", "ones", "ignore")
BLANK_POLICIES: tuple[str, ...] = ("zeros", "ignore")
READER_RULES: tuple[str, ...] = ("majority", "any")
LABELERS: tuple[str, ...] = ("chexpert", "negbio")
SPLIT_MODES: tuple[str, ...] = ("official", "hash")

# Columns of SourceData.frame besides the findings. ``official_split`` holds train/val/test or
# NA; ``frontal`` marks images the source calls frontal even when the projection is unknown.
FRAME_COLUMNS: tuple[str, ...] = (
    "image_id",
    "patient_id",
    "study_id",
    "path",
    "view",
    "sex",
    "age",
    "official_split",
    "frontal",
)


@dataclass(frozen=True)
class IndexOptions:
    """Every option of ``cxrbench index`` (see ``cxrbench index --help`` and docs/datasets.md)."""

    labels: str = "all"
    uncertain: str = "zeros"
    blank: str = "zeros"
    views: str = "frontal"
    split_mode: str = "official"
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    readers: str = "majority"
    labeler: str = "chexpert"
    radiologist_test: bool = False
    labels_file: Path | None = None
    mapping: Path | None = None
    check_files: bool = False
    drop_missing: bool = False

    def validated(self) -> IndexOptions:
        """Raise InputError on an unknown choice; return self."""
        check_choice("--uncertain", self.uncertain, UNCERTAIN_POLICIES)
        check_choice("--blank", self.blank, BLANK_POLICIES)
        check_choice("--readers", self.readers, READER_RULES)
        check_choice("--labeler", self.labeler, LABELERS)
        check_choice("--splits", self.split_mode, SPLIT_MODES)
        parse_views(self.views)
        return self


@dataclass
class SourceData:
    """What an adapter hands to the indexer (see the module docstring for the coding).

    ``derive`` names findings computed *after* the label policy from other columns of the frame:
    ``("or", parts)`` (three-valued OR) or ``("none_of", parts)`` (1 when all parts are 0, 0 when
    any is 1); ``hidden`` columns feed a derivation but are not findings of the index. ``keep``
    masks rows the adapter drops (one filtering pass together with the view filter).
    """

    dataset: str
    frame: pd.DataFrame  # FRAME_COLUMNS, one row per image
    findings: list[str]
    labels: np.ndarray  # float32 (N, K), column k = findings[k], coded 1/0/-1/NaN
    blank_is_unknown: bool = False  # NaN means "not mentioned": the --blank policy applies
    report: dict[str, Any] = field(default_factory=dict)
    derive: dict[str, tuple[str, tuple[str, ...]]] = field(default_factory=dict)
    hidden: tuple[str, ...] = ()
    keep: np.ndarray | None = None  # rows the adapter drops (already counted in the report)


# ------------------------------------------------------------------------------------------------
# Files and CSVs
# ------------------------------------------------------------------------------------------------


def row_of(row: int) -> int:
    """1-based record number of 0-based data row ``row`` (the header is not counted; a record may
    span several physical lines when a quoted field holds newlines, as in PadChest)."""
    return int(row) + 1


def find_file(
    dirs: Sequence[Path],
    names: Sequence[str],
    what: str,
    option: str | None = "--labels-file",
    required: bool = True,
) -> Path | None:
    """The first of ``names`` (plain or ``.gz``) present in one of ``dirs``."""
    for d in dirs:
        for name in names:
            for candidate in (name, f"{name}.gz", name.removesuffix(".gz")):
                p = Path(d) / candidate
                if p.is_file():
                    return p
    if not required:
        return None
    fix = f"expected {' or '.join(names)} (optionally .gz) in {', '.join(str(d) for d in dirs)}"
    if option:
        fix += f", or pass {option} FILE"
    raise InputError(f"{what} not found", where=str(dirs[0]), fix=fix)


def read_csv(
    path: Path,
    required: Sequence[str],
    optional: Sequence[str] = (),
    rename: Mapping[str, str] | None = None,
    numeric: Sequence[str] = (),
    ids: Sequence[str] | None = None,
    text: Sequence[str] = (),
    sep: str = ",",
    engine: str = "pandas",
) -> pd.DataFrame:
    """Read the named columns of an official CSV (plain or gz); blanks become NaN.

    Column names are stripped and ``rename`` maps header variants onto one spelling before
    ``required`` is checked; ``optional`` columns are read when present. ``numeric`` columns are
    parsed as float32 by the C parser (a non-numeric value is an InputError naming its row).
    ``ids`` columns are parsed as text exactly as written (``None``: every column; for identifiers
    that inference would corrupt: huge numbers, leading zeros). The other columns are
    type-inferred, which is much faster than forcing text; those listed in ``text`` are turned back
    into text when inferred as numbers (integers without decimals), and columns inferred as
    neither text nor numbers (all blank, mixed) become text. Never reads by position.
    ``engine="arrow"`` parses with pyarrow (faster for wide files read in part, such as PadChest's),
    falling back to pandas, whose errors name the row, when pyarrow refuses the file.
    """
    rename = dict(rename or {})
    header = _read(path, nrows=0, index_col=False, sep=sep).columns
    names = {c: rename.get(c.strip(), c.strip()) for c in header}
    check_columns(set(names.values()), required, where=str(path))
    wanted = set(required) | set(optional)
    seen: set[str] = set()
    use = []
    for raw, name in names.items():
        if name in wanted and name not in seen:
            use.append(raw)
            seen.add(name)
    forced = None if ids is None else set(ids)
    dtype = {
        raw: "float32" if names[raw] in numeric else str
        for raw in use
        if names[raw] in numeric or forced is None or names[raw] in forced
    }
    kwargs = dict(usecols=use, index_col=False, sep=sep)
    df = _read_arrow(path, use, dtype, sep) if engine == "arrow" else None
    try:
        if df is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pd.errors.DtypeWarning)
                df = pd.read_csv(path, dtype=dtype, **kwargs)
    except ValueError:  # a non-numeric label value: read as text to name its row
        df = _read(path, dtype=str, **kwargs)
        read_numeric(df, path, [raw for raw in use if names[raw] in numeric])
    except Exception:
        df = _read(path, dtype=str, **kwargs)  # re-raise through _read's clear message
    df = df.rename(columns={raw: names[raw] for raw in use})
    for col in df.columns:
        s = df[col]
        if col in numeric or s.dtype == "str":
            continue
        if pd.api.types.is_numeric_dtype(s.dtype) and s.notna().any() and col not in text:
            continue
        df[col] = as_text(s)
    return df


# pandas.read_csv's default missing-value spellings, so both readers agree
NA_VALUES = [
    "",
    "#N/A",
    "#N/A N/A",
    "#NA",
    "-1.#IND",
    "-1.#QNAN",
    "-NaN",
    "-nan",
    "1.#IND",
    "1.#QNAN",
    "<NA>",
    "N/A",
    "NA",
    "NULL",
    "NaN",
    "None",
    "n/a",
    "nan",
    "null",
]


def _read_arrow(path: Path, use: list[str], dtype: Mapping[str, str], sep: str) -> pd.DataFrame | None:
    """pyarrow's CSV reader on the ``use`` columns (``dtype``: str or float32); None when it fails."""
    import pyarrow as pa
    import pyarrow.csv as pcsv

    types = {c: pa.float32() if t == "float32" else pa.string() for c, t in dtype.items()}
    try:
        table = pcsv.read_csv(
            path,
            parse_options=pcsv.ParseOptions(delimiter=sep, newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(
                include_columns=use, column_types=types, strings_can_be_null=True, null_values=NA_VALUES
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, EOFError):
        return None
    return table.to_pandas()


def as_text(s: pd.Series) -> pd.Series:
    """Text of a column read as numbers (``10000032.0`` -> ``10000032``) or mixed; blanks stay NaN."""
    if s.dtype == "str":
        return s
    if pd.api.types.is_integer_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
        return s.astype(str)
    values = s.to_numpy(dtype=object)
    out = np.full(len(s), None, dtype=object)
    for i, v in enumerate(values):  # rare: all-blank or mixed columns, and floats with blanks
        if v is None or (isinstance(v, float) and v != v):
            continue
        out[i] = str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)
    return pd.Series(out, index=s.index, dtype="str")


def header_columns(path: Path) -> list[str]:
    """The stripped column names of a CSV (reads the header only)."""
    return [c.strip() for c in _read(path, nrows=0).columns]


def _read(path: Path, **kwargs) -> pd.DataFrame:
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise InputError("file not found", where=str(path), fix="check the path") from None
    except ValueError as e:  # a non-numeric value in a numeric column, a bad usecols ...
        raise InputError(
            f"cannot parse the file ({str(e).splitlines()[0]})",
            where=str(path),
            fix="check that this is the official file, unmodified",
        ) from None
    except (
        pd.errors.ParserError,
        pd.errors.EmptyDataError,
        UnicodeDecodeError,
        OSError,
        EOFError,
        gzip.BadGzipFile,
        zlib.error,
    ) as e:
        raise InputError(
            f"not a readable CSV ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            where=str(path),
            fix="check that this is the official file, unmodified",
        ) from None


def read_numeric(df: pd.DataFrame, path: Path, columns: Sequence[str]) -> None:
    """Convert string columns to float in place; a non-numeric non-blank value is an InputError."""
    for col in columns:
        raw = df[col]
        num = pd.to_numeric(raw, errors="coerce")
        bad = num.isna().to_numpy() & raw.notna().to_numpy()
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"column {col!r} has non-numeric value {raw.iloc[row]!r}",
                where=f"{path} row {row_of(row)}",
                fix="check the file",
            )
        df[col] = num.astype("float32")


def code_values(values: np.ndarray, path: Path, column: str, allowed: Iterable[float]) -> np.ndarray:
    """Check a float label column holds only ``allowed`` values or NaN (blank); return float32."""
    values = np.asarray(values, dtype=np.float32)
    ok = np.isnan(values) | np.isin(values, np.asarray(list(allowed), dtype=np.float32))
    if not ok.all():
        row = int(np.flatnonzero(~ok)[0])
        raise InputError(
            f"unknown label value {float(values[row]):g} in column {column!r}",
            where=f"{path} row {row_of(row)}",
            fix=f"labels must be one of {', '.join(str(a) for a in allowed)} or blank",
        )
    return values


def check_unique(ids: pd.Series, path: Path | str, column: str) -> None:
    """Raise InputError naming the first duplicated id and the lines where it occurs."""
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        first = ids.iloc[int(np.flatnonzero(dup)[0])]
        rows = np.flatnonzero((ids == first).to_numpy())[:3]
        raise InputError(
            f"duplicated {column} {first!r} (rows {', '.join(str(row_of(r)) for r in rows)})",
            where=str(path),
            fix="each image must appear once; remove the duplicate rows",
        )


def clean_relative_paths(paths: pd.Series, where: str, column: str = "path") -> pd.Series:
    """Normalize relative paths (``\\`` -> ``/``, ``./`` removed); refuse absolute or escaping ones."""
    paths = paths.astype(str).str.replace("\\", "/", regex=False)
    norm = (
        pd.Series([posixpath.normpath(p) for p in paths], index=paths.index, dtype=str)
        if paths.str.contains(r"(?:^|/)\.{1,2}(?:/|$)|//", regex=True).any()
        else paths
    )
    bad = (
        norm.str.startswith("/")
        | (norm == "..")
        | norm.str.startswith("../")
        | norm.str.match(r"^[A-Za-z]:/")
    ).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"path {paths.iloc[row]!r} in column {column!r} is absolute or escapes the dataset root",
            where=f"{where} row {row_of(row)}",
            fix="paths must be relative to --root, without '..'",
        )
    return norm


# ------------------------------------------------------------------------------------------------
# Images: located by listing folders, never opened
# ------------------------------------------------------------------------------------------------


def locate_images(
    root: Path, names: pd.Series, default: pd.Series, patterns: Sequence[str], by_stem: bool = False
) -> tuple[pd.Series, dict[str, Any]]:
    """Relative paths of images named ``names``, found by listing the folders matching
    ``patterns`` (globs relative to ``root``; ``"."`` = root itself), one ``scandir`` per folder.

    Nothing is opened or stat'ed per file. When none of the folders holds a file, the images are
    taken as absent and ``default`` (the official layout) is used. ``by_stem`` matches names
    without extension (VinDr ids against ``.dicom``/``.dcm``/``.png`` files).
    """
    found: dict[str, str] = {}
    folders = 0
    for pattern in patterns:
        if pattern == ".":
            dirs = [root]
        elif any(c in pattern for c in "*?["):
            dirs = sorted(p for p in root.glob(pattern) if p.is_dir())
        else:  # a plain name: one stat instead of a listing of root
            dirs = [root / pattern] if (root / pattern).is_dir() else []
        for d in dirs:
            rel = "" if d == root else d.relative_to(root).as_posix() + "/"
            try:
                entries = list(os.scandir(d))
            except OSError:
                continue
            n = 0
            for e in entries:
                if e.is_file():
                    key = e.name.rsplit(".", 1)[0] if by_stem else e.name
                    found.setdefault(key, rel + e.name)
                    n += 1
            folders += n > 0
    if not found:
        return default, {
            "located": False,
            "found": 0,
            "missing": None,
            "note": "no images found under --root; paths follow the official layout",
        }
    keys = names.str.rsplit(".", n=1).str[0] if by_stem and not names.empty else names
    hit = keys.map(found)
    n_found = int(hit.notna().sum())
    if n_found == 0:
        return default, {
            "located": False,
            "found": 0,
            "missing": None,
            "note": "no images found under --root; paths follow the official layout",
        }
    paths = hit.where(hit.notna(), default).astype(str)
    missing = int(len(names) - n_found)
    return paths, {"located": True, "found": n_found, "missing": missing, "folders": folders}


def check_image_files(
    root: Path, paths: pd.Series, drop: bool, quiet: bool = True
) -> tuple[np.ndarray, dict[str, Any]]:
    """Stat every image (``--check-files``/``--drop-missing``); returns (keep mask, info).

    With ``drop`` missing images are dropped (counted); otherwise the first missing image is an
    InputError. Each path goes through :func:`cxrbench.fileio.resolve_inside`.
    """
    from cxrbench.fileio import resolve_inside
    from cxrbench.progress import track

    items = track(paths, total=len(paths), description="checking images", quiet=quiet)
    exists = np.fromiter(
        (resolve_inside(root, p, where="index path").is_file() for p in items), dtype=bool, count=len(paths)
    )
    missing = int((~exists).sum())
    if missing and not drop:
        first = paths.iloc[int(np.flatnonzero(~exists)[0])]
        raise InputError(
            f"{missing} image file(s) missing under {root}, first {first!r}",
            where="--check-files",
            fix="complete the download, fix --root, or pass --drop-missing",
        )
    return exists, {"checked": True, "missing": missing, "dropped": missing if drop else 0}


# ------------------------------------------------------------------------------------------------
# Views, label policies, no_finding consistency
# ------------------------------------------------------------------------------------------------


def parse_views(spec: str | Sequence[str] | None) -> tuple[tuple[str, ...] | None, bool]:
    """``--views`` -> (allowed views or None for all, keep source-frontal images of unknown projection).

    ``frontal`` (default) = PA, AP, AP_SUPINE plus images the source marks frontal without a known
    projection (CheXpert decubitus/CheXlocalize test). ``all`` keeps everything.
    """
    if spec is None:
        spec = "frontal"
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise InputError("--views is empty", fix="use frontal, all, or a list such as PA,AP")
    if items == ["all"] or items == ["*"]:
        return None, True
    frontal = "frontal" in items
    views = set(FRONTAL_VIEWS) if frontal else set()
    for item in items:
        if item == "frontal":
            continue
        views.add(check_choice("--views", item.upper(), VIEWS))
    return tuple(v for v in VIEWS if v in views), frontal


def filter_views(
    frame: pd.DataFrame, spec: str, keep: np.ndarray | None = None
) -> tuple[pd.DataFrame, np.ndarray | None, dict[str, int]]:
    """Keep the rows whose view is asked for (and ``keep``, rows the adapter keeps): (kept frame,
    row mask or None when all are kept, dropped rows per view among the adapter's kept rows)."""
    views, frontal = parse_views(spec)
    base = np.ones(len(frame), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    if views is None:
        by_view = base
    else:
        by_view = frame["view"].isin(views).to_numpy()
        if frontal:
            by_view = by_view | frame["frontal"].to_numpy(dtype=bool)
    mask = base & by_view
    if mask.all():
        return frame, None, {}
    dropped = frame["view"][base & ~by_view].value_counts().to_dict()
    return frame.loc[mask].reset_index(drop=True), mask, {str(k): int(v) for k, v in dropped.items()}


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


# ------------------------------------------------------------------------------------------------
# Small helpers shared by adapters
# ------------------------------------------------------------------------------------------------

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
    from cxrbench.findings import sort_findings

    return sort_findings(f for t in terms for f in table.get(t, ()))


def make_frame(n: int, **columns: Any) -> pd.DataFrame:
    """A SourceData frame with every FRAME_COLUMNS entry (missing ones filled with None / False)."""
    unknown = set(columns) - set(FRAME_COLUMNS)
    assert not unknown, unknown
    data: dict[str, Any] = {}
    for c in FRAME_COLUMNS:
        value = columns.get(c)
        if value is None:
            value = np.zeros(n, dtype=bool) if c == "frontal" else np.full(n, None, dtype=object)
        data[c] = value
    return pd.DataFrame(data)


def label_block(n: int, findings: Sequence[str], columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Stack per-finding arrays into a float32 (n, K) block; a finding without a column is ABSENT."""
    block = np.full((n, len(findings)), ABSENT, dtype=np.float32)
    for k, f in enumerate(findings):
        if f in columns:
            block[:, k] = columns[f]
    return block


def official_split_values(
    values: pd.Series, mapping: Mapping[str, str], where: str, column: str
) -> pd.Series:
    """Map a release's split names onto train/val/test; an unknown value is an InputError."""
    out = values.map(mapping)
    bad = (out.isna() & values.notna()).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"unknown split value {values.iloc[row]!r} in column {column!r}",
            where=f"{where} row {row_of(row)}",
            fix=f"expected one of {', '.join(sorted(mapping))}",
        )
    assert set(out.dropna().unique()) <= set(SPLITS)
    return out


def register_file(report: dict[str, Any], role: str, path: Path) -> None:
    """Record a source file read (role -> path) in the report."""
    report.setdefault("files", {})[role] = str(path)


Adapter = Callable[[Path, IndexOptions], SourceData]


# ------------------------------------------------------------------------------------------------
# From SourceData to a Contract-2 index
# ------------------------------------------------------------------------------------------------


def finalize(data: SourceData, opts: IndexOptions) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Views -> label policy -> derived findings -> no_finding consistency -> --labels ->
    splits -> leakage check -> Contract-2 validation. Returns (index, findings, report)."""
    from cxrbench.findings import derivable, kleene_or, resolve_labels
    from cxrbench.schema import META_COLUMNS, validate_index
    from cxrbench.splits import assign_splits, check_leakage

    report = data.report
    report.setdefault("dropped", {})
    files = ", ".join(str(p) for p in report.get("files", {}).values()) or data.dataset
    frame, keep, report["dropped"]["views"] = filter_views(data.frame, opts.views, data.keep)
    if frame.empty:
        raise InputError(
            f"no image left after --views {opts.views} (and the rows the source drops)",
            where=files,
            fix="check --views (e.g. frontal, all, PA,AP)",
        )

    cols = list(data.findings)
    block = np.array(data.labels if keep is None else data.labels[keep], dtype=np.float32)
    report["label_values"] = apply_label_policy(block, opts.uncertain, opts.blank, data.blank_is_unknown)
    values = {f: block[:, i] for i, f in enumerate(cols)}
    for name, (op, parts) in data.derive.items():
        ored = kleene_or([values[p] for p in parts])
        values[name] = ored if op == "or" else np.where(np.isnan(ored), np.nan, 1.0 - ored).astype(np.float32)
    available = [f for f in values if f not in data.hidden]
    if available == cols:
        full = block
    elif available:
        full = np.column_stack([values[f] for f in available])
    else:
        full = np.zeros((len(frame), 0), np.float32)
    report["no_finding"] = reconcile_no_finding(full, available)
    values = {f: full[:, i] for i, f in enumerate(available)}

    findings = resolve_labels(opts.labels, available, data.dataset)
    for name, parts in derivable(available).items():
        if name in findings:
            values[name] = kleene_or([values[p] for p in parts])

    split, report["split"] = assign_splits(
        frame["patient_id"], frame["official_split"], opts.split_mode, opts.split_seed, opts.split_fractions
    )
    out = pd.DataFrame(
        {
            "image_id": frame["image_id"].astype(str),
            "patient_id": frame["patient_id"].astype(str),
            "study_id": pd.Series(frame["study_id"], dtype="str"),  # missing -> null
            "path": frame["path"].astype(str),
            "view": frame["view"].astype(str),
            "split": pd.Series(split, index=frame.index).astype(str),
            "dataset": data.dataset,
            "sex": pd.Series(frame["sex"], dtype="str"),
            "age": pd.to_numeric(frame["age"], errors="coerce").astype("float64"),
        }
    )
    out = pd.concat(
        [out, pd.DataFrame({f: values[f].astype(np.float32) for f in findings}, index=out.index)], axis=1
    )
    assert list(out.columns[: len(META_COLUMNS)]) == list(META_COLUMNS)
    check_leakage(out, where=f"split of {files}")
    validate_index(out, findings, where=files)
    report["findings"] = findings
    return out, findings, report

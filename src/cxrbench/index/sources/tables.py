"""Reading official metadata files exactly as released: CSV/TSV (gzipped or not) by column
name, with explicit missing-value tokens, numeric columns checked, ids unique, rows numbered as
the file's own data records (1 = the first record after the header)."""


from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_columns


def row_of(row: int) -> int:
    """1-based record number of 0-based data row ``row`` (the header is not counted; a record may
    span several physical lines when a quoted field holds newlines, as in PadChest)."""
    return int(row) + 1


def at_row(path: str | Path, row: int) -> str:
    """Where data row ``row`` (0-based, as read: blank lines skipped) is, in the file's own
    numbering: ``"FILE, line L"``, L the physical line where the record starts (line 1 = the
    header), as an editor shows it. Computed only when an error is reported (one pass over the file
    with the csv module, which follows quoted fields across lines); when the file cannot be read
    again: ``"FILE, data row R (row 1 = the first after the header)"``."""
    line = _line_of_record(Path(path), int(row))
    if line is not None:
        return f"{path}, line {line}"
    return f"{path}, data row {row_of(row)} (row 1 = the first after the header)"


def at_pos(path: str | Path, values: pd.Series | pd.DataFrame, pos: int) -> str:
    """:func:`at_row` of the ``pos``-th row (0-based position) of ``values``, whose row labels are the
    file's data rows as read: rows a filter removed keep their own line numbers."""
    label = values.index[int(pos)]
    return at_row(path, int(label) if isinstance(label, int | np.integer) else int(pos))


def _line_of_record(path: Path, row: int) -> int | None:
    import csv
    import io

    if path.name.endswith(".zip"):  # a zipped CSV (pandas reads it): no line numbers to give
        return None
    try:
        raw = path.open("rb") if not path.name.endswith(".gz") else gzip.open(path, "rb")
    except OSError:
        return None
    with raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") as text:
        sample = text.read(65536)
        text.seek(0)
        try:
            dialect = csv.Sniffer().sniff(sample.split("\n", 1)[0], delimiters=",;\t|")
        except csv.Error:
            dialect = csv.excel
        reader = csv.reader(text, dialect)
        try:
            next(reader)  # the header
            k = -1
            for record in reader:
                if any(field.strip() for field in record):  # pandas skips blank lines
                    k += 1
                    if k == row:
                        return _first_line(reader.line_num, record)
        except csv.Error:
            return None
    return None


def _first_line(last_line: int, record: list[str]) -> int:
    """csv's line_num is the record's last physical line; step back over newlines inside fields."""
    return last_line - sum(field.count("\n") for field in record)


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
    missing_fix: str | None = None,
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
    ``missing_fix`` replaces the fix of a missing column (official files: "check that this is the
    official file"; a user's CSV read through a mapping: "fix the mapping").
    """
    rename = dict(rename or {})
    header = _read(path, nrows=0, index_col=False, sep=sep).columns
    names = {c: rename.get(c.strip(), c.strip()) for c in header}
    check_columns(set(names.values()), required, where=str(path), fix=missing_fix)
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
                where=at_row(path, row),
                fix="check the file",
            )
        df[col] = num.astype("float32")


def check_unique(ids: pd.Series, path: Path | str, column: str, fix: str | None = None,
                 shown: int = 5) -> None:
    """Raise InputError listing the first ``shown`` duplicated ids with their lines, and how many
    ids and rows are duplicated in all."""
    dup = ids.duplicated(keep=False).to_numpy()
    if dup.any():
        repeated = ids[dup]
        names = list(dict.fromkeys(repeated.tolist()))
        listed = []
        for name in names[:shown]:
            positions = np.flatnonzero((ids == name).to_numpy())
            lines = ", ".join(at_pos(path, ids, p).rsplit(", ", 1)[-1] for p in positions[:3])
            listed.append(f"{name!r} ({lines}{', ...' if len(positions) > 3 else ''})")
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        raise InputError(
            f"duplicated {column} {'; '.join(listed)}{more} ({len(names):,} value(s) listed more than once, "
            f"in {int(dup.sum()):,} rows)",
            where=str(path),
            fix=fix or "each image must appear once; remove the duplicate rows",
        )


"""Generic CSV source for private datasets (e.g. the study's UKA-CXR), driven by a YAML mapping.

The mapping (``--mapping FILE.yaml``, validated with pydantic; an unknown key is an error naming
it) says which columns hold the image path, patient, and optionally study, view, split, sex and
age, and how each label column becomes a finding::

    name: uka_cxr                 # the index's `dataset` value (snake_case)
    file: labels.csv              # relative to --root (or absolute); --labels-file overrides
    separator: ","                # optional
    path_prefix: images/          # optional, prepended to the path column
    columns: {path: image_path, patient: patient_id, study: exam_id, view: view, split: split,
              sex: sex, age: age, image_id: image_id}    # image_id defaults to the path
    views: {"PA": PA, "AP liegend": AP_SUPINE}            # raw value -> Contract-2 view
    default_view: PA              # when there is no view column
    splits: {training: train, validation: val, test: test}  # default: train/val/test/validate
    sex_values: {m: M, w: F}      # default: M/F/O, male/female/other
    labels:
      cardiomegaly: {column: cardiomegaly, positive_at: 3}          # graded 0-4: >= 3 positive
      pleural_effusion: {left: effusion_left, right: effusion_right, positive_at: 3,
                         sides: separate}                           # -> pleural_effusion_left/_right
      congestion: {column: congestion, values: {0: 0, 1: 0, 2: 0, 3: 1, 4: 1, -1: uncertain}}
      no_finding: {derive: none_of_the_others}   # after --uncertain, from all other findings
    extra_findings: []            # non-canonical finding names you mean to use

Per label: ``column`` or ``left`` + ``right``; exactly one of ``positive_at`` (numeric: value >=
threshold is positive, below is negative; values outside ``scale``, default ``[0, 4]``, are
refused: set ``scale: [lowest, highest]`` for another grading, or ``scale: null``), ``values``
(raw value -> 1, 0, ``uncertain`` or ``unknown``) or ``derive: none_of_the_others`` (no_finding
only: 1 when every other finding is 0, 0 when any is 1, unknown otherwise); ``uncertain`` lists
raw values meaning uncertain (they follow ``--uncertain``); ``blank`` = ``unknown`` (default: NaN,
masked), ``negative`` or ``error``; ``sides`` = ``separate`` (default: ``<name>_left`` /
``<name>_right``), ``merge`` (one column, left OR right) or ``both``. A raw value the mapping does
not cover is an error naming the row and column. Without a split column: hash split by patient; a
split column without val gets a val carved by patient from train.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrbench.common.errors import InputError
from cxrbench.index.findings import NOT_ABNORMAL, check_finding_name, sort_findings
from cxrbench.index.schema import SPLITS, VIEWS
from cxrbench.index.sources.base import (
    IndexOptions,
    SourceData,
    make_frame,
    official_split_values,
    register_file,
)
from cxrbench.index.sources.files import clean_relative_paths
from cxrbench.index.sources.labels import SEX_VALUES, label_block
from cxrbench.index.sources.rows import filter_rows, first_of_duplicates
from cxrbench.index.sources.tables import at_pos, check_unique, read_csv

DEFAULT_SPLITS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validate": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
LabelValue = Literal[0, 1, "uncertain", "unknown"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Columns(_Strict):
    """Which CSV column holds what (only ``path`` and ``patient`` are required)."""

    path: str
    patient: str
    image_id: str | None = None
    study: str | None = None
    view: str | None = None
    split: str | None = None
    sex: str | None = None
    age: str | None = None


class LabelSpec(_Strict):
    """How one finding is read from one column or a left/right pair of columns."""

    column: str | None = None
    left: str | None = None
    right: str | None = None
    positive_at: float | None = None
    scale: tuple[float, float] | None = (0.0, 4.0)
    values: dict[str, LabelValue] | None = None
    uncertain: list[str] = Field(default_factory=list)
    blank: Literal["unknown", "negative", "error"] = "unknown"
    sides: Literal["separate", "merge", "both"] = "separate"
    derive: Literal["none_of_the_others"] | None = None

    @field_validator("values", mode="before")
    @classmethod
    def _keys_as_text(cls, v: Any) -> Any:
        return {str(k).strip(): val for k, val in v.items()} if isinstance(v, dict) else v

    @field_validator("uncertain", mode="before")
    @classmethod
    def _uncertain_as_text(cls, v: Any) -> Any:
        return [str(x).strip() for x in v] if isinstance(v, list) else v

    @model_validator(mode="after")
    def _one_source_one_rule(self) -> LabelSpec:
        if self.derive is not None:
            if self.column or self.left or self.right or self.positive_at is not None or self.values:
                raise ValueError("derive takes no column, left/right, positive_at or values")
            return self
        if bool(self.column) == bool(self.left or self.right):
            raise ValueError("give either column, or left and right")
        if (self.left is None) != (self.right is None):
            raise ValueError("left and right come together")
        if (self.positive_at is None) == (self.values is None):
            raise ValueError("give exactly one of positive_at or values")
        if self.scale is not None and not self.scale[0] < self.scale[1]:
            raise ValueError(f"scale {list(self.scale)} must be [lowest, highest] with lowest < highest")
        return self


def _rule(spec: LabelSpec) -> str:
    """One finding's coding in words, raw values quoted so that none reads as a class (``no`` is a value,
    not "no negative"): ``column c: '3', '4' = positive; '0', '1', '2' = negative; '-1' = uncertain``."""
    cols = spec.column or f"{spec.left}/{spec.right}"
    if spec.derive:
        return "positive when every other finding is negative"
    if spec.positive_at is not None:
        parts = [f"values >= {spec.positive_at:g} = positive, below = negative"]
    else:
        by: dict[str, list[str]] = {}
        words = {1: "positive", 0: "negative", "uncertain": "uncertain", "unknown": "unknown"}
        for raw, value in (spec.values or {}).items():
            by.setdefault(words[value], []).append(raw)
        parts = [f"{', '.join(repr(str(r)) for r in raws)} = {what}" for what, raws in by.items()]
    if spec.uncertain:
        parts.append(f"{', '.join(repr(str(r)) for r in spec.uncertain)} = uncertain")
    parts.append(f"blank = {spec.blank}")
    return f"column {cols}: " + "; ".join(parts)


def label_source(m: Mapping) -> str:
    """The mapping's label coding in words, one clause per finding (for the index report)."""
    return "from the CSV as the mapping says (" + " | ".join(
        f"{name}: {_rule(spec)}" for name, spec in m.labels.items()) + ")"


class Mapping(_Strict):
    """The YAML mapping of a private CSV dataset (see the module docstring)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    file: str | None = None
    separator: str = ","
    path_prefix: str = ""
    columns: Columns
    views: dict[str, str] | None = None
    default_view: str = "UNKNOWN"
    splits: dict[str, str] | None = None
    sex_values: dict[str, str] | None = None
    labels: dict[str, LabelSpec]
    extra_findings: list[str] = Field(default_factory=list)
    keep_rows: dict[str, list[str | int | float]] | None = None  # keep rows whose column holds a value
    drop_rows: dict[str, list[str | int | float]] | None = None  # drop rows whose column holds a value
    duplicates: Literal["error", "keep_first"] = "error"  # an image listed more than once

    @field_validator("views")
    @classmethod
    def _views_known(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for raw, view in (v or {}).items():
            if view not in VIEWS:
                raise ValueError(f"view {view!r} (for {raw!r}) is not one of {', '.join(VIEWS)}")
        return v

    @field_validator("default_view")
    @classmethod
    def _default_view_known(cls, v: str) -> str:
        if v not in VIEWS:
            raise ValueError(f"{v!r} is not one of {', '.join(VIEWS)}")
        return v

    @field_validator("splits")
    @classmethod
    def _splits_known(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for raw, split in (v or {}).items():
            if split not in SPLITS:
                raise ValueError(f"split {split!r} (for {raw!r}) is not one of {', '.join(SPLITS)}")
        return v


def load_mapping(path: Path) -> Mapping:
    """Read and validate a YAML mapping; every problem is one InputError naming the key and line."""
    from cxrbench.common.yamlio import load_yaml

    data, lines = load_yaml(path, "csv mapping")
    if not isinstance(data, dict):
        raise InputError(
            "the mapping must be a YAML dictionary",
            where=str(path),
            fix="see docs/datasets.md, section 'csv'",
        )
    try:
        mapping = Mapping.model_validate(data)
    except ValidationError as e:
        raise _mapping_error(e, path, lines) from None
    for name in mapping.extra_findings:
        if not _SNAKE.match(name):
            raise InputError(f"extra_findings: {name!r} is not a snake_case finding name", where=str(path),
                             fix=f"use lowercase letters, digits and '_' (e.g. {_snake(name)!r}), here and "
                                 "in labels")
    for name, spec in mapping.labels.items():
        check_finding_name(name, where=f"{path}: labels.{name}", extra=mapping.extra_findings)
        if spec.derive and name != "no_finding":
            raise InputError(
                f"labels.{name}: derive is only for no_finding",
                where=str(path),
                fix="read the finding from a column",
            )
    return mapping


_MODELS_AT = {"columns": Columns, "labels": LabelSpec}
_SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "finding"


def _mapping_error(err: ValidationError, path: Path, lines: dict[tuple, int]) -> InputError:
    """The first problem of a mapping as one line: an unknown key (with the closest valid one) is
    reported before the "required" error it causes."""
    from cxrbench.common.validation import closest, raised_input_error

    inner = raised_input_error(err)  # an InputError a validator raised: as it was
    if inner is not None:
        return inner
    errors = err.errors()
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = tuple(first["loc"])
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = next((lines[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in lines), None)
    where = f"{path}, line {line}" if line else str(path)
    if first["type"] == "extra_forbidden":
        model = Mapping if len(loc) == 1 else _MODELS_AT.get(str(loc[0]))
        hint = closest(str(loc[-1]), model.model_fields) if model is not None else None
        fix = f"did you mean {hint!r}?" if hint else "remove it (schema: docs/datasets.md, section 'csv')"
        return InputError(f"unknown key {key!r}", where=where, fix=fix)
    msg = first["msg"].removeprefix("Value error, ")
    return InputError(f"{key}: {msg}", where=where,
                      fix="see the mapping schema in docs/datasets.md, section 'csv'")


def _code_column(raw: pd.Series, spec: LabelSpec, where: str, column: str) -> np.ndarray:
    """Raw strings -> float32 1/0/-1/NaN under ``spec``; an uncovered value is an InputError."""
    text = raw.str.strip()
    blank = text.isna() | (text == "")
    out = np.full(len(raw), np.nan, dtype=np.float32)
    unc = text.isin(spec.uncertain).to_numpy() & ~blank.to_numpy()
    rest = ~blank.to_numpy() & ~unc
    if spec.positive_at is not None:
        num = pd.to_numeric(text.where(rest), errors="coerce").to_numpy(dtype=np.float64)
        bad = rest & np.isnan(num)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise InputError(
                f"non-numeric value {raw.iloc[row]!r} in column {column!r}",
                where=at_pos(where, raw, row),
                fix="graded labels must be numbers, or list the value under uncertain",
            )
        if spec.scale is not None:
            lo, hi = spec.scale
            outside = rest & ((num < lo) | (num > hi))
            if outside.any():
                row = int(np.flatnonzero(outside)[0])
                raise InputError(
                    f"grade {raw.iloc[row]!r} in column {column!r} is outside the label's scale "
                    f"{lo:g}-{hi:g} ({int(outside.sum())} value(s) in all)",
                    where=at_pos(where, raw, row),
                    fix="correct the value, list it under uncertain, or give the label its real "
                        "scale (scale: [lowest, highest], or scale: null for none)",
                )
        out[rest] = (num[rest] >= spec.positive_at).astype(np.float32)
    else:
        codes = {"1": 1.0, "0": 0.0, "uncertain": -1.0, "unknown": np.nan}
        table = {k: codes[str(v)] for k, v in (spec.values or {}).items()}
        numeric = {}
        for k, v in table.items():
            try:
                numeric[float(k)] = v
            except ValueError:
                pass
        uniques = pd.unique(text[rest])
        lookup = {}
        for u in uniques:
            if u in table:
                lookup[u] = table[u]
                continue
            try:
                lookup[u] = numeric[float(u)]
                continue
            except (ValueError, KeyError):
                row = int(np.flatnonzero(rest & (text == u).to_numpy())[0])
                raise InputError(
                    f"unknown label value {u!r} in column {column!r}",
                    where=at_pos(where, raw, row),
                    fix=f"add it to the mapping's values for this label ({', '.join(table)})",
                ) from None
        out[rest] = text[rest].map(lookup).to_numpy(dtype=np.float32)
    out[unc] = -1.0
    if spec.blank == "negative":
        out[blank.to_numpy()] = 0.0
    elif spec.blank == "error" and blank.any():
        row = int(np.flatnonzero(blank.to_numpy())[0])
        raise InputError(
            f"blank value in column {column!r}",
            where=at_pos(where, raw, row),
            fix="fill it, or set blank: unknown / negative for this label",
        )
    return out


def read(root: Path, opts: IndexOptions) -> SourceData:
    """Read a CSV dataset described by ``opts.mapping`` (see module docstring)."""
    if opts.mapping is None:
        raise InputError(
            "--dataset csv needs --mapping FILE.yaml", fix="write a mapping (docs/datasets.md, 'csv')"
        )
    m = load_mapping(opts.mapping)
    report: dict = {"mapping": str(opts.mapping)}
    path = _label_file(root, opts, m)
    register_file(report, "labels", path)
    df, paths, image_id = _rows(path, m, str(opts.mapping), report)
    where = str(path)
    labels, derive, hidden = _labels(df, m, where, str(opts.mapping))
    findings = sort_findings(labels)
    c = m.columns
    sex = None
    if c.sex:
        sex_table = {k.upper(): v for k, v in (m.sex_values or SEX_VALUES).items()}
        sex = df[c.sex].str.strip().str.upper().map(sex_table).astype(object).where(lambda s: s.notna(), None)
    age = pd.to_numeric(df[c.age], errors="coerce").astype("float64") if c.age else None
    frame = make_frame(
        len(df),
        image_id=image_id,
        patient_id=df[c.patient].str.strip(),
        study_id=df[c.study].str.strip() if c.study else None,
        path=paths,
        view=_views(df, m, where),
        sex=sex,
        age=age,
        official_split=_splits(df, m, where),
    )
    report["rows_read"] = len(df)
    report["images"] = {"located": False, "note": "paths come from the CSV; use --check-files to verify"}
    report["label_source"] = label_source(m)
    block = label_block(len(df), findings, labels)
    return SourceData(
        m.name,
        frame,
        findings,
        block,
        blank_is_unknown=False,
        report=report,
        derive=derive,
        hidden=tuple(hidden),
        rows_file=Path(path),
    )


def _label_file(root: Path, opts: IndexOptions, m: Mapping) -> Path:
    """The label CSV: ``--labels-file``, else the mapping's ``file`` (relative to the dataset root)."""
    if opts.labels_file is not None:
        return Path(opts.labels_file)
    if m.file is not None:
        return Path(m.file) if Path(m.file).is_absolute() else root / m.file
    raise InputError(
        "no label file", where=str(opts.mapping), fix="set `file:` in the mapping or pass --labels-file"
    )


def _rows(path: Path, m: Mapping, mapping_file: str, report: dict,
          ) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """``(rows kept, their image paths, their image ids)``: the CSV read by column name, the mapping's row
    filters and duplicate rule applied, blank paths/patients and repeated images refused."""
    c = m.columns
    meta_cols = [x for x in (c.path, c.patient, c.image_id, c.study, c.view, c.split, c.sex, c.age) if x]
    label_cols = [x for s in m.labels.values() for x in (s.column, s.left, s.right) if x]
    filter_cols = [*(m.keep_rows or {}), *(m.drop_rows or {})]
    df = read_csv(path, required=list(dict.fromkeys(meta_cols + label_cols + filter_cols)), sep=m.separator,
                  missing_fix=f"fix the column names in the mapping {mapping_file} (they must match the "
                              "CSV's header exactly)")
    where = str(path)
    df = filter_rows(df, m.keep_rows, m.drop_rows, where, report)  # row labels (CSV lines) are kept
    for col in (c.path, c.patient):
        blank = df[col].isna().to_numpy()
        if blank.any():
            raise InputError(
                f"column {col!r} is blank",
                where=at_pos(where, df, int(np.flatnonzero(blank)[0])),
                fix="every image needs a path and a patient",
            )
    paths = clean_relative_paths(m.path_prefix + df[c.path].str.strip(), where, c.path)
    image_id = df[c.image_id].str.strip() if c.image_id else paths
    if m.duplicates == "keep_first":
        df, image_id = first_of_duplicates(df, image_id, c.image_id or c.path, where, report)
        paths = paths[image_id.index]
    check_unique(image_id, path, c.image_id or c.path,
                 fix="each image must appear once: remove the repeated rows, or set `duplicates: "
                     "keep_first` in the mapping to keep the first row of each (the others are counted "
                     "in the index report)")
    return df, paths, image_id


def _labels(df: pd.DataFrame, m: Mapping, where: str, mapping_file: str,
            ) -> tuple[dict[str, np.ndarray], dict[str, tuple[str, tuple[str, ...]]], list[str]]:
    """``(coded label columns, derived findings, hidden side columns)`` of the mapping's labels."""
    labels: dict[str, np.ndarray] = {}
    derive: dict[str, tuple[str, tuple[str, ...]]] = {}
    hidden: list[str] = []
    for name, spec in m.labels.items():
        if spec.derive:
            continue
        if spec.column:
            labels[name] = _code_column(df[spec.column], spec, where, spec.column)
            continue
        sides = (f"{name}_left", f"{name}_right")
        labels[sides[0]] = _code_column(df[spec.left], spec, where, spec.left)
        labels[sides[1]] = _code_column(df[spec.right], spec, where, spec.right)
        if spec.sides in ("merge", "both"):
            derive[name] = ("or", sides)  # computed after --uncertain, like every derived finding
        if spec.sides == "merge":
            hidden += sides
    outputs = [f for f in labels if f not in hidden] + list(derive)
    for name, spec in m.labels.items():
        if spec.derive:
            parts = tuple(f for f in outputs if f not in NOT_ABNORMAL and f != name)
            if not parts:
                raise InputError(
                    f"labels.{name}: nothing to derive from",
                    where=mapping_file,
                    fix="map at least one other finding",
                )
            derive[name] = ("none_of", parts)
    return labels, derive, hidden


def _views(df: pd.DataFrame, m: Mapping, where: str) -> pd.Series:
    """Each row's view through the mapping's ``views:`` table (or the canonical names themselves)."""
    c = m.columns
    if not c.view:
        return pd.Series(m.default_view, index=df.index, dtype=object)
    raw = df[c.view].str.strip()
    table = dict(m.views or {})
    view = raw.map(table) if table else raw.str.upper().where(raw.str.upper().isin(VIEWS))
    bad = (view.isna() & raw.notna()).to_numpy()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"unknown view {raw.iloc[row]!r} in column {c.view!r}",
            where=at_pos(where, raw, row),
            fix=f"map it under `views:` in the mapping (to one of {', '.join(VIEWS)})",
        )
    return view.fillna("UNKNOWN")


def _splits(df: pd.DataFrame, m: Mapping, where: str) -> pd.Series | None:
    """The official split of each row (None without a split column); a blank split is refused."""
    c = m.columns
    if not c.split:
        return None
    table = m.splits or DEFAULT_SPLITS
    official = official_split_values(
        df[c.split].str.strip().str.lower() if not m.splits else df[c.split].str.strip(),
        table,
        where,
        c.split,
    )
    if official.isna().any():
        row = int(np.flatnonzero(official.isna().to_numpy())[0])
        raise InputError(
            f"blank split in column {c.split!r}",
            where=at_pos(where, official, row),
            fix="give every row a split, or drop `split` from the mapping for a hash split",
        )
    return official

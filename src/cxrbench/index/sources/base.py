"""What every source shares: the index options, the adapter's output and :func:`finalize`.

An adapter (one module per dataset) reads the files exactly as released and returns a
:class:`SourceData`: one row per image with Contract-2 metadata and the *official* split when the
release has one, and a float32 label block with one column per native finding coded as
:mod:`cxrbench.index.sources.labels` describes. :func:`finalize` (called by
:func:`cxrbench.index.build.build_index`) then applies the :class:`IndexOptions` in a fixed order:
views -> label policy -> derived findings -> ``no_finding`` consistency -> ``--labels`` -> splits
-> leakage check -> Contract-2 validation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ConfigDict, ValidationError, field_validator, model_validator

from cxrbench.common.errors import InputError, spell
from cxrbench.common.validation import CheckedModel, check_choice, closest, raised_input_error
from cxrbench.index.schema import FRONTAL_VIEWS, SPLITS, VIEWS
from cxrbench.index.sources.labels import (
    BLANK_POLICIES,
    UNCERTAIN_POLICIES,
    apply_label_policy,
    reconcile_no_finding,
)
from cxrbench.index.sources.tables import at_pos, at_row

READER_RULES: tuple[str, ...] = ("majority", "any")
LABELERS: tuple[str, ...] = ("chexpert", "negbio")
SPLIT_MODES: tuple[str, ...] = ("official", "hash", "stratified")
CARVE_METHODS: tuple[str, ...] = ("stratified", "hash")
MIN_POSITIVES = 10  # fewer positives (or negatives) of a finding in a split: a warning at index time
_FLAGS = {"split_mode": "--splits"}  # options whose command-line flag is not --<name>


class IndexOptions(CheckedModel):
    """Every option of ``cxrbench index``, the single list used by the CLI, the Python API
    (:func:`cxrbench.index.build.build_index`) and a study's ``datasets.<name>`` section.

    Frozen and validated: an unknown option or a bad value raises one InputError naming it
    (``IndexOptions(uncertain="zero")``: ``uncertain got 'zero', which is not allowed. Fix: did you
    mean 'zeros'?``; ``--uncertain`` on the command line). The options (``cxrbench index --help``
    and docs/datasets.md say more):

    - ``labels``: a label preset (``study-cxr14``, ...) or a comma list of findings and presets.
    - ``uncertain`` / ``blank``: policy for uncertain (-1) / blank labels: ``zeros``, ``ones``
      (uncertain only) or ``ignore`` (unknown, masked).
    - ``views``: ``frontal``, ``all`` or a list such as ``PA,AP``.
    - ``split_mode`` (``--splits``): ``official``, ``stratified`` or ``hash``; ``carve``: how missing
      splits are made (``stratified``, ``hash``); ``split_seed``; ``split_fractions``: train, val,
      test shares (``"0.7,0.1,0.2"``).
    - ``readers`` (VinDr: ``majority``/``any``), ``labeler`` (MIMIC: ``chexpert``/``negbio``),
      ``radiologist_test`` (MIMIC's radiologist-labelled test set).
    - ``labels_file``: the label CSV when not at its official place; ``mapping``: the YAML mapping of
      a ``csv`` dataset; ``check_files``: every image must exist; ``drop_missing``: drop rows whose
      image is missing; ``demographics``: CheXpert's released demographics table (``CHEXPERT
      DEMO.xlsx`` or a CSV export), joined by patient as subgroup columns.

    Example::

        opts = IndexOptions(labels="study-cxr14", split_mode="hash", split_seed=1)
        df, findings, report = cxrbench.build_index("nih", "/data/nih", options=opts)
    """

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    labels: str = "all"
    uncertain: str = "zeros"
    blank: str = "zeros"
    views: str = "frontal"
    split_mode: str = "official"
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    carve: str = "stratified"
    readers: str = "majority"
    labeler: str = "chexpert"
    radiologist_test: bool = False
    labels_file: Path | None = None
    mapping: Path | None = None
    demographics: Path | None = None  # CheXpert: the released demographics table (race, ethnicity, ...)
    check_files: bool = False
    drop_missing: bool = False

    @field_validator("split_fractions", mode="before")
    @classmethod
    def _fractions(cls, v: Any) -> Any:
        from cxrbench.index.splits import parse_fractions

        return parse_fractions(v)

    @field_validator("split_seed", mode="before")
    @classmethod
    def _seed(cls, v: Any) -> Any:
        if isinstance(v, bool) or not str(v).lstrip("-").isdigit():
            flag = spell("--split-seed")
            raise InputError(f"{flag} got {v!r}", where=flag, fix="give an integer")
        return int(v)

    @model_validator(mode="after")
    def _choices(self) -> IndexOptions:
        return self.validated()

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "index options") -> IndexOptions:
        """Validate ``values`` (keys are the field names); unknown keys and bad values -> InputError."""
        unknown = [k for k in values if k not in cls.model_fields]
        if unknown:
            hint = closest(unknown[0], cls.model_fields)
            raise InputError(f"unknown index option {unknown[0]!r}", where=where,
                             fix=(f"did you mean {hint!r}? " if hint else "")
                             + f"options: {', '.join(cls.model_fields)}")
        try:
            return cls.model_validate(dict(values))
        except ValidationError as e:
            raise cls.input_error(e, where) from None

    @classmethod
    def input_error(cls, err: ValidationError, where: str) -> InputError:
        """The first problem of ``err`` as one InputError naming the option as the caller writes it."""
        inner = raised_input_error(err)
        if inner is not None:
            return inner
        first = next((e for e in err.errors() if e.get("type") == "extra_forbidden"), err.errors()[0])
        key = str(first.get("loc", ("option",))[0])
        if first.get("type") == "extra_forbidden":
            hint = closest(key, cls.model_fields)
            return InputError(f"unknown index option {key!r}", where=where,
                              fix=(f"did you mean {hint!r}? " if hint else "")
                              + f"options: {', '.join(cls.model_fields)}")
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        flag = spell(_FLAGS.get(key, "--" + key.replace("_", "-")), key)
        return InputError(f"{flag}: {msg} (got {first.get('input')!r})", where=where, fix="correct the value")

    def validated(self) -> IndexOptions:
        """Raise InputError on an unknown choice; return self."""
        check_choice("--uncertain", self.uncertain, UNCERTAIN_POLICIES)
        check_choice("--blank", self.blank, BLANK_POLICIES)
        check_choice("--readers", self.readers, READER_RULES)
        check_choice("--labeler", self.labeler, LABELERS)
        check_choice(spell("--splits", "split_mode"), self.split_mode, SPLIT_MODES)
        check_choice("--carve", self.carve, CARVE_METHODS)
        parse_views(self.views)
        return self

    def report(self) -> dict[str, Any]:
        """The options as the index report records them (paths as strings)."""
        out = self.model_dump()
        out["split_fractions"] = list(self.split_fractions)
        for key in ("labels_file", "mapping", "demographics"):
            out[key] = str(out[key]) if out[key] is not None else None
        return out


# Columns of SourceData.frame besides the findings. ``official_split`` holds train/val/test or
# NA; ``frontal`` marks images the source calls frontal even when the projection is unknown;
# ``found`` says whether the adapter found the image file while locating the image folders
# (None: not located; the existence check then lists the folders itself).
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
    "found",
)


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
    rows_file: Path | None = None  # the text file whose data rows the frame's row labels number
    # Localization ground truth (cxrbench.index.regions): boxes and masks of the images read, in the
    # release's pixels; finalize keeps those of the indexed images and build_index writes them beside
    # the index. None: the release has none (or they were not found).
    regions: pd.DataFrame | None = None
    # Subgroup columns beyond Contract 2's (SUBGROUP_COLUMNS), as further columns of ``frame``: they
    # follow the metadata columns of the index, text with missing values null.
    extra: tuple[str, ...] = ()


# Documented subgroup columns an adapter may add to the index (docs/ARCHITECTURE.md, Contract 2):
# CheXpert's released demographics. Only present when the source provides them.
SUBGROUP_COLUMNS: tuple[str, ...] = ("race", "ethnicity", "insurance")


def register_file(report: dict[str, Any], role: str, path: Path) -> None:
    """Record a source file read (role -> path) in the report."""
    report.setdefault("files", {})[role] = str(path)


Adapter = Callable[[Path, IndexOptions], SourceData]


def finalize(data: SourceData, opts: IndexOptions) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """Views -> label policy -> derived findings -> no_finding consistency -> --labels ->
    splits -> leakage check -> Contract-2 validation. Returns (index, findings, report)."""
    from cxrbench.index.findings import derivable, kleene_or, resolve_labels
    from cxrbench.index.schema import META_COLUMNS, validate_index
    from cxrbench.index.splits import assign_splits, check_leakage

    report = data.report
    report.setdefault("dropped", {})
    files = ", ".join(str(p) for p in report.get("files", {}).values()) or data.dataset
    if data.frame.empty:
        raise InputError("the metadata has no data rows (only a header?)", where=files,
                         fix="check that this is the complete file")
    frame, keep, report["dropped"]["views"] = filter_views(data.frame, opts.views, data.keep)
    if frame.empty:
        kept = data.frame if data.keep is None else data.frame[np.asarray(data.keep, dtype=bool)]
        if kept.empty:
            raise InputError(f"every one of the {len(data.frame):,} rows is dropped by the source's own "
                             "rules (see the index report's 'dropped')", where=files,
                             fix="check the file and the options that drop rows")
        seen = kept["view"].astype(str).value_counts()
        found = ", ".join(f"{v} ({n:,})" for v, n in seen.items())
        every = spell("--views all", "views='all'")
        fix = f"choose {spell('--views')} from the views found, or {every}"
        if "UNKNOWN" in seen and report.get("mapping"):  # the csv source: views come from its mapping
            fix += ("; the CSV has no view column: set default_view (e.g. PA) in the mapping, or map a "
                    "view column under columns.view")
        asked = spell(f"--views {opts.views}", f"views={opts.views!r}")
        raise InputError(f"no image left after {asked}: the rows have views {found}",
                         where=files, fix=fix)

    cols = list(data.findings)
    block = np.array(data.labels if keep is None else data.labels[keep], dtype=np.float32)
    report["label_values"] = apply_label_policy(block, opts.uncertain, opts.blank, data.blank_is_unknown)
    report["label_definition"] = label_definition(report.get("label_source"), opts, data.blank_is_unknown,
                                                  report["label_values"])
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
        frame["patient_id"], frame["official_split"], opts.split_mode, opts.split_seed, opts.split_fractions,
        labels=np.column_stack([values[f] for f in findings]) if findings else None, carve=opts.carve,
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
    for col in data.extra:
        assert col in SUBGROUP_COLUMNS, col
        out[col] = pd.Series(frame[col], dtype="str")
    out = pd.concat(
        [out, pd.DataFrame({f: values[f].astype(np.float32) for f in findings}, index=out.index)], axis=1
    )
    assert list(out.columns[: len(META_COLUMNS)]) == list(META_COLUMNS)
    if frame["found"].notna().all():  # known from locating the images: no second listing
        out.attrs["image_found"] = frame["found"].to_numpy(dtype=bool)
    check_leakage(out, where=f"split of {files}")
    locate = None
    if data.rows_file is not None:  # rows named as the file's own lines (1-based, header counted)
        rows_file = data.rows_file

        def locate(label: Any) -> str:
            return at_row(rows_file, int(label))
    validate_index(out, findings, where=files, locate=locate)
    report["findings"] = findings
    recount_splits(out, findings, opts, report, files)
    return out, findings, report


def recount_splits(df: pd.DataFrame, findings: list[str], opts: IndexOptions, report: dict[str, Any],
                   where: str) -> None:
    """``report['split']['counts']`` and the thin-split warnings of ``df`` (replacing earlier ones:
    called again when --drop-missing leaves rows out, so that warnings quote the indexed counts)."""
    old = set(split_warnings(report["split"]["counts"])) if "counts" in report.get("split", {}) else set()
    report["split"]["counts"] = split_counts(df, findings)
    _check_split_sizes(df, opts, report["split"], where)
    kept = [w for w in report.get("warnings", []) if w not in old]
    report["warnings"] = kept + split_warnings(report["split"]["counts"])


_POLICY_WORDS = {"zeros": "negative", "ones": "positive", "ignore": "unknown (left out of training loss "
                 "and metrics)"}


def label_definition(source: str | None, opts: IndexOptions, blank_is_unknown: bool,
                     counts: Mapping[str, int]) -> str:
    """Which values became positive / negative / unknown, in one sentence for the Methods text."""
    text = f"Labels: {source}" if source else "Labels: as the source codes them"
    rules = []
    if counts.get("uncertain_values") or blank_is_unknown:  # CheXpert-style labelers have the class
        rules.append(f"uncertain counted as {_POLICY_WORDS[opts.uncertain]} "
                     f"({counts.get('uncertain_values', 0):,} values)")
    if blank_is_unknown:
        blank = "negative" if opts.blank == "zeros" else _POLICY_WORDS["ignore"]
        rules.append(f"not mentioned counted as {blank} ({counts.get('blank_values', 0):,} values)")
    if counts.get("not_labelled"):
        rules.append(f"{counts['not_labelled']:,} values not labelled at all are unknown")
    return text + ("; " + "; ".join(rules) if rules else "") + "."


def split_counts(df: pd.DataFrame, findings: list[str]) -> dict[str, dict[str, Any]]:
    """Per split: images, patients, and per finding positives / negatives / unknown (vectorized)."""
    out: dict[str, dict[str, Any]] = {}
    split = df["split"].to_numpy(dtype=object)
    block = df[list(findings)].to_numpy(dtype=np.float32) if findings else np.zeros((len(df), 0), np.float32)
    patients, _ = pd.factorize(df["patient_id"])
    for s in SPLITS:
        mask = split == s
        n = int(mask.sum())
        sub = block[mask]
        pos, neg = (sub == 1).sum(axis=0), (sub == 0).sum(axis=0)
        out[s] = {"images": n, "patients": int(np.unique(patients[mask]).size),
                  "findings": {f: {"positive": int(pos[k]), "negative": int(neg[k]),
                                   "unknown": n - int(pos[k]) - int(neg[k])} for k, f in enumerate(findings)}}
    return out


def split_warnings(counts: dict[str, dict[str, Any]], minimum: int = MIN_POSITIVES) -> list[str]:
    """One line per finding with a split holding fewer than ``minimum`` positives or negatives."""
    lines = []
    findings = next(iter(counts.values()))["findings"] if counts else {}
    for f in findings:
        thin = [(s, c["findings"][f]) for s, c in counts.items()
                if c["images"] and min(c["findings"][f]["positive"], c["findings"][f]["negative"]) < minimum]
        if thin:
            parts = "; ".join(f"{s} {c['positive']} positive / {c['negative']} negative" for s, c in thin)
            lines.append(f"finding {f!r}: {parts} (fewer than {minimum}: its AUROC there is unreliable or "
                         f"undefined; try another {spell('--split-seed')} or {spell('--split-fractions')}, "
                         f"or leave it out with {spell('--labels')})")
    return lines


def _check_split_sizes(df: pd.DataFrame, opts: IndexOptions, info: dict[str, Any], where: str) -> None:
    """A split that was made with a share above 0 but got no image is an error with the fix."""
    made = str(info.get("method", "")).startswith(("hash", "stratified"))
    carved = info.get("carved", [])
    for s, share in zip(SPLITS, opts.split_fractions, strict=True):
        if share > 0 and (made or s in carved) and info["counts"][s]["images"] == 0:
            shares = ",".join(f"{x:g}" for x in opts.split_fractions)
            raise InputError(f"the {s} split got no image ({len(df):,} images of "
                             f"{df['patient_id'].nunique():,} patients in all)", where=where,
                             fix=f"give {s} a larger share with {spell('--split-fractions')} (now {shares}), "
                                 "or index "
                                 "more patients")


def parse_views(spec: str | Sequence[str] | None) -> tuple[tuple[str, ...] | None, bool]:
    """``--views`` -> (allowed views or None for all, keep source-frontal images of unknown projection).

    ``frontal`` (default) = PA, AP, AP_SUPINE plus images the source marks frontal without a known
    projection (CheXpert decubitus/CheXlocalize test). ``all`` keeps everything.
    """
    if spec is None:
        spec = "frontal"
    items = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not items:
        raise InputError(f"{spell('--views')} is empty", fix="use frontal, all, or a list such as PA,AP")
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
            where=at_pos(where, values, row),
            fix=f"expected one of {', '.join(sorted(mapping))}",
        )
    assert set(out.dropna().unique()) <= set(SPLITS)
    return out

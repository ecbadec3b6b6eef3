"""What every phantom format shares: options, splits, labels, boxes and the truth frame."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import closest
from cxrbench.phantom.cohort import FINDINGS, POSITIVE

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Option:
    """A generate() option: name, default, type (bool, int, float, str, dict), help, allowed values."""

    name: str
    default: Any
    kind: type
    help: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None

    def coerce(self, value: Any) -> Any:
        """``value`` as this option's type (strings from the command line are parsed)."""
        where = f"option {self.name!r}"
        if value is None:
            return None
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    low = value.strip().lower()
                    if low not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                        raise ValueError(value)
                    value = low in ("1", "true", "yes", "on")
                else:
                    value = bool(value)
            elif self.kind is int:
                if isinstance(value, float) and not value.is_integer():
                    raise ValueError(value)
                value = int(value)
            elif self.kind is float:
                value = float(value)
            elif self.kind is str:
                value = str(value)
            elif self.kind is dict:
                value = parse_mapping(value, where)
        except InputError:  # a ValueError too: parse_mapping's own message
            raise
        except (TypeError, ValueError):
            raise InputError(
                f"got {value!r}, expected a {self.kind.__name__}", where=where, fix=self.help
            ) from None
        if self.choices is not None and value not in self.choices:
            hint = closest(str(value), [str(c) for c in self.choices])
            raise InputError(
                f"got {value!r}",
                where=where,
                fix=(f"did you mean {hint!r}? " if hint else "")
                + f"use one of {', '.join(map(str, self.choices))}",
            )
        if isinstance(value, int | float) and not isinstance(value, bool):
            if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
                raise InputError(
                    f"got {value}, outside [{self.low}, {self.high}]", where=where, fix=self.help
                )
        return value


def parse_mapping(value: Any, where: str) -> dict[str, float]:
    """``{"a": 0.1}`` or ``"a=0.1,b=0.2"`` -> dict of floats."""
    if isinstance(value, dict):
        return {str(k): float(v) for k, v in value.items()}
    out: dict[str, float] = {}
    for part in str(value).split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise InputError(
                f"{part.strip()!r} is not NAME=VALUE",
                where=where,
                fix="write e.g. cardiomegaly=0.3,edema=0.1",
            )
        key, val = part.split("=", 1)
        try:
            out[key.strip()] = float(val)
        except ValueError:
            raise InputError(
                f"{val.strip()!r} is not a number", where=where, fix="write e.g. cardiomegaly=0.3"
            ) from None
    return out


COMMON_OPTIONS: tuple[Option, ...] = (
    Option("prevalence", None, dict, "per-finding prevalence per study, e.g. cardiomegaly=0.3,edema=0.1"),
    Option(
        "views", None, dict, "view shares, e.g. PA=0.6,AP=0.25,LATERAL=0.15 (at most one lateral per study)"
    ),
    Option("images_per_patient", None, float, "mean images per patient (>= 1)", low=1.0, high=100.0),
    Option(
        "mild_rate",
        None,
        float,
        "chance per finding of a faint grade 1-2 finding labelled negative",
        low=0.0,
        high=1.0,
    ),
    Option("batch_size", 4, int, "images rendered per vectorized batch", low=1, high=4096),
    Option("quiet", False, bool, "no progress bar"),
    Option("overwrite", False, bool, "replace a previous phantom in OUT"),
)


# CheXpert and MIMIC share the CheXpert labeler's -1.0 (uncertain) value.
UNCERTAIN_RATE = Option("uncertain_rate", 0.0, float, "share of positive labels written as -1.0 (uncertain)",
                        low=0.0, high=1.0)


class PhantomFormat:
    """Base class of one official dataset layout. Subclasses fill the class attributes and methods."""

    name: ClassVar[str] = ""
    truth_findings: ClassVar[tuple[str, ...]] = ()
    drawn: ClassVar[tuple[str, ...]] = FINDINGS
    default_views: ClassVar[dict[str, float]] = {"PA": 0.6, "AP": 0.25, "LATERAL": 0.15}
    images_per_patient: ClassVar[float] = 2.5
    mild_rate: ClassVar[float] = 0.0
    one_image_per_patient: ClassVar[bool] = False
    one_image_per_study: ClassVar[bool] = False
    split_defaults: ClassVar[dict[str, float]] = {"test": 0.2}
    options: ClassVar[tuple[Option, ...]] = ()
    needs_boxes: ClassVar[bool] = False  # write_image gets finding boxes
    needs_masks: ClassVar[bool] = False  # take_masks gets every image's finding masks (before write_image)
    # truth finding -> the render masks that show it (their union), for the truth regions
    region_masks: ClassVar[dict[str, tuple[str, ...]]] = {}

    def __init__(self, opts: dict[str, Any], size: int, seed: int) -> None:
        self.opts = opts
        self.size = size
        self.seed = seed

    @classmethod
    def all_options(cls) -> tuple[Option, ...]:
        split_opts = tuple(
            Option(f"{s}_fraction", None, float, f"share of patients in the {s} split", low=0.0, high=0.9)
            for s in cls.split_defaults
        )
        return COMMON_OPTIONS + split_opts + cls.options

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        """Validate ``given`` against this format's options and fill the defaults."""
        spec = {o.name: o for o in cls.all_options()}
        for key in given:
            if key not in spec:
                hint = closest(key, spec)
                raise InputError(
                    f"unknown option {key!r} for format {cls.name!r}",
                    where="phantom options",
                    fix=(f"did you mean {hint!r}? " if hint else "") + f"options: {', '.join(sorted(spec))}",
                )
        out = {name: o.coerce(given[name]) if name in given else o.default for name, o in spec.items()}
        if out["images_per_patient"] is None:
            out["images_per_patient"] = cls.images_per_patient
        if out["mild_rate"] is None:
            out["mild_rate"] = cls.mild_rate
        if out["views"] is None:
            out["views"] = dict(cls.default_views)
        for s, default in cls.split_defaults.items():
            if out[f"{s}_fraction"] is None:
                out[f"{s}_fraction"] = default
        if sum(out[f"{s}_fraction"] for s in cls.split_defaults) > 0.9:
            raise InputError(
                "split fractions add up to more than 0.9",
                where="phantom options",
                fix="leave at least 10% of patients for training",
            )
        return out

    # ---- to implement -------------------------------------------------------------------------
    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        """Add ids, relative paths, splits and per-image metadata to the cohort (may drop rows)."""
        raise NotImplementedError

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        """Encode and write one image (float [0, 1], (H, W)) to ``root / row['path']``.

        ``boxes`` (formats with ``needs_boxes``): render.BOX_NAMES -> (x_min, y_min, x_max, y_max) in
        pixels, or None when that finding is not on this image.
        """
        raise NotImplementedError

    def take_masks(self, row: dict[str, Any], masks: dict[str, np.ndarray]) -> None:
        """Formats with ``needs_masks``: keep what the official box / mask files need of one image's
        boolean masks (render.MASK_NAMES, membership above :data:`MASK_THRESHOLD`, image pixels)."""

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        """Write the metadata tables."""
        raise NotImplementedError

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        """The Contract-2 truth frame (see truth_frame)."""
        raise NotImplementedError


def write_bytes(root: Path, rel: str, data: bytes) -> None:
    """Write ``data`` to ``root / rel`` (inside the staging folder, which is published atomically)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def assign_splits(
    n_patients: int,
    rng: np.random.Generator,
    fractions: dict[str, float],
    names: dict[str, str] | None = None,
) -> np.ndarray:
    """A split name per patient: ``round(f * n)`` patients per split (at least one when f > 0 and
    there are enough patients), the rest ``train``; random but seeded. ``names`` renames splits."""
    names = names or {}
    out = np.full(n_patients, names.get("train", "train"), dtype=object)
    order = rng.permutation(n_patients)
    start = 0
    active = [(s, f) for s, f in fractions.items() if f > 0]
    for s, f in active:
        k = int(round(f * n_patients))
        if k == 0 and n_patients > len(active):
            k = 1
        k = min(k, max(n_patients - start - 1, 0))
        out[order[start : start + k]] = names.get(s, s)
        start += k
    return out


def labels(plan: pd.DataFrame) -> dict[str, np.ndarray]:
    """Every 0/1 label a format may need (int8 arrays), from the cohort's label and severity columns.

    Derived ones: ``opacity`` (a consolidation-like opacity was drawn: consolidation or pneumonia),
    ``lung_lesion`` = ``nodule_mass`` = nodule or mass, ``enlarged_cardiomediastinum`` = cardiomegaly,
    ``lung_opacity`` (CheXpert / MIMIC sense) = opacity, edema or atelectasis,
    ``lung_opacity_vindr`` = opacity or edema.
    """
    out = {f: plan[f"label_{f}"].to_numpy().astype(bool) for f in FINDINGS}
    opacity = (plan["cons_r"].to_numpy() >= POSITIVE) | (plan["cons_l"].to_numpy() >= POSITIVE)
    out["opacity"] = opacity
    out["lung_lesion"] = out["nodule"] | out["mass"]
    out["nodule_mass"] = out["lung_lesion"]
    out["enlarged_cardiomediastinum"] = out["cardiomegaly"]
    out["lung_opacity"] = opacity | out["edema"] | out["atelectasis"]
    out["lung_opacity_vindr"] = opacity | out["edema"]
    return {k: v.astype(np.int8) for k, v in out.items()}


def with_no_finding(lab: dict[str, np.ndarray], names: tuple[str, ...]) -> np.ndarray:
    """no_finding = none of ``names`` positive."""
    any_pos = np.zeros(len(next(iter(lab.values()))), dtype=bool)
    for n in names:
        any_pos |= lab[n].astype(bool)
    return (~any_pos).astype(np.int8)


def truth_frame(
    plan: pd.DataFrame, dataset: str, findings: tuple[str, ...], values: dict[str, np.ndarray]
) -> pd.DataFrame:
    """Contract-2 frame: meta columns from ``plan`` (image_id, patient_id, study_id, path, view,
    split, sex, age), ``dataset``, and float32 finding columns from ``values``.

    ``view``, ``sex`` and ``age`` are what the files tell (what an adapter can recover); the extra
    column ``drawn_view`` is what was rendered (PA, AP, AP_SUPINE or LATERAL).
    """
    df = pd.DataFrame(
        {
            "image_id": plan["image_id"].astype(str).to_numpy(),
            "patient_id": plan["patient_id"].astype(str).to_numpy(),
            "study_id": plan["study_id"].to_numpy(dtype=object),
            "path": plan["path"].astype(str).to_numpy(),
            "view": plan["truth_view"].astype(str).to_numpy(),
            "split": plan["split"].astype(str).to_numpy(),
            "dataset": dataset,
            "sex": plan["truth_sex"].to_numpy(dtype=object),
            "age": plan["truth_age"].to_numpy(dtype=np.float64),
            "drawn_view": plan["view"].astype(str).to_numpy(),
        }
    )
    for f in findings:
        df[f] = values[f].astype(np.float32)
    return df


def mask_box(mask: np.ndarray, threshold: float = 0.3) -> Box | None:
    """(x_min, y_min, x_max, y_max) in pixels of ``mask > threshold``, or None when empty."""
    rows = np.flatnonzero(mask.max(axis=1) > threshold)
    if not len(rows):
        return None
    cols = np.flatnonzero(mask.max(axis=0) > threshold)
    return float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)


MASK_THRESHOLD = 0.3  # soft membership above which a pixel belongs to a finding (as render's boxes)


# Which render masks show which truth finding (the truth regions: their union where the label is 1).
REGION_MASKS: dict[str, tuple[str, ...]] = {
    "cardiomegaly": ("heart",),
    "enlarged_cardiomediastinum": ("heart",),
    "pleural_effusion": ("effusion",),
    "pneumothorax": ("pneumothorax",),
    "nodule": ("nodule",),
    "mass": ("mass",),
    "nodule_mass": ("nodule", "mass"),
    "lung_lesion": ("nodule", "mass"),
    "consolidation": ("consolidation",),
    "pneumonia": ("consolidation",),
    "atelectasis": ("atelectasis",),
    "edema": ("edema",),
    "lung_opacity": ("consolidation", "edema", "atelectasis"),
}


def scale_box(box: Box, factor: float) -> Box:
    """A pixel box in another pixel grid (the 1024-px space of NIH, RSNA and SIIM files)."""
    return box[0] * factor, box[1] * factor, box[2] * factor, box[3] * factor


# Which mask shows which finding (for boxes).
BOX_MASKS: dict[str, str] = {
    "cardiomegaly": "heart",
    "pleural_effusion": "effusion",
    "pneumothorax": "pneumothorax",
    "nodule": "nodule",
    "mass": "mass",
    "consolidation": "consolidation",
    "pneumonia": "consolidation",
    "atelectasis": "atelectasis",
    "edema": "edema",
}


def csv_text(header: list[str], rows: list[list[str]], trailing_comma: bool = False) -> str:
    """CSV text with '\\n' line ends; quotes fields that contain a comma, quote or newline."""

    def cell(x: str) -> str:
        x = "" if x is None else str(x)
        if any(c in x for c in ',"\n'):
            return '"' + x.replace('"', '""') + '"'
        return x

    tail = "," if trailing_comma else ""
    lines = [",".join(cell(h) for h in header) + tail]
    lines.extend(",".join(cell(v) for v in r) + tail for r in rows)
    return "\n".join(lines) + "\n"


def gzip_bytes(data: bytes) -> bytes:
    """gzip without a timestamp or file name (byte-identical output for identical input)."""
    import gzip
    import io

    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def fmt_label(v: int | float | None) -> str:
    """1.0 / 0.0 / -1.0 / '' (blank) as the CheXpert-style CSVs write them."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    return f"{float(v):.1f}"

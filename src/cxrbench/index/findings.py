"""The canonical finding vocabulary (Contract 2), derived findings, label presets and the one
parser of label specs (``--labels``, a study's ``labels:``).

Finding columns in every index use the snake_case names below; the tables that map each source's
terms onto them live in :mod:`cxrbench.index.sources.terms`. A label spec is a preset name
(:data:`PRESETS`, or ``all``) or a comma list of finding names and presets
(``study-mimic,edema``); :func:`expand_label_spec` expands it, :func:`resolve_labels` checks it
against what a source provides.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import numpy as np

from cxrbench.common.errors import InputError, spell
from cxrbench.common.validation import closest

# Fixed by Contract 2 (ARCHITECTURE.md). Order is the display order.
CONTRACT_FINDINGS: tuple[str, ...] = (
    "no_finding",
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "edema",
    "pleural_effusion",
    "emphysema",
    "fibrosis",
    "hernia",
    "infiltration",
    "mass",
    "nodule",
    "nodule_mass",
    "pleural_thickening",
    "pneumonia",
    "pneumothorax",
    "enlarged_cardiomediastinum",
    "lung_opacity",
    "lung_lesion",
    "pleural_other",
    "fracture",
    "support_devices",
)


# cxrbench's own additions (documented in docs/datasets.md).
EXTRA_FINDINGS: tuple[str, ...] = (
    "aortic_enlargement",
    "aortic_elongation",
    "calcification",
    "congestion",
    "copd",
    "ild",
    "kyphosis",
    "scoliosis",
    "tuberculosis",
    "other_lesion",
    "other_disease",
    "lung_tumor",
    "pleural_effusion_left",
    "pleural_effusion_right",
    # added with the dataset sources (VinDr-CXR / PadChest terms)
    "rib_fracture",
    "clavicle_fracture",
    "enlarged_pulmonary_artery",
    "lung_cavity",
    "lung_cyst",
    "mediastinal_shift",
    # added with VinDr-PCXR (pediatric diagnoses)
    "bronchitis",
    "bronchopneumonia",
    "bronchiolitis",
    "pleuropneumonia",
    "situs_inversus",
    "diaphragmatic_hernia",
    "congenital_emphysema",
    "cpam",
    "hyaline_membrane_disease",
    "mediastinal_tumor",
)


ALL_FINDINGS: tuple[str, ...] = CONTRACT_FINDINGS + EXTRA_FINDINGS


# Left/right variants of any canonical finding (e.g. UKA-CXR's graded sides) are canonical too.
SIDES: tuple[str, ...] = ("left", "right")


# Findings that do not make an image abnormal: a positive support device does not contradict
# ``no_finding`` (the CheXpert labeler's rule, also MIMIC-CXR's radiologist test set).
NOT_ABNORMAL: tuple[str, ...] = ("no_finding", "support_devices")


# A finding missing from a source is derived as the OR of its parts when the source has them all.
DERIVED: dict[str, tuple[str, ...]] = {
    "nodule_mass": ("nodule", "mass"),
}


# The study's label sets (Tayebi Arasteh et al. 2024, see docs/datasets.md for the reasoning).
_MIMIC_SHARED = (
    "no_finding",
    "atelectasis",
    "cardiomegaly",
    "consolidation",
    "pleural_effusion",
    "pneumonia",
    "pneumothorax",
)


PRESETS: dict[str, tuple[str, ...]] = {
    "study-vindr": (
        "no_finding",
        "atelectasis",
        "cardiomegaly",
        "consolidation",
        "pleural_effusion",
        "fibrosis",
        "nodule_mass",
        "pleural_thickening",
        "pneumonia",
        "pneumothorax",
        "lung_opacity",
    ),
    "study-cxr14": (
        "no_finding",
        "atelectasis",
        "cardiomegaly",
        "consolidation",
        "edema",
        "pleural_effusion",
        "emphysema",
        "fibrosis",
        "hernia",
        "mass",
        "nodule",
        "pleural_thickening",
        "pneumonia",
        "pneumothorax",
    ),
    "study-chexpert": (
        "no_finding",
        "atelectasis",
        "cardiomegaly",
        "consolidation",
        "pleural_effusion",
        "pneumonia",
        "pneumothorax",
        "lung_opacity",
        "lung_lesion",
        "fracture",
    ),
    "study-padchest": (
        "no_finding",
        "atelectasis",
        "cardiomegaly",
        "consolidation",
        "pleural_effusion",
        "emphysema",
        "hernia",
        "infiltration",
        "nodule_mass",
        "pleural_thickening",
        "pneumonia",
        "pneumothorax",
        "aortic_elongation",
        "congestion",
        "copd",
        "kyphosis",
        "scoliosis",
    ),
    # The pediatric cohort (VinDr-PCXR): its six diagnoses with 392 to 5,143 training positives; the
    # nine rarer ones (2 to 19) are left out. cxrbench's choice (docs/datasets.md).
    "study-vindr-pcxr": (
        "no_finding",
        "bronchitis",
        "bronchopneumonia",
        "bronchiolitis",
        "pneumonia",
        "other_disease",
    ),
    # The external sets with localization ground truth, scored on what they label.
    "rsna": ("no_finding", "lung_opacity", "pneumonia"),
    "siim": ("pneumothorax",),
    "nih-google": ("fracture", "pneumothorax", "lung_opacity", "nodule_mass"),
    "study-mimic": _MIMIC_SHARED,
    "study-vindr-mimic": _MIMIC_SHARED + ("lung_opacity",),
    "study-cxr14-mimic": _MIMIC_SHARED,
    "study-padchest-mimic": _MIMIC_SHARED,
}


PRESET_NAMES: tuple[str, ...] = (*PRESETS, "all")


_SNAKE = re.compile(r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$")


def is_canonical(name: str) -> bool:
    """True for a Contract-2 / cxrbench finding name or its ``_left``/``_right`` variant."""
    if name in ALL_FINDINGS:
        return True
    base, _, side = name.rpartition("_")
    return side in SIDES and base in ALL_FINDINGS


def check_finding_name(name: str, where: str, extra: Iterable[str] = ()) -> str:
    """Return ``name`` if it is canonical (or declared in ``extra``), else raise one InputError."""
    if is_canonical(name) or name in set(extra):
        return name
    hint = closest(name, ALL_FINDINGS)
    fix = f"did you mean {hint!r}? " if hint else ""
    if not _SNAKE.match(name):
        fix += "finding names are snake_case; "
    raise InputError(
        f"finding {name!r} is not in the canonical vocabulary",
        where=where,
        fix=fix + "use a name from docs/datasets.md, or declare it under extra_findings",
    )


def sort_findings(names: Iterable[str]) -> list[str]:
    """Canonical display order (ALL_FINDINGS order, side variants after their base, others last)."""
    order = {n: i for i, n in enumerate(ALL_FINDINGS)}

    def key(n: str) -> tuple[int, int, str]:
        base, _, side = n.rpartition("_")
        if side in SIDES and base in order:  # x_left, x_right right after x
            return (order[base], 1 + SIDES.index(side), n)
        if n in order:
            return (order[n], 0, n)
        return (len(order), 0, n)

    return sorted(set(names), key=key)


def derivable(available: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Findings that can be derived (OR of parts) from ``available`` but are not in it."""
    have = set(available)
    out = {name: parts for name, parts in DERIVED.items() if name not in have and set(parts) <= have}
    for name in have:  # x_left + x_right -> x
        base, _, side = name.rpartition("_")
        if side == "left" and base not in have and f"{base}_right" in have:
            out[base] = (f"{base}_left", f"{base}_right")
    return out


def expand_label_spec(spec: str) -> list[str] | None:
    """The findings a label spec names, presets expanded, in order without repeats; None for ``all``.

    >>> expand_label_spec("study-mimic,edema")[-2:]
    ['pneumothorax', 'edema']
    """
    spec = spec.strip()
    if spec == "all":
        return None
    items = [s.strip() for s in spec.split(",") if s.strip()]
    return list(dict.fromkeys(f for i in items for f in (PRESETS.get(i) or (i,))))


def resolve_labels(spec: str, available: Sequence[str], source: str = "source") -> list[str]:
    """The finding columns an index gets for ``--labels spec`` given the source's ``available`` ones.

    ``spec`` is a preset name (``PRESET_NAMES``; ``all`` = every available and derivable finding)
    or a comma-separated list of finding names and presets (``study-mimic,edema``), kept in order
    without repeats (:func:`expand_label_spec`). A finding the source cannot provide is an error.
    """
    spec = spec.strip()
    extra = derivable(available)
    if spec == "all":
        return sort_findings(list(available) + list(extra))
    items = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [i for i in items if i not in PRESETS and not is_canonical(i) and i not in available]
    if not items or (len(items) == 1 and unknown):
        hint = closest(spec, PRESET_NAMES)
        raise InputError(
            f"{spell('--labels')} got {spec!r}, which is neither a preset nor a finding list",
            fix=(f"did you mean {hint!r}? " if hint else "")
            + f"presets: {', '.join(PRESET_NAMES)}; or list findings (and presets) separated by commas",
        )
    wanted = expand_label_spec(spec) or []
    have = set(available) | set(extra)
    missing = [w for w in wanted if w not in have]
    if missing:
        raise InputError(
            f"{source} does not provide finding(s) {', '.join(missing)} asked for by "
            f"{spell(f'--labels {spec}', f'labels={spec!r}')}",
            fix=f"available: {', '.join(sort_findings(have))}",
        )
    return wanted


def kleene_or(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Three-valued OR of float arrays (1, 0, NaN = unknown): 1 if any is 1, 0 if all are 0, else NaN."""
    stack = np.vstack([np.asarray(c, dtype=np.float32) for c in columns])
    out = np.full(stack.shape[1], np.nan, dtype=np.float32)
    out[(stack == 0).all(axis=0)] = 0.0
    out[(stack == 1).any(axis=0)] = 1.0
    return out


"""Canonical finding vocabulary (Contract 2), per-source term tables, derived findings, presets.

Finding columns in every index use the snake_case names below. Every mapping from a source's
term (a CSV column, a class name, a PadChest label) to a canonical name is an explicit table
entry here, never a substring match: ``pericardial effusion`` is not ``pleural_effusion``,
``pseudonodule`` is not ``nodule``, ``subcutaneous emphysema`` is not ``emphysema``.
A term may feed several findings (``hydropneumothorax`` is pneumothorax and pleural effusion);
several terms feeding one finding are combined with a logical OR. PadChest terms that feed no
finding are listed too (mapped to ``()``), so every term of the release is accounted for and a
term missing from the table is an *unknown* term, counted and reported by the indexer.

The user-facing table of every finding and its source terms (docs/datasets.md) is generated from
these tables: ``python -m cxrbench.findings docs/datasets.md`` rewrites it in place.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cxrbench.errors import InputError
from cxrbench.validation import closest

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
)

ALL_FINDINGS: tuple[str, ...] = CONTRACT_FINDINGS + EXTRA_FINDINGS

# Left/right variants of any canonical finding (e.g. UKA-CXR's graded sides) are canonical too.
SIDES: tuple[str, ...] = ("left", "right")

# Findings that do not make an image abnormal: a positive support device does not contradict
# ``no_finding`` (the CheXpert labeler's rule, also MIMIC-CXR's radiologist test set).
NOT_ABNORMAL: tuple[str, ...] = ("no_finding", "support_devices")

# ------------------------------------------------------------------------------------------------
# Per-source term tables: source term -> canonical finding(s)
# ------------------------------------------------------------------------------------------------

# NIH ChestX-ray14 `Finding Labels` tokens (exact spelling of Data_Entry_2017(_v2020).csv).
NIH_TERMS: dict[str, tuple[str, ...]] = {
    "No Finding": ("no_finding",),
    "Atelectasis": ("atelectasis",),
    "Cardiomegaly": ("cardiomegaly",),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Effusion": ("pleural_effusion",),
    "Emphysema": ("emphysema",),
    "Fibrosis": ("fibrosis",),
    "Hernia": ("hernia",),
    "Infiltration": ("infiltration",),
    "Mass": ("mass",),
    "Nodule": ("nodule",),
    "Pleural_Thickening": ("pleural_thickening",),
    "Pneumonia": ("pneumonia",),
    "Pneumothorax": ("pneumothorax",),
}

# CheXpert train.csv / valid.csv / CheXlocalize test_labels.csv observation columns.
CHEXPERT_TERMS: dict[str, tuple[str, ...]] = {
    "No Finding": ("no_finding",),
    "Enlarged Cardiomediastinum": ("enlarged_cardiomediastinum",),
    "Cardiomegaly": ("cardiomegaly",),
    "Lung Opacity": ("lung_opacity",),
    "Lung Lesion": ("lung_lesion",),
    "Edema": ("edema",),
    "Consolidation": ("consolidation",),
    "Pneumonia": ("pneumonia",),
    "Atelectasis": ("atelectasis",),
    "Pneumothorax": ("pneumothorax",),
    "Pleural Effusion": ("pleural_effusion",),
    "Pleural Other": ("pleural_other",),
    "Fracture": ("fracture",),
    "Support Devices": ("support_devices",),
}

# MIMIC-CXR-JPG chexpert/negbio columns; the 2.1.0 radiologist test set says `Airspace Opacity`.
MIMIC_TERMS: dict[str, tuple[str, ...]] = {**CHEXPERT_TERMS, "Airspace Opacity": ("lung_opacity",)}

# VinDr-CXR (PhysioNet image_labels_*.csv columns) and VinBigData (Kaggle train.csv class_name).
VINDR_TERMS: dict[str, tuple[str, ...]] = {
    "Aortic enlargement": ("aortic_enlargement",),
    "Atelectasis": ("atelectasis",),
    "Calcification": ("calcification",),
    "Cardiomegaly": ("cardiomegaly",),
    "Clavicle fracture": ("clavicle_fracture", "fracture"),
    "Consolidation": ("consolidation",),
    "Edema": ("edema",),
    "Emphysema": ("emphysema",),
    "Enlarged PA": ("enlarged_pulmonary_artery",),
    "ILD": ("ild",),
    "Infiltration": ("infiltration",),
    "Lung Opacity": ("lung_opacity",),
    "Lung cavity": ("lung_cavity",),
    "Lung cyst": ("lung_cyst",),
    "Mediastinal shift": ("mediastinal_shift",),
    "Nodule/Mass": ("nodule_mass",),
    "Pleural effusion": ("pleural_effusion",),
    "Pleural thickening": ("pleural_thickening",),
    "Pneumothorax": ("pneumothorax",),
    "Pulmonary fibrosis": ("fibrosis",),
    "Rib fracture": ("rib_fracture", "fracture"),
    "Other lesion": ("other_lesion",),
    "COPD": ("copd",),
    "Lung tumor": ("lung_tumor",),
    "Pneumonia": ("pneumonia",),
    "Tuberculosis": ("tuberculosis",),
    "Other diseases": ("other_disease",),
    "Other disease": ("other_disease",),  # test-file spelling (singular)
    "No finding": ("no_finding",),
}

# PadChest `Labels` terms (stripped). Rule: a term feeds a finding when it *is* that finding or a
# named subtype of it (laminar atelectasis -> atelectasis; loculated pleural effusion -> pleural
# effusion); signs, diagnoses, anatomy and ambiguous parents feed nothing (``()``).
_DEVICES = ("support_devices",)
PADCHEST_TERMS: dict[str, tuple[str, ...]] = {
    # special tokens
    "normal": ("no_finding",),
    "exclude": (),  # image excluded by the annotators: the row is dropped (counted)
    "suboptimal study": (),  # image-quality remark
    "unchanged": (),  # comparison with a prior study, no finding of its own
    # cardiac / mediastinum / aorta
    "cardiomegaly": ("cardiomegaly",),
    "aortic elongation": ("aortic_elongation",),
    "supra aortic elongation": ("aortic_elongation",),
    "descendent aortic elongation": ("aortic_elongation",),
    "ascendent aortic elongation": ("aortic_elongation",),
    "aortic button enlargement": ("aortic_enlargement",),
    "aortic aneurysm": ("aortic_enlargement",),
    "mediastinal enlargement": ("enlarged_cardiomediastinum",),
    "superior mediastinal enlargement": ("enlarged_cardiomediastinum",),
    "pulmonary artery enlargement": ("enlarged_pulmonary_artery",),
    "mediastinal shift": ("mediastinal_shift",),
    "heart insufficiency": (),  # clinical diagnosis, not an image finding
    "aortic atheromatosis": (),
    "right sided aortic arch": (),
    "dextrocardia": (),
    "pericardial effusion": (),  # not pleural
    "mediastinal mass": (),  # not a lung mass
    "mediastinic lipomatosis": (),
    "lipomatosis": (),
    "pneumomediastinum": (),
    "tracheal shift": (),
    "azygoesophageal recess shift": (),
    "goiter": (),
    "esophagic dilatation": (),
    # pleura
    "pleural effusion": ("pleural_effusion",),
    "loculated pleural effusion": ("pleural_effusion",),
    "loculated fissural effusion": ("pleural_effusion",),
    "empyema": ("pleural_effusion",),
    "hydropneumothorax": ("pneumothorax", "pleural_effusion"),
    "pneumothorax": ("pneumothorax",),
    "pleural thickening": ("pleural_thickening",),
    "apical pleural thickening": ("pleural_thickening",),
    "calcified pleural thickening": ("pleural_thickening", "calcification"),
    "pleural plaques": ("pleural_thickening",),  # a plaque is focal pleural thickening (Fleischner)
    "calcified pleural plaques": ("pleural_thickening", "calcification"),
    "costophrenic angle blunting": (),  # effusion or thickening: ambiguous
    "fissure thickening": (),
    "minor fissure thickening": (),
    "major fissure thickening": (),
    "pleural mass": (),  # not a lung mass
    "asbestosis signs": (),
    # lung parenchyma
    "pneumonia": ("pneumonia",),
    "atypical pneumonia": ("pneumonia",),
    "consolidation": ("consolidation",),
    "air bronchogram": ("consolidation",),
    "infiltrates": ("infiltration",),
    "interstitial pattern": ("infiltration",),
    "alveolar pattern": ("infiltration",),
    "reticular interstitial pattern": ("infiltration",),
    "reticulonodular interstitial pattern": ("infiltration",),
    "ground glass pattern": ("infiltration",),
    "miliary opacities": (),
    "atelectasis": ("atelectasis",),
    "laminar atelectasis": ("atelectasis",),
    "lobar atelectasis": ("atelectasis",),
    "segmental atelectasis": ("atelectasis",),
    "total atelectasis": ("atelectasis",),
    "round atelectasis": ("atelectasis",),
    "atelectasis basal": ("atelectasis",),
    "nodule": ("nodule",),
    "multiple nodules": ("nodule",),
    "pseudonodule": (),  # not a nodule (nipple shadow, vessel end-on, ...)
    "pulmonary mass": ("mass",),
    "mass": ("mass",),
    "lung metastasis": ("lung_tumor",),
    "lepidic adenocarcinoma": ("lung_tumor",),
    "emphysema": ("emphysema",),
    "COPD signs": ("copd",),
    "pulmonary fibrosis": ("fibrosis",),
    "pulmonary edema": ("edema",),
    "hilar congestion": ("congestion",),
    "vascular redistribution": ("congestion",),
    "central vascular redistribution": ("congestion",),
    "pulmonary venous hypertension": ("congestion",),
    "tuberculosis": ("tuberculosis",),
    "cavitation": ("lung_cavity",),
    "calcified granuloma": ("calcification",),
    "calcified densities": ("calcification",),
    "calcified adenopathy": ("calcification",),
    "calcified mediastinal adenopathy": ("calcification",),
    "heart valve calcified": ("calcification",),
    "tuberculosis sequelae": (),
    "granuloma": (),
    "chronic changes": (),
    "air trapping": (),
    "hyperinflated lung": (),
    "flattened diaphragm": (),
    "bullas": (),
    "bronchiectasis": (),
    "fibrotic band": (),
    "volume loss": (),
    "increased density": (),
    "bronchovascular markings": (),
    "hypoexpansion": (),
    "hypoexpansion basal": (),
    "kerley lines": (),
    "vascular hilar enlargement": (),
    "hilar enlargement": (),
    "adenopathy": (),
    "end on vessel": (),
    "lung vascular paucity": (),
    "pulmonary hypertension": (),
    "pulmonary artery hypertension": (),
    "post radiotherapy changes": (),
    "lymphangitis carcinomatosa": (),
    "air fluid level": (),
    "abscess": (),
    "cyst": (),  # location unspecified
    "azygos lobe": (),
    "respiratory distress": (),
    # diaphragm / abdomen
    "hiatal hernia": ("hernia",),
    "hemidiaphragm elevation": (),
    "diaphragmatic eventration": (),
    "pneumoperitoneo": (),
    "Chilaiditi sign": (),
    # bones and soft tissue
    "scoliosis": ("scoliosis",),
    "kyphosis": ("kyphosis",),
    "fracture": ("fracture",),
    "rib fracture": ("rib_fracture", "fracture"),
    "callus rib fracture": ("rib_fracture", "fracture"),
    "clavicle fracture": ("clavicle_fracture", "fracture"),
    "humeral fracture": ("fracture",),
    "vertebral fracture": ("fracture",),
    "vertebral compression": (),
    "vertebral anterior compression": (),
    "vertebral degenerative changes": (),
    "non axial articular degenerative changes": (),
    "axial hyperostosis": (),
    "osteopenia": (),
    "osteoporosis": (),
    "thoracic cage deformation": (),
    "pectum excavatum": (),
    "pectum carinatum": (),
    "cervical rib": (),
    "costochondral junction hypertrophy": (),
    "sternoclavicular junction hypertrophy": (),
    "subacromial space narrowing": (),
    "sclerotic bone lesion": (),
    "lytic bone lesion": (),
    "blastic bone lesion": (),
    "bone metastasis": (),
    "subcutaneous emphysema": (),  # soft tissue, not pulmonary emphysema
    "soft tissue mass": (),
    "breast mass": (),
    "calcified fibroadenoma": (),  # breast
    "nipple shadow": (),
    "gynecomastia": (),
    "mastectomy": (),
    "obesity": (),
    "dai": (),
    # devices (support_devices: tubes, lines, drains, stents, pacemakers, valves)
    "NSG tube": _DEVICES,
    "endotracheal tube": _DEVICES,
    "tracheostomy tube": _DEVICES,
    "chest drain tube": _DEVICES,
    "ventriculoperitoneal drain tube": _DEVICES,
    "gastrostomy tube": _DEVICES,
    "nephrostomy tube": _DEVICES,
    "double J stent": _DEVICES,
    "catheter": _DEVICES,
    "central venous catheter": _DEVICES,
    "central venous catheter via jugular vein": _DEVICES,
    "central venous catheter via subclavian vein": _DEVICES,
    "central venous catheter via umbilical vein": _DEVICES,
    "reservoir central venous catheter": _DEVICES,
    "pacemaker": _DEVICES,
    "dual chamber device": _DEVICES,
    "single chamber device": _DEVICES,
    "electrical device": _DEVICES,
    "artificial heart valve": _DEVICES,
    "artificial mitral heart valve": _DEVICES,
    "artificial aortic heart valve": _DEVICES,
    "aortic endoprosthesis": _DEVICES,
    # surgery and hardware: not support devices in cxrbench's (narrower than CheXpert's) sense
    "endoprosthesis": (),
    "prosthesis": (),
    "humeral prosthesis": (),
    "mammary prosthesis": (),
    "osteosynthesis material": (),
    "bone cement": (),
    "suture material": (),
    "sternotomy": (),
    "metal": (),
    "abnormal foreign body": (),
    "external foreign body": (),
    "surgery": (),
    "surgery breast": (),
    "surgery neck": (),
    "surgery lung": (),
    "surgery heart": (),
    "surgery humeral": (),
}

# Source name -> its term table (the csv source maps columns through its YAML mapping instead).
SOURCE_TERMS: dict[str, Mapping[str, tuple[str, ...]]] = {
    "nih": NIH_TERMS,
    "chexpert": CHEXPERT_TERMS,
    "mimic": MIMIC_TERMS,
    "padchest": PADCHEST_TERMS,
    "vindr": VINDR_TERMS,
}

# ------------------------------------------------------------------------------------------------
# Derived findings and label presets
# ------------------------------------------------------------------------------------------------

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


def resolve_labels(spec: str, available: Sequence[str], source: str = "source") -> list[str]:
    """The finding columns an index gets for ``--labels spec`` given the source's ``available`` ones.

    ``spec`` is a preset name (``PRESET_NAMES``; ``all`` = every available and derivable finding)
    or a comma-separated list of finding names and presets (``study-mimic,edema``), kept in order
    without repeats. A finding the source cannot provide is an error.
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
            f"--labels got {spec!r}, which is neither a preset nor a finding list",
            fix=(f"did you mean {hint!r}? " if hint else "")
            + f"presets: {', '.join(PRESET_NAMES)}; or list findings (and presets) separated by commas",
        )
    wanted = list(dict.fromkeys(f for i in items for f in (PRESETS.get(i) or (i,))))  # presets expand
    have = set(available) | set(extra)
    missing = [w for w in wanted if w not in have]
    if missing:
        raise InputError(
            f"{source} does not provide finding(s) {', '.join(missing)} asked for by --labels {spec}",
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


# ------------------------------------------------------------------------------------------------
# Documentation table (kept in sync with docs/datasets.md by tests/test_findings.py)
# ------------------------------------------------------------------------------------------------

DOC_START = "<!-- findings-table:start (generated by `python -m cxrbench.findings docs/datasets.md`) -->"
DOC_END = "<!-- findings-table:end -->"
_SOURCE_LABELS = {
    "nih": "NIH",
    "chexpert": "CheXpert",
    "mimic": "MIMIC",
    "padchest": "PadChest",
    "vindr": "VinDr",
}


def _feeders(finding: str) -> dict[str, list[str]]:
    return {src: [t for t, fs in table.items() if finding in fs] for src, table in SOURCE_TERMS.items()}


def render_findings_table() -> str:
    """Markdown: every canonical finding, the source terms feeding it, presets using it; then the
    PadChest terms that feed no finding."""
    lines = [
        "| finding | " + " | ".join(_SOURCE_LABELS.values()) + " | derived | presets |",
        "| --- |" + " --- |" * (len(_SOURCE_LABELS) + 2),
    ]
    for f in ALL_FINDINGS:
        feeders = _feeders(f)
        cells = ["; ".join(f"`{t}`" for t in feeders[src]) or "–" for src in _SOURCE_LABELS]
        derived = f"OR({', '.join(DERIVED[f])})" if f in DERIVED else "–"
        presets = ", ".join(p.removeprefix("study-") for p, fs in PRESETS.items() if f in fs) or "–"
        lines.append(f"| `{f}` | " + " | ".join(cells) + f" | {derived} | {presets} |")
    unmapped = sorted(t for t, fs in PADCHEST_TERMS.items() if not fs)
    lines += [
        "",
        f"PadChest terms that feed no finding ({len(unmapped)} of {len(PADCHEST_TERMS)}; "
        "`exclude` also drops the row): " + ", ".join(f"`{t}`" for t in unmapped) + ".",
    ]
    return "\n".join(lines)


def sync_doc(path: str | Path, check: bool = False) -> bool:
    """Rewrite the generated block of ``path``; with ``check`` only report whether it is current."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if DOC_START not in text or DOC_END not in text:
        raise InputError(
            "generated-table markers not found",
            where=str(path),
            fix=f"add the lines {DOC_START!r} and {DOC_END!r}",
        )
    head, rest = text.split(DOC_START, 1)
    _, tail = rest.split(DOC_END, 1)
    new = f"{head}{DOC_START}\n{render_findings_table()}\n{DOC_END}{tail}"
    if check:
        return new == text
    if new != text:
        path.write_text(new, encoding="utf-8")
    return True


if __name__ == "__main__":  # python -m cxrbench.findings docs/datasets.md
    sync_doc(sys.argv[1] if len(sys.argv) > 1 else "docs/datasets.md")

"""The per-source term tables: every source term -> the canonical findings it feeds.

Every mapping from a source's term (a CSV column, a class name, a PadChest label) to a canonical
name is an explicit table entry here, never a substring match: ``pericardial effusion`` is not
``pleural_effusion``, ``pseudonodule`` is not ``nodule``, ``subcutaneous emphysema`` is not
``emphysema``. A term may feed several findings (``hydropneumothorax`` is pneumothorax and pleural
effusion); several terms feeding one finding are combined with a logical OR. PadChest terms that
feed no finding are listed too (mapped to ``()``), so every term of the release is accounted for
and a term missing from the table is an *unknown* term, counted and reported by the indexer.

The user-facing table of every finding and its source terms (docs/datasets.md) is generated from
these tables: ``python -m cxrbench.index.sources.terms docs/datasets.md`` rewrites it in place.
"""


from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from cxrbench.common.errors import InputError
from cxrbench.index.findings import ALL_FINDINGS, DERIVED, PRESETS

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


# NIH BBox_List_2017.csv `Finding Label` (8 of the 14; `Infiltrate`, not `Infiltration`).
NIH_BOX_TERMS: dict[str, tuple[str, ...]] = {**NIH_TERMS, "Infiltrate": ("infiltration",)}


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


# VinDr-PCXR (PediCXR): the 15 disease columns of image_labels_*.csv and the 36 local labels of
# annotations_*.csv (boxes), spelled as released (`Brocho-pneumonia`, `Diagphramatic hernia`,
# `Diffuse aveolar opacity`, `Bronchectasis`, `Paraveterbral mass`), with the paper's spellings too.
PCXR_TERMS: dict[str, tuple[str, ...]] = {
    "No finding": ("no_finding",), "Bronchitis": ("bronchitis",),
    "Brocho-pneumonia": ("bronchopneumonia",), "Broncho-pneumonia": ("bronchopneumonia",),
    "Bronchiolitis": ("bronchiolitis",), "Other disease": ("other_disease",),
    "Other diseases": ("other_disease",), "Situs inversus": ("situs_inversus",),
    "Pneumonia": ("pneumonia",), "Pleuro-pneumonia": ("pleuropneumonia",),
    "Diagphramatic hernia": ("diaphragmatic_hernia",), "Diaphragmatic hernia": ("diaphragmatic_hernia",),
    "Tuberculosis": ("tuberculosis",), "Congenital emphysema": ("congenital_emphysema",), "CPAM": ("cpam",),
    "Hyaline membrane disease": ("hyaline_membrane_disease",), "Mediastinal tumor": ("mediastinal_tumor",),
    "Lung tumor": ("lung_tumor",),
    # local labels (boxes)
    "Cardiomegaly": ("cardiomegaly",), "Consolidation": ("consolidation",),
    "Pleural effusion": ("pleural_effusion",), "Atelectasis": ("atelectasis",),
    "Pneumothorax": ("pneumothorax",), "Edema": ("edema",), "Infiltration": ("infiltration",),
    "Emphysema": ("emphysema",), "Pleural thickening": ("pleural_thickening",),
    "Pulmonary fibrosis": ("fibrosis",), "Interstitial lung disease - ILD": ("ild",),
    "Calcification": ("calcification",), "Aortic enlargement": ("aortic_enlargement",),
    "Enlarged PA": ("enlarged_pulmonary_artery",), "Mediastinal shift": ("mediastinal_shift",),
    "Lung cavity": ("lung_cavity",), "Lung cyst": ("lung_cyst",),
    "Clavicle fracture": ("clavicle_fracture", "fracture"), "Other lesion": ("other_lesion",),
    "Other nodule/mass": ("nodule_mass",),
    "Boot-shaped heart": (), "Peribronchovascular interstitial opacity": (),
    "Peribronchovascular interstitial opacity or PIO": (), "Reticulonodular opacity": (),
    "Bronchial thickening": (), "Diffuse aveolar opacity": (), "Diffuse alveolar opacity": (),
    "Other opacity": (), "Anterior mediastinal mass": (), "Dextro cardia": (),
    "Stomach on the right side": (), "Lung hyperinflation": (), "Egg on string sign": (),
    "Chest wall mass": (), "Bronchectasis": (), "Bronchiectasis": (),
    "Expanded edges of the anterior ribs": (), "Paraveterbral mass": (), "Paravertebral mass": (),
    "Intrathoracic digestive structure": (),
}


# RSNA Pneumonia: every box is the challenge's "Lung Opacity" (Target 1).
RSNA_TERMS: dict[str, tuple[str, ...]] = {"Lung Opacity": ("lung_opacity", "pneumonia")}


# SIIM-ACR: every mask is a pneumothorax.
SIIM_TERMS: dict[str, tuple[str, ...]] = {"Pneumothorax": ("pneumothorax",)}


# Google's expert relabels of NIH ChestX-ray14 (Majkowska et al. 2020): the four YES/NO columns.
GOOGLE_TERMS: dict[str, tuple[str, ...]] = {
    "Fracture": ("fracture",), "Pneumothorax": ("pneumothorax",),
    "Airspace opacity": ("lung_opacity",), "Nodule or mass": ("nodule_mass",),
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
    "vindr-pcxr": PCXR_TERMS,
    "rsna": RSNA_TERMS,
    "siim": SIIM_TERMS,
    "nih-google": GOOGLE_TERMS,
}


DOC_START = ("<!-- findings-table:start (generated by "
             "`python -m cxrbench.index.sources.terms docs/datasets.md`) -->")


DOC_END = "<!-- findings-table:end -->"


_SOURCE_LABELS = {
    "nih": "NIH",
    "chexpert": "CheXpert",
    "mimic": "MIMIC",
    "padchest": "PadChest",
    "vindr": "VinDr",
    "vindr-pcxr": "VinDr-PCXR",
    "rsna": "RSNA",
    "siim": "SIIM",
    "nih-google": "NIH (Google)",
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


if __name__ == "__main__":  # python -m cxrbench.index.sources.terms docs/datasets.md
    sync_doc(sys.argv[1] if len(sys.argv) > 1 else "docs/datasets.md")


"""Canonical finding vocabulary (Contract 2).

Finding columns in every index use these snake_case names. The per-source term tables and the
label presets live in this module too (added by the dataset-sources work); every mapping from a
source term to a canonical name is an explicit table entry, never a substring match.
"""

from __future__ import annotations

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

# cxrbench's own additions (documented in docs/findings.md).
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
)

ALL_FINDINGS: tuple[str, ...] = CONTRACT_FINDINGS + EXTRA_FINDINGS

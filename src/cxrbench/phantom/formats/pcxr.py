"""VinDr-PCXR layout (PhysioNet 1.0.0): ``image_labels_{train,test}.csv``,
``annotations_{train,test}.csv``, ``train/<id>.dicom``, ``test/<id>.dicom``, all at the root.

The DICOMs are VinDr-CXR's (MONOCHROME1/2, 12 or 14 bits, rescale and window variants). One reader
per image (``rad_ID`` R1-R3). Of the 15 diagnosis columns (spelled as released, ``Brocho-pneumonia``
and ``Diagphramatic hernia`` included) the phantom fills ``Pneumonia`` (a drawn pneumonia),
``Brocho-pneumonia`` (a drawn consolidation without pneumonia), ``Other disease`` (any other drawn
finding) and ``No finding``; the rest, such as ``Bronchitis`` and ``Bronchiolitis``, are never drawn
(always 0). Local labels: one box (the drawn mask's, in the written pixels) per drawn ``Cardiomegaly``,
``Pleural effusion``, ``Pneumothorax``, ``Consolidation``, ``Atelectasis``, ``Edema`` and ``Other
nodule/mass``; an image without one gets a ``No finding`` row with empty coordinates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.phantom.cohort import FINDINGS
from cxrbench.phantom.formats.base import Box, csv_text, labels, truth_frame, write_bytes
from cxrbench.phantom.formats.vindr import VinDr

DISEASES = [
    "No finding",
    "Bronchitis",
    "Brocho-pneumonia",
    "Other disease",
    "Bronchiolitis",
    "Situs inversus",
    "Pneumonia",
    "Pleuro-pneumonia",
    "Diagphramatic hernia",
    "Tuberculosis",
    "Congenital emphysema",
    "CPAM",
    "Hyaline membrane disease",
    "Mediastinal tumor",
    "Lung tumor",
]
TRUTH = {
    "no_finding": "No finding",
    "pneumonia": "Pneumonia",
    "bronchopneumonia": "Brocho-pneumonia",
    "other_disease": "Other disease",
    "bronchitis": "Bronchitis",
    "bronchiolitis": "Bronchiolitis",
}
LOCAL = {  # class_name -> (label keys of base.labels(), render masks)
    "Cardiomegaly": (("cardiomegaly",), ("heart",)),
    "Pleural effusion": (("pleural_effusion",), ("effusion",)),
    "Pneumothorax": (("pneumothorax",), ("pneumothorax",)),
    "Consolidation": (("consolidation",), ("consolidation",)),
    "Atelectasis": (("atelectasis",), ("atelectasis",)),
    "Edema": (("edema",), ("edema",)),
    "Other nodule/mass": (("nodule", "mass"), ("nodule", "mass")),
}


class VinDrPCXR(VinDr):
    name = "vindr-pcxr"
    truth_findings = tuple(TRUTH)
    needs_boxes = False
    needs_masks = True
    region_masks = {"pneumonia": ("consolidation",), "bronchopneumonia": ("consolidation",)}
    options = tuple(o for o in VinDr.options if o.name != "kaggle" and o.name != "disagreement")

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = super().plan(cohort, rng)  # ids, train/test split and paths, DICOM variants as VinDr-CXR's
        df["reader"] = [f"R{k}" for k in rng.integers(1, 4, len(df))]
        self.local: dict[str, list[tuple[str, Box]]] = {}
        return df

    def take_masks(self, row: dict[str, Any], masks: dict[str, np.ndarray]) -> None:
        from cxrbench.index.regions import mask_box

        found = []
        for name, (keys, mask_names) in LOCAL.items():
            if not any(row[f"label_{k}"] for k in keys):
                continue
            box = mask_box(np.logical_or.reduce([masks[m] for m in mask_names]))
            if box is not None:
                found.append((name, box))
        self.local[row["image_id"]] = found

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        super().write_image(root, row, img, None)  # the DICOM; boxes come from take_masks

    def _diseases(self, plan: pd.DataFrame) -> dict[str, np.ndarray]:
        lab = labels(plan)
        out = {c: np.zeros(len(plan), dtype=np.int8) for c in DISEASES}
        out["Pneumonia"] = lab["pneumonia"]
        out["Brocho-pneumonia"] = (lab["consolidation"] & ~lab["pneumonia"].astype(bool)).astype(np.int8)
        other = [f for f in FINDINGS if f not in ("pneumonia", "consolidation")]
        out["Other disease"] = np.logical_or.reduce([lab[f].astype(bool) for f in other]).astype(np.int8)
        out["No finding"] = ~np.logical_or.reduce([out[c].astype(bool) for c in DISEASES[1:]])
        out["No finding"] = out["No finding"].astype(np.int8)
        return out

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        table = self._diseases(plan)
        for split in ("train", "test"):
            idx = np.flatnonzero(plan["split"].to_numpy() == split)
            rows = [
                [plan["image_id"].iat[i], plan["reader"].iat[i]] + [str(int(table[c][i])) for c in DISEASES]
                for i in idx
            ]
            write_bytes(
                root, f"image_labels_{split}.csv", csv_text(["image_id", "rad_ID", *DISEASES], rows).encode()
            )
            boxes = []
            for i in idx:
                image_id, reader = plan["image_id"].iat[i], plan["reader"].iat[i]
                found = self.local.get(image_id, [])
                boxes += [[image_id, reader, name, *(f"{v:.1f}" for v in box)] for name, box in found]
                if not found:
                    boxes.append([image_id, reader, "No finding", "", "", "", ""])
            write_bytes(
                root,
                f"annotations_{split}.csv",
                csv_text(
                    ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"], boxes
                ).encode(),
            )

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        table = self._diseases(plan)
        return truth_frame(plan, self.name, self.truth_findings, {f: table[c] for f, c in TRUTH.items()})

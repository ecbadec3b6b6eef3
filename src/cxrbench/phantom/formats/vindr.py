"""VinDr-CXR (PhysioNet 1.0.0) layout: ``train/<id>.dicom``, ``test/<id>.dicom``, ``annotations/``.

``image_labels_train.csv`` is wide, one row per (image, reader) with three readers per image drawn
from R1-R17; readers disagree, but never two against the truth, so the majority vote (2 of 3) always
equals the drawn truth while the union can exceed it. ``image_labels_test.csv`` holds one consensus
row per image (column ``Other disease``, singular; no ``rad_id``). ``annotations_{train,test}.csv``
list boxes (pixel coordinates of the DICOMs) per reader and local finding, and ``No finding`` rows
with empty coordinates. ``kaggle=true`` also writes the VinBigData ``train.csv`` (long format).
DICOMs: CR or DX with file meta, MONOCHROME1 (stored inverted) or MONOCHROME2, BitsStored 12 or 14,
some with RescaleSlope/Intercept and WindowCenter/WindowWidth. One PA image per patient; the image
is the patient (no patient ids are published); sex and age live only in the DICOM headers, so
the truth has none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.phantom.encode import dicom
from cxrbench.phantom.formats.base import (
    BOX_MASKS,
    Box,
    Option,
    PhantomFormat,
    assign_splits,
    csv_text,
    labels,
    truth_frame,
    with_no_finding,
    write_bytes,
)

LABEL_COLUMNS = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Clavicle fracture",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Enlarged PA",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Lung cavity",
    "Lung cyst",
    "Mediastinal shift",
    "Nodule/Mass",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "Rib fracture",
    "Other lesion",
    "COPD",
    "Lung tumor",
    "Pneumonia",
    "Tuberculosis",
    "Other diseases",
    "No finding",
]
GLOBAL_LABELS = ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding")
# VinDr column -> label key of base.labels() (the drawn ones); the others are always 0.
DRAWN: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Lung Opacity": "lung_opacity_vindr",
    "Nodule/Mass": "nodule_mass",
    "Pleural effusion": "pleural_effusion",
    "Pneumothorax": "pneumothorax",
    "Pneumonia": "pneumonia",
}
TRUTH: dict[str, str] = {
    "no_finding": "No finding",
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "pleural_effusion": "Pleural effusion",
    "pneumothorax": "Pneumothorax",
    "pneumonia": "Pneumonia",
    "nodule_mass": "Nodule/Mass",
    "lung_opacity": "Lung Opacity",
}
BOX_OF: dict[str, str] = {
    "Atelectasis": "atelectasis",
    "Cardiomegaly": "cardiomegaly",
    "Consolidation": "consolidation",
    "Edema": "edema",
    "Lung Opacity": "consolidation",
    "Pleural effusion": "pleural_effusion",
    "Pneumothorax": "pneumothorax",
}
KAGGLE_CLASSES = [
    "Aortic enlargement",
    "Atelectasis",
    "Calcification",
    "Cardiomegaly",
    "Consolidation",
    "ILD",
    "Infiltration",
    "Lung Opacity",
    "Nodule/Mass",
    "Other lesion",
    "Pleural effusion",
    "Pleural thickening",
    "Pneumothorax",
    "Pulmonary fibrosis",
    "No finding",
]
READERS = [f"R{i}" for i in range(1, 18)]
READER_WEIGHTS = np.array([1, 1, 1, 1, 1, 1, 1, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1], dtype=float)


class VinDr(PhantomFormat):
    name = "vindr"
    truth_findings = tuple(TRUTH)
    default_views = {"PA": 1.0}
    images_per_patient = 1.0
    one_image_per_patient = True
    split_defaults = {"test": 0.2}
    needs_boxes = True
    region_masks = {"lung_opacity": ("consolidation", "edema")}  # VinDr's Lung Opacity: opacity or edema
    options = (
        Option("kaggle", False, bool, "also write the Kaggle VinBigData train.csv (long format)"),
        Option(
            "disagreement",
            0.2,
            float,
            "chance that one of the three readers misses a positive",
            low=0.0,
            high=1.0,
        ),
        Option("monochrome1_rate", 0.4, float, "share of DICOMs stored as MONOCHROME1", low=0.0, high=1.0),
    )

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = cohort.reset_index(drop=True)
        n = len(df)
        ids = rng.integers(0, 2**32, size=(n, 4), dtype=np.uint64)
        df["image_id"] = ["".join(f"{int(g):08x}" for g in row) for row in ids]
        df["split"] = assign_splits(n, rng, {"test": self.opts["test_fraction"]})[df["patient"].to_numpy()]
        df["path"] = [f"{s}/{i}.dicom" for s, i in zip(df["split"], df["image_id"], strict=True)]
        df["patient_id"] = df["image_id"]
        df["study_id"] = None
        df["truth_view"] = "PA"
        df["truth_sex"] = None
        df["truth_age"] = np.nan
        df["bits"] = np.where(rng.random(n) < 0.5, 12, 14)
        df["mono1"] = rng.random(n) < self.opts["monochrome1_rate"]
        df["modality"] = np.where(rng.random(n) < 0.5, "DX", "CR")
        df["rescale"] = rng.choice(4, n, p=[0.6, 0.15, 0.15, 0.1])  # none, (1, 0), (2, 0), (1, -1024)
        df["windowed"] = rng.random(n) < 0.5
        df["window_frac"] = rng.uniform(0.75, 1.0, n)
        self.boxes: dict[tuple[str, str], tuple[float, float, float, float]] = {}
        return df

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        bits = int(row["bits"])
        top = 2**bits - 1
        value = np.clip(img, 0.0, 1.0) * top  # display value: 1 = bright
        kind = int(row["rescale"])
        slope, intercept = ((1.0, 0.0), (1.0, 0.0), (2.0, 0.0), (1.0, -1024.0))[kind]
        stored = (top - value) if row["mono1"] else value  # MONOCHROME1 stores bright as low values
        stored = np.clip(np.rint(stored / slope), 0, top).astype(np.uint16)
        modality_lo, modality_hi = intercept, slope * top + intercept
        window = None
        if row["windowed"]:
            width = (modality_hi - modality_lo) * float(row["window_frac"])
            window = ((modality_lo + modality_hi) / 2.0, width)
        data = dicom(
            stored,
            bits_stored=bits,
            photometric="MONOCHROME1" if row["mono1"] else "MONOCHROME2",
            modality=row["modality"],
            uid_seed=f"{self.seed}:{row['image_id']}",
            patient_id=row["image_id"][:16],
            sex=row["sex"],
            age_years=float(row["age"]),
            rescale=(slope, intercept) if kind else None,
            window=window,
        )
        write_bytes(root, row["path"], data)
        if boxes is not None:
            for col, finding in BOX_OF.items():
                if boxes[BOX_MASKS[finding]] is not None:
                    self.boxes[(row["image_id"], col)] = boxes[BOX_MASKS[finding]]
            for finding in ("nodule", "mass"):
                if boxes[finding] is not None and (row["image_id"], "Nodule/Mass") not in self.boxes:
                    self.boxes[(row["image_id"], "Nodule/Mass")] = boxes[finding]

    def _truth_table(self, plan: pd.DataFrame) -> dict[str, np.ndarray]:
        lab = labels(plan)
        out = {c: np.zeros(len(plan), dtype=np.int8) for c in LABEL_COLUMNS}
        for col, key in DRAWN.items():
            out[col] = lab[key]
        out["No finding"] = with_no_finding(out, tuple(c for c in LABEL_COLUMNS if c != "No finding"))
        return out

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        table = self._truth_table(plan)
        finding_cols = [c for c in LABEL_COLUMNS if c != "No finding"]
        train_rows, test_rows, ann_train, ann_test, kaggle = [], [], [], [], []
        p_miss, p_extra = float(self.opts["disagreement"]), float(self.opts["disagreement"]) / 8
        for i, r in enumerate(plan.itertuples(index=False)):
            truth = np.array([table[c][i] for c in finding_cols], dtype=np.int8)
            if r.split == "test":
                readers = [f"R{int(k)}" for k in rng.choice(np.arange(11, 18), 5, replace=False)]
                test_rows.append(
                    [r.image_id] + [str(int(v)) for v in truth] + [str(int(table["No finding"][i]))]
                )
                self._annotate(ann_test, None, r.image_id, readers[0], truth, finding_cols, rng)
                continue
            readers = list(rng.choice(READERS, 3, replace=False, p=READER_WEIGHTS / READER_WEIGHTS.sum()))
            votes = np.repeat(truth[None, :], 3, axis=0)
            # At most one reader deviates per finding: majority = truth.
            dev = rng.integers(0, 3, len(finding_cols))
            flip = np.where(
                truth == 1, rng.random(len(finding_cols)) < p_miss, rng.random(len(finding_cols)) < p_extra
            )
            drawn_cols = np.array([c in DRAWN for c in finding_cols])
            flip &= drawn_cols  # readers only disagree about what is on the image
            votes[dev[flip], np.flatnonzero(flip)] ^= 1
            for k, reader in enumerate(readers):
                nf = int(votes[k].sum() == 0)
                train_rows.append([r.image_id, reader] + [str(int(v)) for v in votes[k]] + [str(nf)])
                self._annotate(
                    ann_train,
                    kaggle if self.opts["kaggle"] else None,
                    r.image_id,
                    reader,
                    votes[k],
                    finding_cols,
                    rng,
                )
        header = ["image_id", "rad_id"] + LABEL_COLUMNS
        write_bytes(root, "annotations/image_labels_train.csv", csv_text(header, train_rows).encode())
        test_header = ["image_id"] + ["Other disease" if c == "Other diseases" else c for c in LABEL_COLUMNS]
        write_bytes(root, "annotations/image_labels_test.csv", csv_text(test_header, test_rows).encode())
        ann_header = ["image_id", "rad_id", "class_name", "x_min", "y_min", "x_max", "y_max"]
        write_bytes(root, "annotations/annotations_train.csv", csv_text(ann_header, ann_train).encode())
        write_bytes(root, "annotations/annotations_test.csv", csv_text(ann_header, ann_test).encode())
        if self.opts["kaggle"]:
            k_header = ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
            write_bytes(root, "train.csv", csv_text(k_header, kaggle).encode())

    def _annotate(
        self,
        rows: list,
        kaggle: list | None,
        image_id: str,
        reader: str,
        votes: np.ndarray,
        cols: list[str],
        rng: np.random.Generator,
    ) -> None:
        """Box rows of one reader: a jittered box per positive local finding, else one 'No finding' row."""
        found = found_kaggle = False
        for col, v in zip(cols, votes, strict=True):
            if not v or col in GLOBAL_LABELS or (image_id, col) not in self.boxes:
                continue
            x0, y0, x1, y1 = self.boxes[(image_id, col)]
            w, h = x1 - x0, y1 - y0
            j = rng.normal(0.0, 0.04, 4) * np.array([w, h, w, h])
            box = [
                max(0.0, x0 + j[0]),
                max(0.0, y0 + j[1]),
                min(float(self.size), x1 + j[2]),
                min(float(self.size), y1 + j[3]),
            ]
            coords = [f"{c:.1f}" for c in box]
            rows.append([image_id, reader, col, *coords])
            found = True
            if kaggle is not None and col in KAGGLE_CLASSES:
                kaggle.append([image_id, col, str(KAGGLE_CLASSES.index(col)), reader, *coords])
                found_kaggle = True
        if not found:
            rows.append([image_id, reader, "No finding", "", "", "", ""])
        if kaggle is not None and not found_kaggle:
            kaggle.append([image_id, "No finding", "14", reader, "", "", "", ""])

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        table = self._truth_table(plan)
        values = {f: table[col] for f, col in TRUTH.items()}
        return truth_frame(plan, self.name, self.truth_findings, values)

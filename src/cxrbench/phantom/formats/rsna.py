"""RSNA Pneumonia Detection layout: ``stage_2_train_labels.csv``, ``stage_2_detailed_class_info.csv``,
``stage_2_train_images/<patientId>.dcm``.

One image per patient id (a de-identified UUID), PA or AP, 8-bit MONOCHROME2 CR DICOMs. ``Target`` 1
where a consolidation-like opacity was drawn (consolidation or pneumonia), with one box per connected
part of it, in the pixels of a 1024 x 1024 image as the real files (the images are written at the
phantom's size: boxes are scaled by 1024 / size); ``class`` Normal where nothing at all was drawn.
``headers=true`` also writes torchxrayvision's table of the DICOM headers (view, sex, age), which
the real release does not have. No official split: the truth carries cxrbench's patient hash split
(seed 0), as for PadChest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.index.splits import hash_split
from cxrbench.phantom.cohort import FINDINGS
from cxrbench.phantom.encode import dicom, to_uint8
from cxrbench.phantom.formats.base import (
    Box,
    Option,
    PhantomFormat,
    csv_text,
    labels,
    scale_box,
    truth_frame,
    with_no_finding,
    write_bytes,
)

RELEASE_SIDE = 1024  # the pixels of the real images, in which the files give coordinates
CLASSES = ("Lung Opacity", "No Lung Opacity / Not Normal", "Normal")


def uuid_ids(rng: np.random.Generator, n: int) -> list[str]:
    """Random UUID-shaped ids (8-4-4-4-12 hex digits), seeded."""
    raw = rng.integers(0, 16, size=(n, 32))
    hexs = ["".join("0123456789abcdef"[v] for v in row) for row in raw]
    return [f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for h in hexs]


def component_boxes(mask: np.ndarray) -> list[Box]:
    """(x0, y0, x1, y1) edges of each 8-connected part of a boolean mask, largest first."""
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    parts = sorted(range(1, n), key=lambda k: -int(stats[k, cv2.CC_STAT_AREA]))
    return [
        (
            float(stats[k, 0]),
            float(stats[k, 1]),
            float(stats[k, 0] + stats[k, 2]),
            float(stats[k, 1] + stats[k, 3]),
        )
        for k in parts
    ]


def dicom8(row: dict[str, Any], img: np.ndarray, uid: str, patient_id: str) -> bytes:
    """An 8-bit MONOCHROME2 CR DICOM of ``img`` (both RSNA and SIIM release such files)."""
    return dicom(
        to_uint8(img).astype(np.uint16),
        bits_stored=8,
        photometric="MONOCHROME2",
        modality="CR",
        uid_seed=uid,
        patient_id=patient_id,
        sex=row["sex"],
        age_years=float(row["age"]),
    )


class RSNA(PhantomFormat):
    name = "rsna"
    truth_findings = ("no_finding", "lung_opacity", "pneumonia")
    default_views = {"PA": 0.55, "AP": 0.45}
    images_per_patient = 1.0
    one_image_per_patient = True
    split_defaults = {"val": 0.1, "test": 0.2}
    needs_masks = True
    region_masks = {"lung_opacity": ("consolidation",), "pneumonia": ("consolidation",)}
    options = (Option("headers", False, bool, "also write torchxrayvision's table of the DICOM headers"),)

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = cohort.reset_index(drop=True)
        df["image_id"] = uuid_ids(rng, len(df))
        df["patient_id"] = df["image_id"]
        df["study_id"] = None
        df["path"] = "stage_2_train_images/" + df["image_id"] + ".dcm"
        val, test = float(self.opts["val_fraction"]), float(self.opts["test_fraction"])
        df["split"] = hash_split(df["patient_id"], seed=0, fractions=(1.0 - val - test, val, test))
        headers = bool(self.opts["headers"])
        df["truth_view"] = np.where(df["view"] == "PA", "PA", "AP") if headers else "UNKNOWN"
        df["truth_sex"] = df["sex"] if headers else None
        df["truth_age"] = np.floor(df["age"]).astype(float) if headers else np.nan
        self.opacity: dict[str, list[Box]] = {}
        return df

    def take_masks(self, row: dict[str, Any], masks: dict[str, np.ndarray]) -> None:
        if masks["consolidation"].any():  # used where Target is 1 (a drawn opacity)
            self.opacity[row["image_id"]] = component_boxes(masks["consolidation"])

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        write_bytes(root, row["path"], dicom8(row, img, f"{self.seed}:{row['image_id']}", row["image_id"]))

    def _target(self, plan: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        lab = labels(plan)
        target = lab["opacity"].astype(bool)
        normal = with_no_finding(lab, FINDINGS).astype(bool)
        return target, normal & ~target

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        target, normal = self._target(plan)
        scale = RELEASE_SIDE / self.size
        rows, classes = [], []
        for i, image_id in enumerate(plan["image_id"]):
            cls = CLASSES[0] if target[i] else CLASSES[2] if normal[i] else CLASSES[1]
            boxes = [scale_box(b, scale) for b in self.opacity.get(image_id, [])] if target[i] else []
            for x0, y0, x1, y1 in boxes:
                rows.append([image_id, f"{x0:.4f}", f"{y0:.4f}", f"{x1 - x0:.4f}", f"{y1 - y0:.4f}", "1"])
            if not boxes:
                rows.append([image_id, "", "", "", "", str(int(target[i]))])
            classes += [[image_id, cls]] * max(len(boxes), 1)
        write_bytes(
            root,
            "stage_2_train_labels.csv",
            csv_text(["patientId", "x", "y", "width", "height", "Target"], rows).encode(),
        )
        write_bytes(
            root, "stage_2_detailed_class_info.csv", csv_text(["patientId", "class"], classes).encode()
        )
        if self.opts["headers"]:
            head = ["", "Modality", "PatientAge", "PatientID", "PatientSex", "ViewPosition"]
            body = [
                [str(i), "CR", str(int(np.floor(r.age))), r.image_id, r.sex, "PA" if r.view == "PA" else "AP"]
                for i, r in enumerate(plan.itertuples(index=False))
            ]
            write_bytes(root, "kaggle_stage_2_train_images_dicom_headers.csv", csv_text(head, body).encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        target, normal = self._target(plan)
        values = {
            "no_finding": normal.astype(np.int8),
            "lung_opacity": target.astype(np.int8),
            "pneumonia": target.astype(np.int8),
        }
        return truth_frame(plan, self.name, self.truth_findings, values)

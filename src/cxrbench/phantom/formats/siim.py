"""SIIM-ACR Pneumothorax layout (stage 1): ``train-rle.csv`` and
``dicom-images-train/<study UID>/<series UID>/<ImageId>.dcm``.

One image per patient, 8-bit MONOCHROME2 CR DICOMs. ``train-rle.csv`` (header ``ImageId,
EncodedPixels`` with the real file's space before the second name) holds ``-1`` for an image
without pneumothorax, else one row per connected part of the drawn pneumothorax: Kaggle's relative,
column-by-column run-length code over a 1024 x 1024 mask, as the real file. The phantom's images are
``size`` pixels: masks are drawn on the 1024 grid by repeating pixels (exact blocks when 1024 is a
multiple of the size). No official split: the truth carries cxrbench's patient hash split (seed 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.index.splits import hash_split
from cxrbench.phantom.formats.base import Box, PhantomFormat, labels, truth_frame, write_bytes
from cxrbench.phantom.formats.rsna import dicom8

RELEASE_SIDE = 1024


def relative_rle(mask: np.ndarray) -> str:
    """Kaggle's SIIM code of a boolean mask: runs over the column-major flattening, each start
    counted from the end of the previous run."""
    flat = np.zeros(mask.size + 2, dtype=bool)
    flat[1:-1] = mask.T.ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, stops = edges[0::2], edges[1::2]
    gaps = starts - np.concatenate([[0], stops[:-1]])
    return " ".join(f"{g} {n}" for g, n in zip(gaps.tolist(), (stops - starts).tolist(), strict=True))


def upsample(mask: np.ndarray, side: int) -> np.ndarray:
    """A boolean mask on a ``side`` x ``side`` grid by repeating pixels (nearest)."""
    idx = (np.arange(side) * mask.shape[0]) // side
    return mask[np.ix_(idx, idx)]


class SIIM(PhantomFormat):
    name = "siim"
    truth_findings = ("pneumothorax",)
    default_views = {"PA": 0.7, "AP": 0.3}
    images_per_patient = 1.0
    one_image_per_patient = True
    split_defaults = {"val": 0.1, "test": 0.2}
    needs_masks = True

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = cohort.reset_index(drop=True)
        n = len(df)
        nums = rng.integers(1000, 15000, n)
        stamps = 1517875000 + rng.integers(0, 300, n)
        fracs = rng.integers(100000, 999999, n)
        df["image_id"] = [
            f"1.2.276.0.7230010.3.1.4.8323329.{a}.{b}.{c}"
            for a, b, c in zip(nums, stamps, fracs, strict=True)
        ]
        study = [
            f"1.2.276.0.7230010.3.1.2.8323329.{a}.{b}.{c - 1}"
            for a, b, c in zip(nums, stamps, fracs, strict=True)
        ]
        series = [
            f"1.2.276.0.7230010.3.1.3.8323329.{a}.{b}.{c - 2}"
            for a, b, c in zip(nums, stamps, fracs, strict=True)
        ]
        df["path"] = [
            f"dicom-images-train/{s}/{r}/{i}.dcm"
            for s, r, i in zip(study, series, df["image_id"], strict=True)
        ]
        df["patient_id"] = df["image_id"]
        df["study_id"] = None
        val, test = float(self.opts["val_fraction"]), float(self.opts["test_fraction"])
        df["split"] = hash_split(df["patient_id"], seed=0, fractions=(1.0 - val - test, val, test))
        df["truth_view"] = "UNKNOWN"
        df["truth_sex"] = None
        df["truth_age"] = np.nan
        self.codes: dict[str, list[str]] = {}
        return df

    def take_masks(self, row: dict[str, Any], masks: dict[str, np.ndarray]) -> None:
        import cv2

        if not row["label_pneumothorax"] or not masks["pneumothorax"].any():
            return
        n, parts = cv2.connectedComponents(masks["pneumothorax"].astype(np.uint8), connectivity=8)
        self.codes[row["image_id"]] = [relative_rle(upsample(parts == k, RELEASE_SIDE)) for k in range(1, n)]

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        write_bytes(root, row["path"], dicom8(row, img, f"{self.seed}:{row['image_id']}", row["image_id"]))

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        lines = ["ImageId, EncodedPixels"]
        for image_id in plan["image_id"]:
            codes = self.codes.get(image_id) or ["-1"]
            lines.extend(f"{image_id}, {c}" for c in codes)
        write_bytes(root, "train-rle.csv", ("\n".join(lines) + "\n").encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        lab = labels(plan)
        drawn = np.array([bool(self.codes.get(i)) for i in plan["image_id"]])
        return truth_frame(
            plan, self.name, self.truth_findings, {"pneumothorax": (lab["pneumothorax"] & drawn)}
        )

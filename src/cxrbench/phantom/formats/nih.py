"""NIH ChestX-ray14 layout: ``Data_Entry_2017_v2020.csv``, ``images_0XX/images/*.png``, split lists.

Written like the Kaggle mirror (``images_001/images/`` ... ``images_012/images/``; or one flat
``images/`` with ``layout=flat``). The label file has the 11-column header quirk (bracketed names
that contain commas, unquoted); ``header=2017`` writes the older variant (``Patient Sex`` and a
trailing comma on every line). Frontal views only (PA/AP), like the real file. ``Follow-up #``
usually equals the file suffix but not always, as in the real file. ``BBox_List_2017.csv`` holds
boxes for about half of the images with one of its eight classes, in the pixels of a 1024 x 1024
image as the real file (the images are written at the phantom's size: boxes scaled by 1024 / size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.phantom.encode import png8
from cxrbench.phantom.formats.base import (
    BOX_MASKS,
    Box,
    Option,
    PhantomFormat,
    assign_splits,
    labels,
    scale_box,
    truth_frame,
    with_no_finding,
    write_bytes,
)

HEADER_V2020 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)
HEADER_2017 = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Sex,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)
# Canonical finding -> NIH label (exact spelling). Pleural_Thickening etc. exist but are not drawn.
NIH_LABELS: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "cardiomegaly": "Cardiomegaly",
    "consolidation": "Consolidation",
    "edema": "Edema",
    "pleural_effusion": "Effusion",
    "mass": "Mass",
    "nodule": "Nodule",
    "pneumonia": "Pneumonia",
    "pneumothorax": "Pneumothorax",
}
BBOX_LABELS: dict[str, str] = {
    "atelectasis": "Atelectasis",
    "pleural_effusion": "Effusion",
    "cardiomegaly": "Cardiomegaly",
    "pneumonia": "Pneumonia",
    "mass": "Mass",
    "nodule": "Nodule",
    "pneumothorax": "Pneumothorax",
}
SPACINGS = ("0.14300000000000002", "0.168", "0.139", "0.194311")
N_FOLDERS = 12
RELEASE_SIDE = 1024  # the real PNGs' side: the pixels BBox_List_2017.csv counts in


class NIH(PhantomFormat):
    name = "nih"
    truth_findings = ("no_finding", *NIH_LABELS)
    default_views = {"PA": 0.6, "AP": 0.4}
    images_per_patient = 3.0
    one_image_per_study = True
    split_defaults = {"test": 0.2}
    options = (
        Option(
            "layout",
            "kaggle",
            str,
            "kaggle: images_0XX/images/; flat: one images/ folder",
            choices=("kaggle", "flat"),
        ),
        Option(
            "header",
            "v2020",
            str,
            "v2020: Patient Gender, no trailing comma; 2017: Patient Sex, trailing comma",
            choices=("v2020", "2017"),
        ),
        Option("bbox", True, bool, "write BBox_List_2017.csv"),
        Option(
            "rgba_rate", 0.0, float, "share of images stored as RGBA PNG (a real quirk)", low=0.0, high=1.0
        ),
    )
    needs_boxes = True

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        if (cohort["view"] == "LATERAL").any():
            cohort = cohort[cohort["view"] != "LATERAL"]
        df = cohort.sort_values(["patient", "study"]).reset_index(drop=True)
        df["pid"] = df["patient"] + 1
        df["follow_up"] = df.groupby("patient").cumcount()
        df["image_id"] = [f"{p:08d}_{k:03d}.png" for p, k in zip(df["pid"], df["follow_up"], strict=True)]
        quirk = rng.random(len(df)) < 0.1
        df["follow_up_col"] = df["follow_up"] + quirk * rng.integers(1, 4, len(df))
        n = len(df)
        if self.opts["layout"] == "flat":
            df["path"] = "images/" + df["image_id"]
        else:
            per = int(np.ceil(n / N_FOLDERS))
            folder = np.arange(n) // max(per, 1) + 1
            df["path"] = [
                f"images_{k:03d}/images/{name}" for k, name in zip(folder, df["image_id"], strict=True)
            ]
        df["patient_id"] = df["pid"].astype(str)
        df["study_id"] = None
        df["split"] = assign_splits(int(df["patient"].max()) + 1, rng, {"test": self.opts["test_fraction"]})[
            df["patient"].to_numpy()
        ]
        df["truth_view"] = np.where(df["view"] == "AP_SUPINE", "AP", df["view"])
        df["truth_sex"] = df["sex"]
        df["age_years"] = np.floor(df["age"]).astype(int)
        df["truth_age"] = df["age_years"].astype(float)
        df["orig_w"] = rng.integers(2000, 3056, n)
        df["orig_h"] = rng.integers(2000, 3056, n)
        df["spacing"] = np.array(SPACINGS, dtype=object)[rng.integers(0, len(SPACINGS), n)]
        df["rgba"] = rng.random(n) < self.opts["rgba_rate"]
        df["bbox_pick"] = rng.random(n) < 0.5
        self.boxes: list[tuple[str, str, tuple[float, float, float, float]]] = []
        return df

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        write_bytes(root, row["path"], png8(img, rgba=bool(row["rgba"])))
        if self.opts["bbox"] and boxes is not None and row["bbox_pick"]:
            for finding, label in BBOX_LABELS.items():
                if row[f"label_{finding}"]:
                    box = boxes[BOX_MASKS[finding]]
                    if box is not None:
                        self.boxes.append((row["image_id"], label, box))

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        lab = labels(plan)
        finding_labels = []
        for i in range(len(plan)):
            names = sorted(NIH_LABELS[f] for f in NIH_LABELS if lab[f][i])
            finding_labels.append("|".join(names) if names else "No Finding")
        old = self.opts["header"] == "2017"
        tail = "," if old else ""
        lines = [HEADER_2017 if old else HEADER_V2020]
        for i, r in enumerate(plan.itertuples(index=False)):
            lines.append(
                f"{r.image_id},{finding_labels[i]},{r.follow_up_col},{r.pid},{r.age_years},{r.sex},"
                f"{r.truth_view},{r.orig_w},{r.orig_h},{r.spacing},{r.spacing}{tail}"
            )
        write_bytes(root, "Data_Entry_2017_v2020.csv", ("\n".join(lines) + "\n").encode())
        train = sorted(plan.loc[plan["split"] == "train", "image_id"])
        test = sorted(plan.loc[plan["split"] == "test", "image_id"])
        write_bytes(root, "train_val_list.txt", ("\n".join(train) + "\n").encode() if train else b"")
        write_bytes(root, "test_list.txt", ("\n".join(test) + "\n").encode() if test else b"")
        if self.opts["bbox"]:
            out = ["Image Index,Finding Label,Bbox [x,y,w,h],,,"]
            scale = RELEASE_SIDE / self.size
            for image_id, label, box in sorted(self.boxes):
                x0, y0, x1, y1 = scale_box(box, scale)
                out.append(f"{image_id},{label},{x0:.4f},{y0:.4f},{x1 - x0:.4f},{y1 - y0:.4f}")
            write_bytes(root, "BBox_List_2017.csv", ("\n".join(out) + "\n").encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        lab = labels(plan)
        lab["no_finding"] = with_no_finding(lab, tuple(NIH_LABELS))
        return truth_frame(plan, self.name, self.truth_findings, lab)

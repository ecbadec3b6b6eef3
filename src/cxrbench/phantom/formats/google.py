"""Google's expert relabels of NIH ChestX-ray14: the NIH layout (every file of the ``nih`` format)
plus ``four_findings_expert_labels/test_labels.csv`` and ``validation_labels.csv``.

The test set relabels every image of NIH's test list, the validation set the images of about 40 %
of the train_val patients; both carry NIH's patient columns and ``Fracture, Pneumothorax, Airspace
opacity, Nodule or mass`` as ``YES``/``NO`` (fractures are never drawn: always NO). The truth holds the
relabelled images only, split val / test as the two files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrbench.phantom.formats.base import csv_text, labels, truth_frame, write_bytes
from cxrbench.phantom.formats.nih import NIH

COLUMNS = [
    "Image Index",
    "Patient ID",
    "Patient Age",
    "Patient Gender",
    "View Position",
    "Fracture",
    "Pneumothorax",
    "Airspace opacity",
    "Nodule or mass",
]
TRUTH = {
    "fracture": "Fracture",
    "pneumothorax": "Pneumothorax",
    "lung_opacity": "Airspace opacity",
    "nodule_mass": "Nodule or mass",
}
FILES = {
    "test": "four_findings_expert_labels/test_labels.csv",
    "val": "four_findings_expert_labels/validation_labels.csv",
}
VAL_SHARE = 0.4


class NIHGoogle(NIH):
    name = "nih-google"
    truth_findings = tuple(TRUTH)

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = super().plan(cohort, rng)
        pick = rng.random(int(df["patient"].max()) + 1) < VAL_SHARE
        df["google"] = np.where(
            df["split"] == "test", "test", np.where(pick[df["patient"].to_numpy()], "val", "")
        )
        return df

    def _values(self, plan: pd.DataFrame) -> dict[str, np.ndarray]:
        lab = labels(plan)
        return {
            "fracture": np.zeros(len(plan), dtype=np.int8),
            "pneumothorax": lab["pneumothorax"],
            "lung_opacity": lab["lung_opacity"],
            "nodule_mass": lab["nodule_mass"],
        }

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        super().finish(root, plan, rng)
        values = self._values(plan)
        for split, name in FILES.items():
            idx = np.flatnonzero(plan["google"].to_numpy() == split)
            rows = [
                [
                    plan["image_id"].iat[i],
                    str(plan["pid"].iat[i]),
                    str(plan["age_years"].iat[i]),
                    plan["sex"].iat[i],
                    plan["truth_view"].iat[i],
                ]
                + ["YES" if values[f][i] else "NO" for f in TRUTH]
                for i in idx
            ]
            write_bytes(root, name, csv_text(COLUMNS, rows).encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        keep = plan["google"].to_numpy() != ""
        sub = plan.loc[keep].assign(split=plan.loc[keep, "google"]).reset_index(drop=True)
        values = {f: v[keep] for f, v in self._values(plan).items()}
        return truth_frame(sub, self.name, self.truth_findings, values)

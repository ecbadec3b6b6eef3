"""A private-hospital dataset like the study's UKA-CXR: ``images/<patient>/<study>.png`` + ``labels.csv``.

``labels.csv`` columns: ``image_path, patient_id, study_id, view, sex, age, split`` and graded
findings 0-4 (0 none, 1 minimal, 2 mild, 3 moderate, 4 severe; the study counts grade >= 3 as
positive): ``cardiomegaly, congestion, pleural_effusion_left, pleural_effusion_right,
pneumonic_infiltrates_left, pneumonic_infiltrates_right, atelectasis_left, atelectasis_right``, and
``healthy`` (1 when every grade is 0). Bedside frontal films only, one per study; by default 15% of
the findings per study are faint grade 1-2 ones (``mild_rate``), drawn but negative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.phantom.cohort import grade
from cxrbench.phantom.encode import png8
from cxrbench.phantom.formats.base import (
    Box,
    PhantomFormat,
    assign_splits,
    csv_text,
    truth_frame,
    write_bytes,
)

META = ["image_path", "patient_id", "study_id", "view", "sex", "age", "split"]
# Graded column -> severity column of the cohort.
GRADED: dict[str, str] = {
    "cardiomegaly": "cm",
    "congestion": "edema",
    "pleural_effusion_left": "eff_l",
    "pleural_effusion_right": "eff_r",
    "pneumonic_infiltrates_left": "cons_l",
    "pneumonic_infiltrates_right": "cons_r",
    "atelectasis_left": "atel_l",
    "atelectasis_right": "atel_r",
}
POSITIVE_GRADE = 3
# Graded column -> truth column, where they differ (side variants of canonical findings).
TRUTH_NAME = {
    "pneumonic_infiltrates_left": "pneumonia_left",
    "pneumonic_infiltrates_right": "pneumonia_right",
}
# A mapping for `cxrbench index --dataset csv --mapping` (written to _phantom/csv_mapping.yaml).
MAPPING_YAML = """\
# cxrbench index mapping for this phantom's labels.csv (UKA-CXR style; grade >= 3 is positive).
name: csv
file: labels.csv
columns:
  {path: image_path, patient: patient_id, study: study_id, view: view, split: split, sex: sex, age: age}
views: {PA: PA, AP: AP, AP_SUPINE: AP_SUPINE}
labels:
  cardiomegaly: {column: cardiomegaly, positive_at: 3}
  congestion: {column: congestion, positive_at: 3}
  pleural_effusion: {left: pleural_effusion_left, right: pleural_effusion_right, positive_at: 3, sides: both}
  pneumonia:
    {left: pneumonic_infiltrates_left, right: pneumonic_infiltrates_right, positive_at: 3, sides: both}
  atelectasis: {left: atelectasis_left, right: atelectasis_right, positive_at: 3, sides: both}
  no_finding: {column: healthy, values: {0: 0, 1: 1}}
"""


class CsvFormat(PhantomFormat):
    name = "csv"
    truth_findings = (
        "no_finding",
        "cardiomegaly",
        "congestion",
        "pleural_effusion",
        "pneumonia",
        "atelectasis",
        "pleural_effusion_left",
        "pleural_effusion_right",
        "pneumonia_left",
        "pneumonia_right",
        "atelectasis_left",
        "atelectasis_right",
    )
    drawn = ("cardiomegaly", "pleural_effusion", "pneumonia", "atelectasis", "edema", "scoliosis")
    default_views = {"AP": 0.45, "AP_SUPINE": 0.4, "PA": 0.15}
    images_per_patient = 2.0
    mild_rate = 0.15
    one_image_per_study = True
    split_defaults = {"val": 0.1, "test": 0.2}

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = cohort.sort_values(["patient", "study"]).reset_index(drop=True)
        df["patient_id"] = [f"P{p + 1:06d}" for p in df["patient"]]
        df["study_id"] = [f"S{k + 1:07d}" for k in df["study_key"]]
        df["path"] = [f"images/{p}/{s}.png" for p, s in zip(df["patient_id"], df["study_id"], strict=True)]
        df["image_id"] = df["path"]
        n_pat = int(df["patient"].max()) + 1
        df["split"] = assign_splits(
            n_pat, rng, {"val": self.opts["val_fraction"], "test": self.opts["test_fraction"]}
        )[df["patient"].to_numpy()]
        df["truth_view"] = df["view"]
        df["truth_sex"] = df["sex"]
        df["age_years"] = np.floor(df["age"]).astype(int)
        df["truth_age"] = df["age_years"].astype(float)
        for col, sev in GRADED.items():
            df[f"grade_{col}"] = grade(df[sev].to_numpy())
        df["healthy"] = (df[[f"grade_{c}" for c in GRADED]].sum(axis=1) == 0).astype(np.int8)
        return df

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        write_bytes(root, row["path"], png8(img))

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        rows = [
            [r["path"], r["patient_id"], r["study_id"], r["view"], r["sex"], str(r["age_years"]), r["split"]]
            + [str(int(r[f"grade_{c}"])) for c in GRADED]
            + [str(int(r["healthy"]))]
            for r in plan.to_dict("records")
        ]
        write_bytes(root, "_phantom/csv_mapping.yaml", MAPPING_YAML.encode())
        write_bytes(root, "labels.csv", csv_text(META + list(GRADED) + ["healthy"], rows).encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        pos = {c: (plan[f"grade_{c}"].to_numpy() >= POSITIVE_GRADE).astype(np.int8) for c in GRADED}
        values = {TRUTH_NAME.get(c, c): v for c, v in pos.items()}
        values["no_finding"] = plan["healthy"].to_numpy().astype(np.int8)
        values["pleural_effusion"] = pos["pleural_effusion_left"] | pos["pleural_effusion_right"]
        values["pneumonia"] = pos["pneumonic_infiltrates_left"] | pos["pneumonic_infiltrates_right"]
        values["atelectasis"] = pos["atelectasis_left"] | pos["atelectasis_right"]
        return truth_frame(plan, self.name, self.truth_findings, values)

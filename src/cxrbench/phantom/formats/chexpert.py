"""CheXpert v1.0 (-small) layout: ``train.csv``, ``valid.csv``, ``train/patientNNNNN/studyN/viewN_*.jpg``.

Labels are per study (every image of a study carries them). Train: ``1.0`` positive, ``0.0`` or blank
(not mentioned) negative, ``-1.0`` uncertain only when ``uncertain_rate`` > 0 (then that share of
positive labels, and a quarter of that share of negative ones, become ``-1.0``); ``No Finding`` is
``1.0`` or blank. Valid (and the CheXlocalize test set, ``test_set=true``): ``0.0``/``1.0`` only,
first study of each patient. Validation and test patients are numbered after the training
patients, as in the real release.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.phantom.encode import jpeg, to_uint8
from cxrbench.phantom.formats.base import (
    UNCERTAIN_RATE,
    Box,
    Option,
    PhantomFormat,
    assign_splits,
    csv_text,
    fmt_label,
    labels,
    truth_frame,
    with_no_finding,
    write_bytes,
)

# Observation column -> canonical finding (None: in the file, never drawn).
OBSERVATIONS: dict[str, str | None] = {
    "No Finding": "no_finding",
    "Enlarged Cardiomediastinum": "enlarged_cardiomediastinum",
    "Cardiomegaly": "cardiomegaly",
    "Lung Opacity": "lung_opacity",
    "Lung Lesion": "lung_lesion",
    "Edema": "edema",
    "Consolidation": "consolidation",
    "Pneumonia": "pneumonia",
    "Atelectasis": "atelectasis",
    "Pneumothorax": "pneumothorax",
    "Pleural Effusion": "pleural_effusion",
    "Pleural Other": None,
    "Fracture": None,
    "Support Devices": None,
}
META_COLUMNS = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"]
# Share of negatives written as explicit 0.0 rather than blank (roughly as in the real train.csv).
EXPLICIT_ZERO: dict[str, float] = {
    "Pneumothorax": 0.28,
    "Pleural Effusion": 0.28,
    "Edema": 0.13,
    "Consolidation": 0.15,
    "Cardiomegaly": 0.06,
}
DEMO_COLUMNS = ["PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY"]
RACES = ("White", "Black or African American", "Asian", "Other", "Unknown")
RACE_SHARES = (0.55, 0.07, 0.16, 0.15, 0.07)
ETHNICITIES = ("Non-Hispanic/Non-Latino", "Hispanic/Latino", "Unknown")
ETH_SHARES = (0.78, 0.15, 0.07)
DEFAULT_ZERO = 0.1
UNDRAWN_ZERO = 0.03


class CheXpert(PhantomFormat):
    name = "chexpert"
    truth_findings = tuple(f for f in OBSERVATIONS.values() if f is not None)
    default_views = {"AP": 0.6, "PA": 0.25, "LATERAL": 0.15}
    images_per_patient = 3.0
    split_defaults = {"val": 0.1, "test": 0.0}
    options = (
        UNCERTAIN_RATE,
        Option("test_set", False, bool, "also write the CheXlocalize test set (test_labels.csv, test/)"),
        Option("prefix", "CheXpert-v1.0-small", str, "distribution prefix of the Path column"),
        Option("demographics", False, bool, "also write the demographics sheet (as CSV: CHEXPERT DEMO.csv)"),
    )

    @classmethod
    def resolve_options(cls, given: dict[str, Any]) -> dict[str, Any]:
        opts = super().resolve_options(given)
        if opts["test_set"] and "test_fraction" not in given:
            opts["test_fraction"] = 0.1
        if opts["test_fraction"] > 0 and not opts["test_set"]:
            opts["test_set"] = True
        return opts

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        n_pat = int(cohort["patient"].max()) + 1
        split_of = assign_splits(
            n_pat, rng, {"val": self.opts["val_fraction"], "test": self.opts["test_fraction"]}
        )
        df = cohort.copy()
        df["split"] = split_of[df["patient"].to_numpy()]
        df = df[(df["split"] == "train") | (df["study"] == 0)]  # valid/test: one study per patient
        order = {"train": 0, "val": 1, "test": 2}
        pat_order = sorted(range(n_pat), key=lambda p: (order[split_of[p]], p))
        number = {p: i + 1 for i, p in enumerate(pat_order)}
        df = df.sort_values(["patient", "study", "image"]).reset_index(drop=True)
        df["patient_id"] = [f"patient{number[p]:05d}" for p in df["patient"]]
        df["study_id"] = [f"{pid}/study{s + 1}" for pid, s in zip(df["patient_id"], df["study"], strict=True)]
        folder = df["split"].map({"train": "train", "val": "valid", "test": "test"})
        kind = np.where(df["view"] == "LATERAL", "lateral", "frontal")
        df["path"] = [
            f"{f}/{sid}/view{i + 1}_{k}.jpg"
            for f, sid, i, k in zip(folder, df["study_id"], df["image"], kind, strict=True)
        ]
        df["image_id"] = (
            df["path"].str.split("/", n=1).str[1].str.removesuffix(".jpg")
        )  # patientN/studyN/viewM_x
        df["truth_view"] = np.where(df["view"] == "AP_SUPINE", "AP", df["view"])
        # test_labels.csv has no view columns: only "frontal"/"lateral" in the file name is known.
        df.loc[(df["split"] == "test") & (df["view"] != "LATERAL"), "truth_view"] = "UNKNOWN"
        df["truth_sex"] = df["sex"]
        df["age_years"] = np.floor(df["age"]).astype(int)
        df["truth_age"] = df["age_years"].astype(float)
        test = df["split"] == "test"  # test_labels.csv has no Sex / Age either
        df["truth_sex"] = df["truth_sex"].where(~test, None)
        df.loc[test, "truth_age"] = np.nan
        if self.opts["demographics"]:  # per patient, as the released sheet (PRIMARY_RACE, ETHNICITY)
            n_pat = int(df["patient"].max()) + 1
            race = np.asarray(RACES, dtype=object)[rng.choice(len(RACES), n_pat, p=RACE_SHARES)]
            eth = np.asarray(ETHNICITIES, dtype=object)[rng.choice(len(ETHNICITIES), n_pat, p=ETH_SHARES)]
            df["race"], df["ethnicity"] = race[df["patient"].to_numpy()], eth[df["patient"].to_numpy()]
        return df

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        write_bytes(root, row["path"], jpeg(to_uint8(img), quality=90))

    def _values(self, plan: pd.DataFrame, rng: np.random.Generator) -> dict[str, list[str]]:
        """Observation column -> written value per row (per study, so images of a study agree)."""
        lab = labels(plan)
        lab["no_finding"] = with_no_finding(
            lab, tuple(f for f in OBSERVATIONS.values() if f and f != "no_finding")
        )
        keys = plan["study_key"].to_numpy()
        uniq, first = np.unique(keys, return_index=True)
        pos_in_uniq = np.searchsorted(uniq, keys)
        train = (plan["split"].to_numpy() == "train")[first]
        rate = float(self.opts["uncertain_rate"])
        out: dict[str, list[str]] = {}
        for col, finding in OBSERVATIONS.items():
            n = len(uniq)
            pos = lab[finding][first].astype(bool) if finding else np.zeros(n, dtype=bool)
            r1, r2 = rng.random(n), rng.random(n)
            p_zero = UNDRAWN_ZERO if finding is None else EXPLICIT_ZERO.get(col, DEFAULT_ZERO)
            vals = np.where(pos, "1.0", np.where(r1 < p_zero, "0.0", ""))
            if col == "No Finding":
                vals = np.where(pos, "1.0", "")
            elif rate > 0:
                vals = np.where(pos & (r2 < rate), "-1.0", vals)
                vals = np.where(~pos & (r2 < rate / 4), "-1.0", vals)
            strict = np.where(pos, "1.0", "0.0")  # valid / test: radiologist consensus, 0/1 only
            vals = np.where(train, vals, strict)
            out[col] = list(vals[pos_in_uniq])
        return out

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        values = self._values(plan, rng)
        prefix = self.opts["prefix"].rstrip("/")
        frontal = np.where(plan["view"] == "LATERAL", "Lateral", "Frontal")
        ap_pa = np.where(plan["view"] == "LATERAL", "", np.where(plan["view"] == "PA", "PA", "AP"))
        sex = plan["sex"].map({"M": "Male", "F": "Female"}).to_numpy()
        obs = list(OBSERVATIONS)
        for split, fname in (("train", "train.csv"), ("val", "valid.csv")):
            idx = np.flatnonzero(plan["split"].to_numpy() == split)
            rows = [
                [
                    f"{prefix}/{plan['path'].iat[i]}" if prefix else plan["path"].iat[i],
                    sex[i],
                    str(plan["age_years"].iat[i]),
                    frontal[i],
                    ap_pa[i],
                ]
                + [values[c][i] for c in obs]
                for i in idx
            ]
            write_bytes(root, fname, csv_text(META_COLUMNS + obs, rows).encode())
        if self.opts["test_set"]:
            idx = np.flatnonzero(plan["split"].to_numpy() == "test")
            rows = [[plan["path"].iat[i]] + [values[c][i] for c in obs] for i in idx]
            write_bytes(root, "test_labels.csv", csv_text(["Path"] + obs, rows).encode())
        if self.opts["demographics"]:
            first = plan.drop_duplicates("patient_id")
            rows = [[r.patient_id, {"M": "Male", "F": "Female"}[r.sex], str(r.age_years), r.race, r.ethnicity]
                    for r in first.itertuples(index=False)]
            write_bytes(root, "CHEXPERT DEMO.csv", csv_text(DEMO_COLUMNS, rows).encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        lab = labels(plan)
        lab["no_finding"] = with_no_finding(lab, self.truth_findings[1:])
        out = truth_frame(plan, self.name, self.truth_findings, lab)
        if self.opts["demographics"]:  # what the index's subgroup columns hold (Unknown: missing)
            for col in ("race", "ethnicity"):
                values = plan[col].to_numpy(dtype=object)
                out.insert(9, col, np.where(values == "Unknown", None, values))
        return out


__all__ = ["CheXpert", "OBSERVATIONS", "fmt_label"]

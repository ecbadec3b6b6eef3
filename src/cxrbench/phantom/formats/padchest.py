"""PadChest layout: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` and ``<ImageDir>/<ImageID>``.

The 36-column CSV starts with an unnamed row index; ``ImageID`` is ``<StudyID>_<6 chars>.png``;
``PatientBirth`` a float year; ``Projection`` PA / L / AP / AP_horizontal (supine AP) with the raw
``ViewPosition_DICOM`` often missing; ``Labels`` a Python-list string per study with the real
quirks: leading spaces on later items, some empty ``''`` items, ``['normal']`` for no finding, and
distractor terms that must not map onto the drawn findings (``pericardial effusion``,
``pseudonodule``, ``subcutaneous emphysema``, ...; ``hydropneumothorax`` stands for a drawn pneumothorax
plus effusion on one side). ``labelCUIS``/``LocalizationsCUIS`` are numpy-style
arrays without commas. Images are 16-bit PNGs whose values use 12 or 10 bits (``BitsStored_DICOM``),
with the maximum a little below full scale. PadChest has no official split: the truth carries the
split ``cxrbench.splits.hash_split`` (seed 0) makes from ``PatientID``, as ``cxrbench index`` does by default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.index.splits import hash_split
from cxrbench.phantom.cohort import POSITIVE
from cxrbench.phantom.encode import png16
from cxrbench.phantom.formats.base import (
    Box,
    Option,
    PhantomFormat,
    csv_text,
    labels,
    truth_frame,
    with_no_finding,
    write_bytes,
)

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
COLUMNS = [
    "",
    "ImageID",
    "ImageDir",
    "StudyDate_DICOM",
    "StudyID",
    "PatientID",
    "PatientBirth",
    "PatientSex_DICOM",
    "ViewPosition_DICOM",
    "Projection",
    "MethodProjection",
    "Pediatric",
    "Modality_DICOM",
    "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM",
    "PixelRepresentation_DICOM",
    "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM",
    "BitsStored_DICOM",
    "WindowCenter_DICOM",
    "WindowWidth_DICOM",
    "Rows_DICOM",
    "Columns_DICOM",
    "XRayTubeCurrent_DICOM",
    "Exposure_DICOM",
    "ExposureInuAs_DICOM",
    "ExposureTime",
    "RelativeXRayExposure_DICOM",
    "ReportID",
    "Report",
    "MethodLabel",
    "Labels",
    "Localizations",
    "LabelsLocalizationsBySentence",
    "labelCUIS",
    "LocalizationsCUIS",
]
# Canonical finding -> (PadChest terms, their UMLS CUIs as in the real file, stemmed Spanish report words).
TERMS: dict[str, tuple[tuple[str, ...], tuple[str | None, ...], str]] = {
    "cardiomegaly": (("cardiomegaly",), ("C0018800",), "cardiomegali"),
    "pleural_effusion": (("pleural effusion",), ("C2073625",), "derram pleural"),
    "pneumothorax": (("pneumothorax",), ("C2073565",), "neumotorax"),
    "nodule": (("nodule",), ("C0034079",), "nodul pulmonar"),
    "mass": (("pulmonary mass", "mass"), ("C0149726", "C2603353"), "masa pulmon"),
    "consolidation": (("consolidation",), ("C0521530",), "consolidacion"),
    "pneumonia": (("pneumonia",), ("C0032285",), "neumon"),
    "atelectasis": (("atelectasis",), ("C0004144",), "atelectasi"),
    "edema": (("pulmonary edema",), ("C0034063",), "edem pulmon"),
    "scoliosis": (("scoliosis",), ("C0036439",), "escoliosis"),
}
# Both a pneumothorax and an effusion (written only when both are drawn, on the same side).
HYDROPNEUMOTHORAX = ("hydropneumothorax", "C0020303", "hidroneumotorax")
# Real PadChest terms that are not the drawn findings (never mapped onto them).
DISTRACTORS: tuple[tuple[str, str | None, str], ...] = (
    ("pericardial effusion", "C0031039", "derram pericard"),
    ("pseudonodule", None, "pseudonodul"),
    ("subcutaneous emphysema", "C0038536", "enfisem subcutane"),
    ("chronic changes", "C0742362", "cambi cronic"),
    ("kyphosis", "C2115817", "cifosis"),
    ("COPD signs", "C0024117", "sign epoc"),
    ("callus rib fracture", "C0006767", "callo fractur costal"),
    ("hiatal hernia", "C3489393", "hernia hiat"),
    ("aortic elongation", None, "elongacion aortic"),
)
LOC_CUIS = {
    "loc left": "C0443246",
    "loc right": "C0444532",
    "loc bilateral": "C0238767",
    "loc cardiac": "C1522601",
    "loc pleural": "C0032225",
    "loc apical": "C0734296",
    "loc basal": "C1282378",
    "loc upper lobe": "C0225756",
    "loc perihilar": "C0225702",
    "loc column": "C0037949",
}
PROJECTION = {"PA": "PA", "AP": "AP", "AP_SUPINE": "AP_horizontal", "LATERAL": "L"}
RAW_VIEW = {
    "PA": ("POSTEROANTERIOR", "PA"),
    "AP": ("ANTEROPOSTERIOR", "AP"),
    "LATERAL": ("LATERAL", "LL"),
    "AP_SUPINE": ("nan", "nan"),
}
ALNUM = np.array(list("abcdefghijklmnopqrstuvwxyz0123456789"))


def _numpy_list(items: list[str]) -> str:
    return "[" + " ".join(f"'{x}'" for x in items) + "]"


def _big_ints(rng: np.random.Generator, n: int, digits_low: int, digits_high: int) -> list[str]:
    out, seen = [], set()
    while len(out) < n:
        k = int(rng.integers(digits_low, digits_high + 1))
        s = str(int(rng.integers(1, 10))) + "".join(map(str, rng.integers(0, 10, k - 1)))
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


class PadChest(PhantomFormat):
    name = "padchest"
    truth_findings = ("no_finding", *TERMS)
    default_views = {"PA": 0.62, "AP": 0.08, "AP_SUPINE": 0.15, "LATERAL": 0.15}
    images_per_patient = 2.5
    split_defaults = {"val": 0.1, "test": 0.2}
    options = (
        Option(
            "bits", 0, int, "bits used in the 16-bit PNGs: 12, 10, or 0 for a 9:1 mix", choices=(0, 10, 12)
        ),
    )

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = cohort.sort_values(["patient", "study", "image"]).reset_index(drop=True)
        n, n_pat, n_st = len(df), int(df["patient"].max()) + 1, int(df["study_key"].max()) + 1
        pat_ids = np.array(_big_ints(rng, n_pat, 37, 39), dtype=object)
        study_ids = np.array(_big_ints(rng, n_st, 38, 39), dtype=object)
        df["patient_id"] = pat_ids[df["patient"].to_numpy()]
        df["study_id"] = study_ids[df["study_key"].to_numpy()]
        suffix = ["".join(ALNUM[rng.integers(0, len(ALNUM), 6)]) for _ in range(n)]
        df["image_id"] = [f"{s}_{x}.png" for s, x in zip(df["study_id"], suffix, strict=True)]
        n_dirs = int(min(50, max(1, np.ceil(n / 40))))
        df["image_dir"] = rng.integers(0, n_dirs, n)
        df["path"] = [f"{d}/{i}" for d, i in zip(df["image_dir"], df["image_id"], strict=True)]
        # No official split: the project's patient hash split (what `cxrbench index` does by default).
        val, test = float(self.opts["val_fraction"]), float(self.opts["test_fraction"])
        df["split"] = hash_split(df["patient_id"], seed=0, fractions=(1.0 - val - test, val, test))
        first = pd.Timestamp("2009-01-01") + pd.to_timedelta(rng.integers(0, 8 * 365, n_pat), unit="D")
        dates = first[df["patient"].to_numpy()] + pd.to_timedelta(np.floor(df["days"].to_numpy()), unit="D")
        df["study_date"] = dates.strftime("%Y%m%d")
        first_age = df.groupby("patient")["age"].transform("min").to_numpy()
        birth = np.asarray(first.year)[df["patient"].to_numpy()] - np.floor(first_age)
        df["birth"] = birth
        df["truth_age"] = dates.year.to_numpy() - birth
        df["truth_sex"] = df["sex"]
        df["truth_view"] = df["view"]
        bits_opt = int(self.opts["bits"])
        bits = np.where(rng.random(n) < 0.9, 12, 10) if bits_opt == 0 else np.full(n, bits_opt)
        df["bits"] = bits
        df["gain"] = rng.uniform(0.85, 1.0, n)
        r = rng.random(n)
        raw = [
            RAW_VIEW[v][0] if x < 0.55 else (RAW_VIEW[v][1] if x < 0.65 else "nan")
            for v, x in zip(df["view"], r, strict=True)
        ]
        df["raw_view"] = raw
        df["method_projection"] = np.where(
            rng.random(n) < 0.9, "Manual review of DICOM fields", "resnet-50.t7"
        )
        df["modality"] = np.where(rng.random(n) < 0.92, "CR", "DX")
        df["manufacturer"] = np.where(
            rng.random(n) < 0.5, "PhilipsMedicalSystems", "ImagingDynamicsCompanyLtd"
        )
        df["aspect"] = np.where(rng.random(n) < 0.3, "['1', '1']", "None")
        df["resolution"] = np.array(["None", "0.143", "0.2", "0.148"], dtype=object)[rng.integers(0, 4, n)]
        df["tube"] = rng.integers(160, 500, n)
        df["exposure_mas"] = rng.integers(1, 12, n)
        df["exposure_time"] = rng.integers(5, 30, n)
        df["rel_exposure"] = np.round(rng.normal(0.5, 1.2, n), 2)
        df["missing_exposure"] = rng.random(n) < 0.3
        df["report_id"] = (4_000_000 + rng.choice(1_000_000, n_st, replace=False))[df["study_key"].to_numpy()]
        df["method_label"] = np.where(rng.random(n_st) < 0.25, "Physician", "RNN_model")[
            df["study_key"].to_numpy()
        ]
        self._study_text(df, rng)
        return df

    def _study_text(self, df: pd.DataFrame, rng: np.random.Generator) -> None:
        """Labels, localizations, CUIs and report per study (images of a study share them)."""
        lab = labels(df)
        first = df.drop_duplicates("study_key").index.to_numpy()
        per_study: dict[int, tuple[str, ...]] = {}
        for i in first:
            found = [f for f in TERMS if lab[f][i]]
            if not found:
                per_study[int(df.at[i, "study_key"])] = (
                    "['normal']",
                    "[]",
                    "[['normal']]",
                    "[]",
                    "[]",
                    " sin hallazg patolog .",
                )
                continue
            rng.shuffle(found)
            terms, cuis, stems, locs, sentences = [], [], [], [], []
            # A pneumothorax with an effusion on the same side is sometimes reported as one term.
            hydro = (
                "pneumothorax" in found
                and "pleural_effusion" in found
                and self._side(df, i, "pneumothorax") == self._side(df, i, "pleural_effusion")
                and rng.random() < 0.5
            )
            if hydro:
                found = [f for f in found if f != "pleural_effusion"]
            for f in found:
                names, codes, stem = TERMS[f]
                k = 0 if len(names) == 1 or rng.random() < 0.7 else 1
                term, code = names[k], codes[k]
                if hydro and f == "pneumothorax":
                    term, code, stem = HYDROPNEUMOTHORAX
                side = self._side(df, i, f)
                loc = {
                    "cardiomegaly": ["loc cardiac"],
                    "pleural_effusion": ["loc pleural", side],
                    "pneumothorax": [side, "loc apical"],
                    "edema": ["loc bilateral", "loc perihilar"],
                    "atelectasis": ["loc basal", side],
                    "scoliosis": ["loc column"],
                }.get(f, [side, "loc upper lobe" if df.at[i, "cons_upper"] else "loc basal"])
                terms.append(term)
                cuis.append(code)
                stems.append(stem)
                sentences.append([term, *loc])
                locs.extend(x for x in loc if x not in locs)
            if rng.random() < 0.35:
                for j in rng.choice(len(DISTRACTORS), size=int(rng.integers(1, 3)), replace=False):
                    term, code, stem = DISTRACTORS[int(j)]
                    terms.append(term)
                    cuis.append(code)
                    stems.append(stem)
                    sentences.append([term])
            written = [t if k == 0 or rng.random() >= 0.3 else " " + t for k, t in enumerate(terms)]
            if rng.random() < 0.04:
                written.insert(int(rng.integers(0, len(written) + 1)), "")
            per_study[int(df.at[i, "study_key"])] = (
                repr(written),
                repr(locs),
                repr(sentences),
                _numpy_list([c for c in cuis if c]),
                _numpy_list([LOC_CUIS[x] for x in locs]),
                " " + " . ".join(stems) + " .",
            )
        cols = ["labels", "localizations", "by_sentence", "label_cuis", "loc_cuis", "report"]
        table = [per_study[int(k)] for k in df["study_key"]]
        for c, values in zip(cols, zip(*table, strict=True), strict=True):
            df[c] = list(values)

    @staticmethod
    def _side(df: pd.DataFrame, i: int, finding: str) -> str:
        """The PadChest side term of a finding in row ``i``."""
        if finding in ("nodule", "mass"):
            return (
                "loc left"
                if df.at[i, f"{'nod' if finding == 'nodule' else 'mass'}_side"] > 0
                else "loc right"
            )
        pairs = {
            "pleural_effusion": ("eff_r", "eff_l"),
            "pneumothorax": ("ptx_r", "ptx_l"),
            "atelectasis": ("atel_r", "atel_l"),
            "consolidation": ("cons_r", "cons_l"),
            "pneumonia": ("cons_r", "cons_l"),
        }
        if finding not in pairs:
            return "loc bilateral"
        right, left = (df.at[i, c] >= POSITIVE for c in pairs[finding])
        return "loc bilateral" if right and left else ("loc left" if left else "loc right")

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        top = 2 ** int(row["bits"]) - 1
        values = np.rint(np.clip(img, 0.0, 1.0) * (top * float(row["gain"]))).astype(np.uint16)
        write_bytes(root, row["path"], png16(values))

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        rows = []
        for k, r in enumerate(plan.itertuples(index=False)):
            top = 2 ** int(r.bits) - 1
            wc, ww = (
                (f"{top // 2:.1f}", f"{top:.1f}")
                if rng.random() < 0.7
                else (str(int(top * rng.uniform(0.45, 0.55))), str(int(top * rng.uniform(0.5, 0.6))))
            )
            miss = bool(r.missing_exposure)
            rows.append(
                [
                    str(k),
                    r.image_id,
                    str(r.image_dir),
                    r.study_date,
                    r.study_id,
                    r.patient_id,
                    f"{r.birth:.1f}",
                    r.sex,
                    r.raw_view,
                    PROJECTION[r.view],
                    r.method_projection,
                    "No",
                    r.modality,
                    r.manufacturer,
                    "MONOCHROME2",
                    "0",
                    r.aspect,
                    r.resolution,
                    str(int(r.bits)),
                    wc,
                    ww,
                    str(self.size),
                    str(self.size),
                    "None" if miss else str(r.tube),
                    "None" if miss else str(r.exposure_mas),
                    "None" if miss else str(r.exposure_mas * 1000),
                    "None" if miss else str(r.exposure_time),
                    str(r.rel_exposure),
                    str(r.report_id),
                    r.report,
                    r.method_label,
                    r.labels,
                    r.localizations,
                    r.by_sentence,
                    r.label_cuis,
                    r.loc_cuis,
                ]
            )
        write_bytes(root, CSV_NAME, csv_text(COLUMNS, rows).encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        lab = labels(plan)
        lab["no_finding"] = with_no_finding(lab, tuple(TERMS))
        return truth_frame(plan, self.name, self.truth_findings, lab)

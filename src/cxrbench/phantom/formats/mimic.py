"""MIMIC-CXR-JPG 2.1.0 layout: ``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` plus the gzipped tables.

Tables: ``mimic-cxr-2.0.0-{chexpert,negbio}.csv.gz`` (one row per study, labels in alphabetical
order; values 1.0 / 0.0 / -1.0 / blank; the two labelers agree on positives and differ in which
negatives they write as 0.0), ``-metadata.csv.gz`` (one row per image; ``ViewPosition`` PA, AP,
LATERAL or LL, blank for ``missing_view_rate`` of the images, whose ``ViewCodeSequence_CodeMeaning``
still names the view), ``-split.csv.gz`` (train / validate / test by patient),
``mimic-cxr-2.1.0-test-set-labeled.csv`` (``study_id`` and labels with ``Airspace Opacity``, no
``subject_id``) and ``IMAGE_FILENAMES``. JPEGs are histogram-equalized and quality 95, like the real
ones. Supine AP films (drawn as such) have ``ViewPosition`` AP and orientation ``Recumbent``.
MIMIC-CXR-JPG carries no sex or age, so the truth has none either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.phantom.encode import equalize_hist, jpeg, to_uint8
from cxrbench.phantom.formats.base import (
    UNCERTAIN_RATE,
    Box,
    Option,
    PhantomFormat,
    assign_splits,
    csv_text,
    gzip_bytes,
    labels,
    truth_frame,
    with_no_finding,
    write_bytes,
)
from cxrbench.phantom.formats.chexpert import DEFAULT_ZERO, EXPLICIT_ZERO, OBSERVATIONS

LABEL_COLUMNS = sorted(OBSERVATIONS)  # the real files list the 14 labels alphabetically
METADATA_COLUMNS = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
TEST_LABEL_COLUMNS = sorted("Airspace Opacity" if c == "Lung Opacity" else c for c in OBSERVATIONS)


def _unique_ints(rng: np.random.Generator, n: int, low: int, high: int) -> np.ndarray:
    return low + rng.choice(high - low, size=n, replace=False)


class MIMIC(PhantomFormat):
    name = "mimic"
    truth_findings = tuple(f for f in OBSERVATIONS.values() if f is not None)
    default_views = {"AP": 0.4, "AP_SUPINE": 0.1, "PA": 0.35, "LATERAL": 0.15}
    images_per_patient = 3.0
    split_defaults = {"val": 0.1, "test": 0.1}
    options = (
        UNCERTAIN_RATE,
        Option(
            "missing_view_rate", 0.03, float, "share of images with a blank ViewPosition", low=0.0, high=1.0
        ),
    )

    def plan(self, cohort: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
        df = cohort.sort_values(["patient", "study", "image"]).reset_index(drop=True)
        n_pat = int(df["patient"].max()) + 1
        subject = _unique_ints(rng, n_pat, 10_000_000, 20_000_000)
        study_ids = _unique_ints(rng, int(df["study_key"].max()) + 1, 50_000_000, 60_000_000)
        groups = rng.integers(0, 2**32, size=(len(df), 5), dtype=np.uint64)
        df["dicom_id"] = ["-".join(f"{int(g):08x}" for g in row) for row in groups]
        df["subject_id"] = subject[df["patient"].to_numpy()]
        df["study_num"] = study_ids[df["study_key"].to_numpy()]
        df["path"] = [
            f"files/p{str(s)[:2]}/p{s}/s{st}/{d}.jpg"
            for s, st, d in zip(df["subject_id"], df["study_num"], df["dicom_id"], strict=True)
        ]
        df["image_id"] = df["dicom_id"]
        df["patient_id"] = df["subject_id"].astype(str)
        df["study_id"] = df["study_num"].astype(str)
        split_of = assign_splits(
            n_pat, rng, {"val": self.opts["val_fraction"], "test": self.opts["test_fraction"]}
        )
        df["split"] = split_of[df["patient"].to_numpy()]
        df["truth_view"] = np.where(df["view"] == "AP_SUPINE", "AP", df["view"])
        df["truth_sex"] = None
        df["truth_age"] = np.nan
        n = len(df)
        lat = df["view"].to_numpy() == "LATERAL"
        ll = lat & (rng.random(n) < 0.2)
        vp = np.where(lat, np.where(ll, "LL", "LATERAL"), df["truth_view"].to_numpy())
        df["ViewPosition"] = np.where(rng.random(n) < self.opts["missing_view_rate"], "", vp)
        df["ViewCode"] = np.select(
            [df["truth_view"] == "PA", df["truth_view"] == "AP", ll],
            ["postero-anterior", "antero-posterior", "left lateral"],
            "lateral",
        )
        orient = np.where(df["view"] == "AP_SUPINE", "Recumbent", "Erect")
        df["Orientation"] = np.where(rng.random(n) < 0.02, "", orient)
        portable = df.groupby("study_key")["view"].transform(lambda v: v.isin(["AP", "AP_SUPINE"]).any())
        df["Procedure"] = np.where(portable, "CHEST (PORTABLE AP)", "CHEST (PA AND LAT)")
        base = pd.Timestamp("2110-01-01") + pd.to_timedelta(rng.integers(0, 90 * 365, n_pat), unit="D")
        dates = base[df["patient"].to_numpy()] + pd.to_timedelta(np.floor(df["days"].to_numpy()), unit="D")
        df["StudyDate"] = dates.strftime("%Y%m%d")
        secs = rng.integers(0, 86400, int(df["study_key"].max()) + 1)[df["study_key"].to_numpy()]
        ms = rng.integers(0, 1000, int(df["study_key"].max()) + 1)[df["study_key"].to_numpy()]
        df["StudyTime"] = [
            f"{s // 3600:d}{(s % 3600) // 60:02d}{s % 60:02d}.{m:03d}".lstrip("0") or "0"
            for s, m in zip(secs, ms, strict=True)
        ]
        return df

    def write_image(
        self, root: Path, row: dict[str, Any], img: np.ndarray, boxes: dict[str, Box | None] | None
    ) -> None:
        write_bytes(root, row["path"], jpeg(equalize_hist(to_uint8(img)), quality=95))

    def _label_table(
        self,
        studies: pd.DataFrame,
        lab: dict[str, np.ndarray],
        rng: np.random.Generator,
        columns: list[str],
        rename: dict[str, str] | None = None,
        zero_rate: float | None = None,
    ) -> dict[str, np.ndarray]:
        rate = float(self.opts["uncertain_rate"])
        rename = rename or {}
        out = {}
        n = len(studies)
        for col in columns:
            finding = OBSERVATIONS[rename.get(col, col)]
            pos = lab[finding].astype(bool) if finding else np.zeros(n, dtype=bool)
            r1, r2 = rng.random(n), rng.random(n)
            p_zero = (
                zero_rate
                if zero_rate is not None
                else (0.03 if finding is None else EXPLICIT_ZERO.get(col, DEFAULT_ZERO))
            )
            vals = np.where(pos, "1.0", np.where(r1 < p_zero, "0.0", ""))
            if col == "No Finding":
                vals = np.where(pos, "1.0", "")
            elif rate > 0:
                vals = np.where(pos & (r2 < rate), "-1.0", np.where(~pos & (r2 < rate / 4), "-1.0", vals))
            out[col] = vals
        return out

    def finish(self, root: Path, plan: pd.DataFrame, rng: np.random.Generator) -> None:
        studies = plan.drop_duplicates("study_key").sort_values(["subject_id", "study_num"])
        lab = labels(studies)
        lab["no_finding"] = with_no_finding(lab, self.truth_findings[1:])
        for labeler in ("chexpert", "negbio"):
            vals = self._label_table(studies, lab, rng, LABEL_COLUMNS)
            rows = [
                [str(s), str(st)] + [vals[c][i] for c in LABEL_COLUMNS]
                for i, (s, st) in enumerate(zip(studies["subject_id"], studies["study_num"], strict=True))
            ]
            text = csv_text(["subject_id", "study_id"] + LABEL_COLUMNS, rows)
            write_bytes(root, f"mimic-cxr-2.0.0-{labeler}.csv.gz", gzip_bytes(text.encode()))
        meta = plan.sort_values(["subject_id", "study_num", "image"])
        rows = [
            [
                r.dicom_id,
                str(r.subject_id),
                str(r.study_num),
                r.Procedure,
                r.ViewPosition,
                str(self.size),
                str(self.size),
                r.StudyDate,
                r.StudyTime,
                r.Procedure,
                r.ViewCode,
                r.Orientation,
            ]
            for r in meta.itertuples(index=False)
        ]
        write_bytes(
            root, "mimic-cxr-2.0.0-metadata.csv.gz", gzip_bytes(csv_text(METADATA_COLUMNS, rows).encode())
        )
        names = {"train": "train", "val": "validate", "test": "test"}
        rows = [
            [r.dicom_id, str(r.study_num), str(r.subject_id), names[r.split]]
            for r in meta.itertuples(index=False)
        ]
        write_bytes(
            root,
            "mimic-cxr-2.0.0-split.csv.gz",
            gzip_bytes(csv_text(["dicom_id", "study_id", "subject_id", "split"], rows).encode()),
        )
        test = studies["split"].to_numpy() == "test"
        test_studies = studies[test]
        test_lab = {k: v[test] for k, v in lab.items()}
        rename = {"Airspace Opacity": "Lung Opacity"}
        vals = self._label_table(test_studies, test_lab, rng, TEST_LABEL_COLUMNS, rename, zero_rate=0.85)
        rows = [
            [str(st)] + [vals[c][i] for c in TEST_LABEL_COLUMNS]
            for i, st in enumerate(test_studies["study_num"])
        ]
        write_bytes(
            root,
            "mimic-cxr-2.1.0-test-set-labeled.csv",
            csv_text(["study_id"] + TEST_LABEL_COLUMNS, rows).encode(),
        )
        write_bytes(root, "IMAGE_FILENAMES", ("\n".join(sorted(plan["path"])) + "\n").encode())

    def truth(self, plan: pd.DataFrame) -> pd.DataFrame:
        lab = labels(plan)
        lab["no_finding"] = with_no_finding(lab, self.truth_findings[1:])
        return truth_frame(plan, self.name, self.truth_findings, lab)

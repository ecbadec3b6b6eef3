"""Synthetic cohorts: patients with studies, images, views, sex, age and findings.

A finding is a *severity* in [0, 1] per study (per side where it has one). Severities of at least
:data:`POSITIVE` (grade 3 or 4 on the 0-4 scale) are labelled positive; weaker ones (grades 1-2,
drawn faintly) only occur when ``mild_rate`` > 0 and are labelled negative, as in graded hospital
data. Co-occurrence follows clinical sense, with the requested marginal prevalence kept:

- cardiomegaly, nodule, mass and scoliosis are properties of the patient: they persist across
  studies (nodules and masses in the same place);
- edema is 3x as likely with cardiomegaly; effusion 3x as likely with edema and 1.5x with
  cardiomegaly (and then mostly bilateral); atelectasis 2.5x as likely with an effusion (same side);
- pneumonia draws a consolidation-like opacity; half of the pneumonias also carry the
  ``consolidation`` label; other consolidations occur without pneumonia;
- ``no_finding`` means no positive label of the format's label set.

Deterministic: the same arguments and generator state give the same cohort.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.validation import closest
from cxrbench.phantom.anatomy import SEVERITY_COLUMNS

# Findings the phantom draws, by canonical name (cxrbench.findings).
FINDINGS: tuple[str, ...] = (
    "cardiomegaly",
    "pleural_effusion",
    "pneumothorax",
    "nodule",
    "mass",
    "consolidation",
    "pneumonia",
    "atelectasis",
    "edema",
    "scoliosis",
)
DEFAULT_PREVALENCE: dict[str, float] = {
    "cardiomegaly": 0.15,
    "pleural_effusion": 0.15,
    "pneumothorax": 0.06,
    "nodule": 0.08,
    "mass": 0.05,
    "consolidation": 0.08,
    "pneumonia": 0.08,
    "atelectasis": 0.10,
    "edema": 0.08,
    "scoliosis": 0.05,
}
POSITIVE = 0.45  # severity from which a finding is labelled positive (grade 3)
_MARGIN = 0.005  # sampled severities keep this far from POSITIVE (float32 storage must not flip labels)
GRADE_EDGES = (0.25, 0.45, 0.7)  # severity -> grade 1 | 2 | 3 | 4
VIEWS: tuple[str, ...] = ("PA", "AP", "AP_SUPINE", "LATERAL")
SIDED: dict[str, tuple[str, str]] = {
    "pleural_effusion": ("eff_r", "eff_l"),
    "pneumothorax": ("ptx_r", "ptx_l"),
    "consolidation": ("cons_r", "cons_l"),
    "atelectasis": ("atel_r", "atel_l"),
}


def grade(severity: np.ndarray) -> np.ndarray:
    """0-4 grade of severities (0 absent, 1-2 mild, 3 moderate, 4 severe), int8."""
    s = np.asarray(severity, dtype=np.float64)
    return np.where(s <= 0, 0, 1 + np.searchsorted(np.asarray(GRADE_EDGES), s, side="right")).astype(np.int8)


def check_prevalence(
    prevalence: dict[str, float] | None, allowed: tuple[str, ...], where: str = "--prevalence"
) -> dict[str, float]:
    """Defaults for ``allowed`` overlaid with ``prevalence``; unknown names or values out of [0, 1] raise."""
    out = {f: (DEFAULT_PREVALENCE[f] if f in allowed else 0.0) for f in FINDINGS}
    for name, value in (prevalence or {}).items():
        if name not in allowed:
            hint = closest(name, allowed)
            raise InputError(
                f"unknown or unsupported finding {name!r} for this format",
                where=where,
                fix=(f"did you mean {hint!r}? " if hint else "") + f"use one of {', '.join(allowed)}",
            )
        try:
            p = float(value)
        except (TypeError, ValueError):
            raise InputError(
                f"prevalence of {name!r} is {value!r}, not a number",
                where=where,
                fix="give a number between 0 and 1",
            ) from None
        if not 0.0 <= p <= 1.0:
            raise InputError(
                f"prevalence of {name!r} is {p}, outside [0, 1]",
                where=where,
                fix="give a number between 0 and 1",
            )
        out[name] = p
    return out


def check_views(views: dict[str, float], where: str = "--views") -> dict[str, float]:
    """Normalized view shares; unknown views, negative shares or no frontal view raise."""
    out: dict[str, float] = {}
    for name, value in views.items():
        if name not in VIEWS:
            hint = closest(name, VIEWS)
            raise InputError(
                f"unknown view {name!r}",
                where=where,
                fix=(f"did you mean {hint!r}? " if hint else "") + f"use {', '.join(VIEWS)}",
            )
        share = float(value)
        if share < 0:
            raise InputError(f"view share of {name!r} is negative", where=where, fix="give shares >= 0")
        out[name] = share
    frontal = sum(v for k, v in out.items() if k != "LATERAL")
    if frontal <= 0:
        raise InputError(
            "no frontal view has a positive share",
            where=where,
            fix="give PA, AP or AP_SUPINE a share > 0 (every study has a frontal image)",
        )
    total = sum(out.values())
    if out.get("LATERAL", 0.0) / total > 0.5:
        raise InputError(
            "lateral share above 0.5",
            where=where,
            fix="at most one lateral per study: keep LATERAL at or below half of all images",
        )
    return {k: v / total for k, v in out.items()}


def _calibrated(rng: np.random.Generator, p: float, multiplier: np.ndarray) -> np.ndarray:
    """Bernoulli draws with odds scaled by ``multiplier`` whose mean probability is ``p``."""
    if p <= 0:
        return np.zeros(len(multiplier), dtype=bool)
    q0 = p / max(float(multiplier.mean()), 1e-12)
    return rng.random(len(multiplier)) < np.clip(q0 * multiplier, 0.0, 1.0)


def _severity(rng: np.random.Generator, present: np.ndarray, mild: np.ndarray) -> np.ndarray:
    """Severity per row: positive rows in [POSITIVE, 1], mild rows in [0.1, POSITIVE), else 0."""
    n = len(present)
    sev = np.zeros(n)
    sev[present] = rng.uniform(POSITIVE + _MARGIN, 1.0, int(present.sum()))
    only_mild = mild & ~present
    sev[only_mild] = rng.uniform(0.1, POSITIVE - _MARGIN, int(only_mild.sum()))
    return sev


def _sides(rng: np.random.Generator, n: int, p_left: float, p_both: float) -> tuple[np.ndarray, np.ndarray]:
    """(right, left) booleans: left only with p_left, both with p_both, else right only."""
    r = rng.random(n)
    both = r < p_both
    left = both | ((r >= p_both) & (r < p_both + p_left))
    right = both | ~left
    return right, left


def sample_cohort(
    n_patients: int,
    rng: np.random.Generator,
    *,
    prevalence: dict[str, float] | None = None,
    views: dict[str, float] | None = None,
    images_per_patient: float = 2.5,
    mild_rate: float = 0.0,
    allowed: tuple[str, ...] = FINDINGS,
    one_image_per_patient: bool = False,
    one_image_per_study: bool = False,
) -> pd.DataFrame:
    """One row per image of a synthetic cohort.

    Columns: ``patient`` (0..n_patients-1), ``study`` (index within the patient, chronological),
    ``study_key`` (global study index), ``image`` (index within the study; the frontal is 0),
    ``view``, ``female`` (0/1), ``sex`` (M/F), ``age`` (years, float), ``days`` (since the
    patient's first study), ``nod_side``/``mass_side`` (-1 right, +1 left), ``cons_upper`` (1: upper
    zone opacity), the severity columns of :mod:`anatomy` (``cm``, ``eff_r``, ...),
    ``pneumonia`` and ``consolidation_label`` (0/1 clinical labels) and ``label_<finding>`` (0/1,
    severity >= POSITIVE) for every finding in FINDINGS.
    """
    if n_patients < 1:
        raise InputError(f"number of patients is {n_patients}", where="--patients", fix="give at least 1")
    if not 1.0 <= images_per_patient <= 100:
        raise InputError(
            f"images per patient is {images_per_patient}",
            where="--images-per-patient",
            fix="give a mean between 1 and 100",
        )
    if not 0.0 <= mild_rate <= 1.0:
        raise InputError(f"mild_rate is {mild_rate}", where="mild_rate", fix="give a number in [0, 1]")
    prev = check_prevalence(prevalence, allowed)
    shares = check_views(views or {"PA": 0.6, "AP": 0.25, "LATERAL": 0.15})
    lat = shares.get("LATERAL", 0.0)
    frontal_names = [v for v in VIEWS if v != "LATERAL" and shares.get(v, 0.0) > 0]
    frontal_p = np.array([shares[v] for v in frontal_names])
    frontal_p /= frontal_p.sum()
    p_lat = 0.0 if one_image_per_study or one_image_per_patient else lat / (1.0 - lat)

    # Patients and their studies.
    if one_image_per_patient:
        n_studies = np.ones(n_patients, dtype=np.int64)
    else:
        per_patient = images_per_patient / (1.0 + p_lat)
        n_studies = 1 + rng.poisson(max(per_patient - 1.0, 0.0), n_patients)
    female_p = (rng.random(n_patients) < 0.45).astype(np.int64)
    base_age = np.clip(np.round(rng.normal(58, 17, n_patients)), 18, 95)
    patient = np.repeat(np.arange(n_patients), n_studies)
    n_st = len(patient)
    study = np.concatenate([np.arange(k) for k in n_studies])
    gaps = rng.exponential(120.0, n_st) * (study > 0)
    days = np.zeros(n_st)
    starts = np.concatenate([[0], np.cumsum(n_studies)[:-1]])
    for s0, k in zip(starts, n_studies, strict=True):
        days[s0 : s0 + k] = np.cumsum(gaps[s0 : s0 + k])
    age = base_age[patient] + days / 365.25

    # Patient-level findings (persistent) and per-study findings (acute).
    def mild_mask(n: int) -> np.ndarray:
        return rng.random(n) < mild_rate

    pat_cm = rng.random(n_patients) < prev["cardiomegaly"]
    pat_cm_sev = _severity(rng, pat_cm, mild_mask(n_patients))
    cm_sev = np.clip(pat_cm_sev[patient] + rng.normal(0, 0.03, n_st) * (pat_cm_sev[patient] > 0), 0, 1)
    cm_sev = np.where(
        pat_cm[patient], np.maximum(cm_sev, POSITIVE + _MARGIN), np.minimum(cm_sev, POSITIVE - _MARGIN)
    )
    cm_sev = np.where(pat_cm_sev[patient] > 0, cm_sev, 0.0)
    cm = cm_sev >= POSITIVE
    sev: dict[str, np.ndarray] = {"cm": cm_sev}
    for name, key in (("nodule", "nodule"), ("mass", "mass"), ("scoliosis", "scoliosis")):
        present = rng.random(n_patients) < prev[name]
        sev[key] = _severity(rng, present, np.zeros(n_patients, dtype=bool))[patient]

    edema = _calibrated(rng, prev["edema"], np.where(cm, 3.0, 1.0))
    sev["edema"] = _severity(rng, edema, mild_mask(n_st))
    eff = _calibrated(rng, prev["pleural_effusion"], np.where(edema, 3.0, 1.0) * np.where(cm, 1.5, 1.0))
    r, left = _sides(rng, n_st, 0.4, 0.2)
    rb, lb = _sides(rng, n_st, 0.2, 0.6)
    eff_r, eff_l = np.where(edema, rb, r) & eff, np.where(edema, lb, left) & eff
    sev["eff_r"] = _severity(rng, eff_r, mild_mask(n_st))
    sev["eff_l"] = _severity(rng, eff_l, mild_mask(n_st))

    pneumonia = rng.random(n_st) < prev["pneumonia"]
    p_pn = prev["pneumonia"]
    q_cons = (
        max(0.0, (prev["consolidation"] - 0.5 * p_pn) / max(1.0 - p_pn, 1e-9))
        if "pneumonia" in allowed
        else prev["consolidation"]
    )
    cons_only = ~pneumonia & (rng.random(n_st) < q_cons)
    cons_label = cons_only | (pneumonia & (rng.random(n_st) < 0.5))
    opacity = pneumonia | cons_only
    r, left = _sides(rng, n_st, 0.35, 0.15)
    sev["cons_r"] = _severity(rng, opacity & r, mild_mask(n_st))
    sev["cons_l"] = _severity(rng, opacity & left, mild_mask(n_st))

    atel = _calibrated(rng, prev["atelectasis"], np.where(eff, 2.5, 1.0))
    r, left = _sides(rng, n_st, 0.5, 0.1)
    r = np.where(eff, eff_r | (~eff_l & r), r)
    left = np.where(eff, eff_l | (~eff_r & left), left)
    sev["atel_r"] = _severity(rng, atel & r, mild_mask(n_st))
    sev["atel_l"] = _severity(rng, atel & left, mild_mask(n_st))
    ptx = rng.random(n_st) < prev["pneumothorax"]
    r, left = _sides(rng, n_st, 0.5, 0.0)
    sev["ptx_r"] = _severity(rng, ptx & r, np.zeros(n_st, dtype=bool))
    sev["ptx_l"] = _severity(rng, ptx & left, np.zeros(n_st, dtype=bool))

    studies = pd.DataFrame({"patient": patient, "study": study, "days": days, "age": age})
    # Where lesions and opacities sit (text and boxes of some formats need it before drawing).
    studies["nod_side"] = rng.choice([-1.0, 1.0], n_patients)[patient]
    studies["mass_side"] = rng.choice([-1.0, 1.0], n_patients)[patient]
    studies["cons_upper"] = (rng.random(n_st) < 0.35).astype(np.int8)
    studies["study_key"] = np.arange(n_st)
    for col in SEVERITY_COLUMNS:
        studies[col] = sev[col].astype(np.float32)
    studies["pneumonia"] = pneumonia.astype(np.int8)
    studies["consolidation_label"] = cons_label.astype(np.int8)

    # Images: one frontal per study, plus a lateral with probability p_lat.
    frontal_view = np.array(frontal_names, dtype=object)[rng.choice(len(frontal_names), n_st, p=frontal_p)]
    has_lat = rng.random(n_st) < p_lat
    rows = np.repeat(np.arange(n_st), 1 + has_lat)
    images = studies.iloc[rows].reset_index(drop=True)
    images["image"] = np.concatenate([np.arange(1 + h) for h in has_lat])
    images["view"] = np.where(images["image"].to_numpy() == 0, frontal_view[rows], "LATERAL")
    images["female"] = female_p[images["patient"].to_numpy()].astype(np.int8)
    images["sex"] = np.where(images["female"].to_numpy() == 1, "F", "M")
    for f, lab in study_labels(images).items():
        images[f"label_{f}"] = lab
    return images


def study_labels(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """0/1 labels (int8) of every finding in FINDINGS from severities and clinical flags."""
    pos = {c: df[c].to_numpy(dtype=np.float64) >= POSITIVE for c in SEVERITY_COLUMNS}
    out = {
        "cardiomegaly": pos["cm"],
        "pleural_effusion": pos["eff_r"] | pos["eff_l"],
        "pneumothorax": pos["ptx_r"] | pos["ptx_l"],
        "nodule": pos["nodule"],
        "mass": pos["mass"],
        "consolidation": df["consolidation_label"].to_numpy() == 1,
        "pneumonia": df["pneumonia"].to_numpy() == 1,
        "atelectasis": pos["atel_r"] | pos["atel_l"],
        "edema": pos["edema"],
        "scoliosis": pos["scoliosis"],
    }
    return {k: v.astype(np.int8) for k, v in out.items()}

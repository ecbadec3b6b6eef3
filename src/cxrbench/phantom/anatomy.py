"""Per-image anatomy and finding geometry: one row of numbers per radiograph.

Coordinates are the body frame of the renderer: ``u`` runs from -1 (image left, the patient's right on
a frontal view, anterior on a lateral) to +1, ``v`` from -1 (top) to +1 (bottom); the image maps to
``u, v`` in [-1, 1] before the per-image scale, rotation and shift. Lengths are in these units (the
half-width of the image is 1).

Finding severities live in [0, 1] (0 = absent). They come from the cohort; this module turns them
into geometry (where the nodule is, how high the effusion rises) and applies their side effects on
anatomy (atelectasis pulls the diaphragm up and the mediastinum over; cardiomegaly sets the
cardiothoracic ratio). Everything a patient keeps between studies (body build, rib spacing, nodule
and mass position) is drawn once per patient.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

# Severity columns the cohort provides (0 absent .. 1 severe); _r/_l = the patient's right/left.
SEVERITY_COLUMNS: tuple[str, ...] = (
    "cm",
    "eff_r",
    "eff_l",
    "ptx_r",
    "ptx_l",
    "cons_r",
    "cons_l",
    "atel_r",
    "atel_l",
    "edema",
    "nodule",
    "mass",
    "scoliosis",
)

# Geometry columns with their neutral (average adult, PA, no finding) values.
NEUTRAL: dict[str, float] = {
    "scale": 1.0,
    "rot": 0.0,
    "tx": 0.0,
    "ty": 0.0,
    "body_w": 0.9,
    "thorax_w": 0.76,
    "apex_v": -0.70,
    "dome_r": 0.30,
    "dome_l": 0.35,
    "med_w": 0.10,
    "med_shift": 0.0,
    "ctr": 0.42,
    "heart_tilt": 0.55,
    "heart_ratio": 0.78,
    "hilum_v": -0.05,
    "rib_sp": 0.105,
    "rib_phase": 0.0,
    "rib_rise": 0.50,
    "rib_curve": 0.90,
    "clav_v": -0.66,
    "clav_tilt": 0.22,
    "spine_amp": 0.0,
    "spine_phase": 0.0,
    "vessel_n": 8.0,
    "vessel_phase": 0.0,
    "vessel_amp": 0.15,
    "breast": 0.0,
    "exposure": 0.0,
    "nod_u": 0.5,
    "nod_v": -0.2,
    "nod_r": 0.05,
    "mass_u": -0.5,
    "mass_v": 0.0,
    "mass_r": 0.12,
    "cons_ur": 0.45,
    "cons_vr": 0.15,
    "cons_ul": 0.45,
    "cons_vl": 0.15,
    "cons_size": 0.22,
    "atel_vr": 0.18,
    "atel_vl": 0.2,
    "atel_kind": 0.0,
    "atel_tilt": 0.1,
    "lat_u": 0.0,
}

VIEWS_RENDERED: tuple[str, ...] = ("PA", "AP", "AP_SUPINE", "LATERAL")

# Cardiothoracic ratio: normal PA hearts span [0.38, 0.45]; a finding of severity s has
# CTR = 0.44 + 0.22 s, so the positive range (s >= 0.45) starts at 0.54. AP magnifies by 1.08.
CTR_NORMAL = (0.38, 0.45)
AP_MAGNIFICATION = 1.08


def ctr_for_severity(severity: np.ndarray) -> np.ndarray:
    """Cardiothoracic ratio (PA) of a cardiomegaly of the given severity (0 < s <= 1)."""
    return 0.44 + 0.22 * np.asarray(severity, dtype=np.float64)


def neutral_params(n: int = 1, view: str = "PA", seed: int = 0, **overrides: float) -> pd.DataFrame:
    """``n`` identical average-anatomy rows (no finding) for tests and figures.

    ``overrides`` set any geometry or severity column, e.g. ``neutral_params(2, cm=0.8)``.
    """
    data: dict[str, object] = {k: np.full(n, v, dtype=np.float32) for k, v in NEUTRAL.items()}
    for col in SEVERITY_COLUMNS:
        data[col] = np.zeros(n, dtype=np.float32)
    data["view"] = np.array([view] * n, dtype=object)
    data["female"] = np.zeros(n, dtype=np.float32)
    data["seed"] = np.arange(seed, seed + n, dtype=np.uint64)
    df = pd.DataFrame(data)
    for key, value in overrides.items():
        if key not in df.columns:
            raise KeyError(f"unknown phantom parameter {key!r}")
        df[key] = value
    _apply_finding_effects(df)
    return df


def sample_params(images: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the anatomy of every image.

    images: one row per image with ``patient`` (int index), ``view`` (one of VIEWS_RENDERED),
    ``female`` (0/1), ``age`` (years) and the SEVERITY_COLUMNS. Returns a frame aligned with
    ``images`` holding the geometry columns, the severities, ``view``, ``female`` and ``seed``
    (the image's private noise stream).
    """
    n = len(images)
    patient = images["patient"].to_numpy()
    n_pat = int(patient.max()) + 1 if n else 0
    female = images["female"].to_numpy(dtype=np.float32)
    view = images["view"].to_numpy()
    ap = np.isin(view, ("AP", "AP_SUPINE"))

    # Per patient: build and the positions of persistent lesions.
    build = rng.normal(0.0, 1.0, n_pat)
    pat = {
        "thorax_w": 0.76 + 0.025 * build + rng.normal(0, 0.012, n_pat),
        "body_w": 0.90 + 0.03 * build,
        "apex_v": rng.normal(-0.70, 0.02, n_pat),
        "ctr": rng.uniform(*CTR_NORMAL, n_pat),
        "heart_tilt": rng.normal(0.55, 0.08, n_pat),
        "heart_ratio": rng.uniform(0.72, 0.84, n_pat),
        "rib_sp": rng.normal(0.105, 0.006, n_pat),
        "rib_rise": rng.normal(0.50, 0.04, n_pat),
        "rib_curve": rng.normal(0.90, 0.06, n_pat),
        "clav_tilt": rng.normal(0.22, 0.04, n_pat),
        "med_w": rng.normal(0.10, 0.008, n_pat),
        "breast": rng.uniform(0.05, 0.11, n_pat),
        "spine_phase": rng.uniform(-0.5, 0.5, n_pat),
        "spine_sign": rng.choice([-1.0, 1.0], n_pat),
        "nod_side": rng.choice([-1.0, 1.0], n_pat),
        "nod_au": rng.uniform(0.3, 0.62, n_pat),
        "nod_v": rng.uniform(-0.45, 0.12, n_pat),
        "nod_r": rng.uniform(0.04, 0.06, n_pat),
        "mass_side": rng.choice([-1.0, 1.0], n_pat),
        "mass_au": rng.uniform(0.34, 0.55, n_pat),
        "mass_v": rng.uniform(-0.4, 0.05, n_pat),
        "mass_r": rng.uniform(0.10, 0.15, n_pat),
    }
    out: dict[str, np.ndarray] = {k: v[patient] for k, v in pat.items() if k in NEUTRAL}

    # Per image: positioning, inspiration, exposure, textures.
    out["scale"] = rng.normal(1.0, 0.035, n)
    out["rot"] = rng.normal(0.0, 0.035, n)
    out["tx"] = rng.normal(0.0, 0.025, n)
    out["ty"] = rng.normal(0.0, 0.025, n)
    inspiration = rng.normal(0.0, 0.04, n) - 0.07 * ap  # AP films are usually taken in shallower inspiration
    out["dome_r"] = 0.30 + inspiration
    out["dome_l"] = out["dome_r"] + rng.normal(0.05, 0.015, n)
    out["hilum_v"] = rng.normal(-0.05, 0.02, n)
    out["rib_phase"] = rng.uniform(0, 1, n)
    out["clav_v"] = rng.normal(-0.66, 0.02, n) - 0.05 * ap  # AP: clavicles project higher
    out["vessel_n"] = rng.integers(7, 10, n).astype(np.float64)
    out["vessel_phase"] = rng.uniform(0, 2 * np.pi, n)
    out["vessel_amp"] = rng.normal(0.15, 0.02, n)
    out["exposure"] = rng.normal(0.0, 0.025, n)
    out["breast"] = out["breast"] * female
    out["med_shift"] = rng.normal(0.0, 0.006, n)
    out["lat_u"] = rng.uniform(-0.35, 0.3, n)  # antero-posterior depth of lesions on laterals

    sev = {c: images[c].to_numpy(dtype=np.float64) for c in SEVERITY_COLUMNS}
    # Lesions: persistent per patient, on the side drawn for the patient.
    nod_side = images["nod_side"].to_numpy() if "nod_side" in images else pat["nod_side"][patient]
    mass_side = images["mass_side"].to_numpy() if "mass_side" in images else pat["mass_side"][patient]
    out["nod_u"] = nod_side * pat["nod_au"][patient]
    out["nod_v"] = pat["nod_v"][patient]
    out["nod_r"] = pat["nod_r"][patient]
    out["mass_u"] = mass_side * pat["mass_au"][patient]
    out["mass_v"] = pat["mass_v"][patient]
    out["mass_r"] = pat["mass_r"][patient]
    # Consolidation zones (per side): lower zones more often than upper.
    upper = images["cons_upper"].to_numpy() == 1 if "cons_upper" in images else rng.random(n) < 0.35
    for s in ("r", "l"):
        out[f"cons_v{s}"] = np.where(upper, rng.uniform(-0.45, -0.2, n), rng.uniform(0.0, 0.22, n))
        out[f"cons_u{s}"] = rng.uniform(0.38, 0.55, n)
        out[f"atel_v{s}"] = rng.uniform(0.05, 0.2, n)
    out["cons_size"] = rng.uniform(0.17, 0.26, n)
    out["atel_kind"] = (rng.random(n) < 0.35).astype(np.float64)  # 0 plate-like, 1 wedge
    out["atel_tilt"] = rng.normal(0.1, 0.08, n)
    out["spine_amp"] = sev["scoliosis"] * 0.1 * pat["spine_sign"][patient]
    out["spine_phase"] = pat["spine_phase"][patient]

    df = pd.DataFrame({k: np.asarray(v, dtype=np.float32) for k, v in out.items()})
    for c in SEVERITY_COLUMNS:
        df[c] = sev[c].astype(np.float32)
    df["view"] = view.astype(object)
    df["female"] = female
    df["seed"] = rng.integers(0, 2**63 - 1, n, dtype=np.int64).astype(np.uint64)
    _apply_finding_effects(df)
    return df


def _apply_finding_effects(df: pd.DataFrame) -> None:
    """Anatomy changes that a finding causes: heart size, volume loss (in place)."""
    cm = df["cm"].to_numpy(dtype=np.float64)
    ctr = np.where(cm > 0, ctr_for_severity(cm), df["ctr"].to_numpy(dtype=np.float64))
    df["ctr"] = ctr.astype(np.float32)
    # Atelectasis: volume loss lifts the hemidiaphragm and pulls the mediastinum to that side.
    df["dome_r"] = (df["dome_r"] - 0.07 * df["atel_r"]).astype(np.float32)
    df["dome_l"] = (df["dome_l"] - 0.07 * df["atel_l"]).astype(np.float32)
    df["med_shift"] = (df["med_shift"] + 0.035 * (df["atel_l"] - df["atel_r"])).astype(np.float32)


def heart_geometry(
    ctr: np.ndarray,
    thorax_w: np.ndarray,
    tilt: np.ndarray,
    ratio: np.ndarray,
    magnification: np.ndarray | float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Semi-axes (a, b) of the tilted heart ellipse whose horizontal half-extent is ctr * thorax_w."""
    ext = ctr * thorax_w * magnification
    a = ext / np.sqrt(np.cos(tilt) ** 2 + (ratio * np.sin(tilt)) ** 2)
    return a, a * ratio

"""Patient-level splits: official ones, carved ones, deterministic hash splits; leakage check.

Every split is by patient, never by image. A patient's place is a pure function of
``(split_seed, patient_id)``: ``u`` = the top 53 bits of ``blake2b(f"{seed}:{patient_id}")`` / 2**53,
in [0, 1), so the same patient lands in the same split on every machine, whatever the row order or
the other patients.

- ``hash`` mode: ``u < train`` -> train, ``u < train + val`` -> val, else test (default 70/10/20).
- ``official`` mode: the release's split; a split the release lacks (NIH and VinDr have no val,
  CheXpert without CheXlocalize has no test) is carved by patient from the official train split with
  the same ``u`` and the fractions renormalized over train and the missing splits (val = 10/80 of the
  train patients by default). A release without any split (PadChest, VinBigData) gets the hash split.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.index.schema import SPLITS, check_no_leakage

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)

__all__ = [
    "DEFAULT_FRACTIONS",
    "assign_splits",
    "check_leakage",
    "hash_split",
    "parse_fractions",
    "unit_hash",
]


def parse_fractions(value: str | Sequence[float]) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` (or percentages ``70,10,20``) -> a (train, val, test) tuple summing to 1."""
    try:
        parts = [float(x) for x in (value.split(",") if isinstance(value, str) else value)]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p < 0 for p in parts) or sum(parts) <= 0:
        raise InputError(
            f"--split-fractions got {value!r}",
            fix="give three non-negative numbers TRAIN,VAL,TEST, e.g. 0.7,0.1,0.2 or 80,0,20",
        )
    total = sum(parts)
    if parts[0] == 0:
        raise InputError(
            f"--split-fractions got {value!r}: the train fraction is 0", fix="give train a share"
        )
    return tuple(p / total for p in parts)  # type: ignore[return-value]


def unit_hash(keys: Sequence[str] | np.ndarray, seed: int = 0) -> np.ndarray:
    """A float64 in [0, 1) per key: the top 53 bits of blake2b-64(``f"{seed}:{key}"``) / 2**53.

    Stable across platforms, Python and numpy versions (no ``hash()``, no pandas hashing).
    """
    base = hashlib.blake2b(f"{int(seed)}:".encode(), digest_size=8)
    digests = []
    for k in keys:  # copy() of the seeded state: ~2x faster than hashing the prefix again
        h = base.copy()
        h.update(str(k).encode("utf-8"))
        digests.append(h.digest())
    words = np.frombuffer(b"".join(digests), dtype=">u8").astype(np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) / 2.0**53


def _by_patient(patient_ids: pd.Series, seed: int) -> np.ndarray:
    codes, uniques = pd.factorize(patient_ids.astype(str), sort=False)
    return unit_hash(np.asarray(uniques, dtype=object), seed)[codes]


def _cut(u: np.ndarray, names: Sequence[str], fractions: Sequence[float]) -> np.ndarray:
    total = float(sum(fractions))
    edges = np.cumsum(np.asarray(fractions, dtype=np.float64) / total)[:-1]
    idx = np.searchsorted(edges, u, side="right")
    return np.asarray(names, dtype=object)[idx]


def hash_split(
    patient_ids: pd.Series, seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS
) -> np.ndarray:
    """train/val/test per row from the patient's hash (see the module docstring)."""
    return _cut(_by_patient(patient_ids, seed), SPLITS, fractions)


def assign_splits(
    patient_ids: pd.Series,
    official: pd.Series | None = None,
    mode: str = "official",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split per row and a description for the report (method, seed, fractions, carved splits).

    ``official`` holds train/val/test or missing per row; it is used in ``official`` mode when it
    has any value (a row without one is an error there). Otherwise the hash split applies.
    """
    info: dict[str, Any] = {"seed": int(seed), "fractions": [round(f, 6) for f in fractions]}
    has_official = official is not None and official.notna().any()
    if mode == "hash" or not has_official:
        info["method"] = "hash" if mode == "hash" else "hash (the release has no official split)"
        return hash_split(patient_ids, seed, fractions), info
    off = official.to_numpy(dtype=object)
    missing_rows = pd.isna(off)
    if missing_rows.any():
        row = int(np.flatnonzero(missing_rows)[0])
        raise InputError(
            f"image at row {row} has no official split",
            where="official split",
            fix="use --splits hash, or complete the split file",
        )
    present = [s for s in SPLITS if (off == s).any()]
    if "train" not in present:
        info["method"] = "official"
        return off, info
    absent = [s for s in SPLITS if s not in present]
    info["method"] = "official" + (f" + {'/'.join(absent)} carved by patient from train" if absent else "")
    if absent:
        names = ["train", *absent]
        shares = [fractions[SPLITS.index(n)] for n in names]
        if sum(shares[1:]) > 0:
            train = off == "train"
            u = _by_patient(patient_ids[train], seed)
            # the same u as the hash split, rescaled: a patient keeps its relative position
            off = off.copy()
            off[train] = _cut(u, names, shares)
        info["carved"] = absent
    return off, info


def leaking_patients(patient_ids: pd.Series, splits: pd.Series) -> int:
    """How many patients have images in more than one split (vectorized; no Python per patient)."""
    p, _ = pd.factorize(patient_ids, sort=False)
    s, _ = pd.factorize(splits, sort=False)
    pairs = np.unique(p.astype(np.int64) * 4 + s)
    return int(np.bincount(pairs // 4).__gt__(1).sum())


def check_leakage(df: pd.DataFrame, where: str = "index") -> None:
    """Raise InputError naming a patient found in two splits (via :func:`schema.check_no_leakage`,
    which is only run when the vectorized count finds a leak, since it loops per patient)."""
    if leaking_patients(df["patient_id"], df["split"]):
        check_no_leakage(df, where=where)

"""Patient-level splits: official ones, carved ones, deterministic hash splits; leakage check.

Every split is by patient, never by image. A patient's place is a pure function of
``(split_seed, patient_id)``: ``u`` = the top 53 bits of ``blake2b(f"{seed}:{patient_id}")`` / 2**53,
in [0, 1), so the same patient lands in the same split on every machine, whatever the row order or
the other patients.

- ``hash`` mode: ``u < train`` -> train, ``u < train + val`` -> val, else test (default 70/10/20).
- ``stratified`` mode: the same shares, but every finding's positive patients are balanced across
  the splits (multi-label iterative stratification over patients, Sechidis et al. 2011): findings are
  taken rarest first; a finding's not yet placed positive patients (in ``u`` order) are shared out so
  that each split's remaining demand for that finding is met as closely as possible (first, when
  there are enough of them, one to each split that holds no positive of the finding yet, so no
  split is left without positives); patients with no positive label fill the splits' remaining
  sizes last.
  Deterministic from ``split_seed``,
  independent of the row order, vectorized per finding.
- ``official`` mode: the release's split; a split the release lacks (NIH and VinDr have no val,
  CheXpert without CheXlocalize has no test) is carved by patient from the official train split
  (``carve``: ``stratified``, the default, or ``hash``) with the fractions renormalized over train and
  the missing splits (val = 10/80 of the train patients by default). A release without any split
  (PadChest, VinBigData) gets the ``carve`` method's split of everything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError, spell
from cxrbench.index.schema import SPLITS, check_no_leakage

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.1, 0.2)

__all__ = [
    "DEFAULT_FRACTIONS",
    "assign_splits",
    "check_leakage",
    "hash_split",
    "parse_fractions",
    "stratified_split",
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
            f"{spell('--split-fractions')} got {value!r}",
            fix="give three non-negative numbers TRAIN,VAL,TEST, e.g. 0.7,0.1,0.2 or 80,0,20",
        )
    total = sum(parts)
    if parts[0] == 0:
        raise InputError(
            f"{spell('--split-fractions')} got {value!r}: the train fraction is 0", fix="give train a share"
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


def stratified_split(patient_ids: pd.Series, labels: np.ndarray | None, seed: int = 0,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS,
                     names: Sequence[str] = SPLITS) -> np.ndarray:
    """Split name per row: patients shared out by multi-label iterative stratification (see the
    module docstring). ``labels`` is float (n_rows, K) with 1 = positive (NaN/0 otherwise); a
    patient is positive for a finding when any of its images is. Splits with a zero share get none."""
    codes, uniques = pd.factorize(patient_ids.astype(str), sort=False)
    n_pat = len(uniques)
    shares = np.asarray(fractions, dtype=np.float64) / float(sum(fractions))
    live = shares > 0
    y = np.zeros((n_pat, 0), dtype=bool)
    if labels is not None and labels.size:
        pos = np.nan_to_num(np.asarray(labels, dtype=np.float32), nan=0.0) == 1
        y = np.column_stack([np.bincount(codes, weights=pos[:, k], minlength=n_pat) > 0
                             for k in range(pos.shape[1])]) if pos.shape[1] else np.zeros((n_pat, 0), bool)
    order = np.argsort(unit_hash(np.asarray(uniques, dtype=object), seed), kind="stable")
    y = y[order]  # patients in seeded-hash order: placement never depends on the row order
    demand = shares[:, None] * y.sum(axis=0)[None, :]  # (S, K) positives each split still wants
    placed = np.zeros_like(demand)  # (S, K) positives each split holds so far
    size = shares * n_pat  # patients each split still wants
    split_of = np.full(n_pat, -1, dtype=np.int64)
    todo = np.array(y, order="F")  # a copy, columns contiguous: one finding's patients at a time
    counts = todo.sum(axis=0).astype(np.int64)  # positives not yet placed, kept up to date
    total = counts.copy()
    while counts.any():
        # the finding with the fewest positives left; ties: the rarer finding overall (a side-specific
        # finding before the finding it is part of), then the one with more splits still lacking it
        lacking = (live[:, None] & (placed == 0)).sum(axis=0)
        left = np.where(counts > 0, counts, np.iinfo(np.int64).max)
        k = int(np.lexsort((np.arange(len(counts)), -lacking, total, left))[0])
        members = np.flatnonzero(todo[:, k])
        empty = live & (placed[:, k] == 0)  # splits still without a positive of this finding
        if empty.sum() > len(members):  # too few left for all: the splits that want them most
            rank = np.lexsort((np.arange(len(empty)), -size, -demand[:, k]))
            keep = [s for s in rank if empty[s]][:len(members)]
            empty = np.isin(np.arange(len(empty)), keep)
        take = _water_fill(demand[:, k], size, len(members), live, floor=empty)
        _place(members, take, split_of, y, demand, size, placed)
        counts -= todo[members].sum(axis=0)
        todo[members] = False
    rest = np.flatnonzero(split_of < 0)
    _place(rest, _water_fill(size, size, len(rest), live), split_of, y, demand, size, placed)
    _fill_empty(split_of, y, live)
    per_patient = np.empty(n_pat, dtype=np.int64)
    per_patient[order] = split_of
    return np.asarray(names, dtype=object)[per_patient[codes]]


def _fill_empty(split_of: np.ndarray, y: np.ndarray, live: np.ndarray) -> None:
    """On very small data a wanted split can end up empty: move it one patient from the largest
    split (the one with the fewest positive findings, first in seeded order), while patients last."""
    for s in np.flatnonzero(live):
        sizes = np.bincount(split_of, minlength=len(live))
        if sizes[s] or sizes.max() <= 1:
            continue
        donor = int(np.argmax(sizes))
        candidates = np.flatnonzero(split_of == donor)
        pick = candidates[int(np.argmin(y[candidates].sum(axis=1)))]  # the first of the fewest
        split_of[pick] = s


def _place(members: np.ndarray, take: np.ndarray, split_of: np.ndarray, y: np.ndarray,
           demand: np.ndarray, size: np.ndarray, placed: np.ndarray) -> None:
    start = 0
    for s, n in enumerate(take):
        chosen = members[start:start + n]
        split_of[chosen] = s
        got = y[chosen].sum(axis=0)
        demand[s] -= got
        placed[s] += got
        size[s] -= n
        start += n


def _water_fill(want: np.ndarray, size: np.ndarray, m: int, live: np.ndarray,
                floor: np.ndarray | None = None) -> np.ndarray:
    """Integers ``n >= 0`` summing to ``m`` that leave ``want - n`` as level as possible over the live
    splits: what handing the items out one by one to the split that wants most would give (ties by
    the split's remaining size, then its position). ``floor`` (a mask of at most ``m`` splits)
    first gives each of those splits one: a split that holds no positive of a finding yet gets one
    whenever there are enough (its AUROC there would be undefined otherwise)."""
    idx = np.flatnonzero(live)
    if floor is not None and 0 < floor.sum() <= m:
        one = floor.astype(np.int64)
        return one + _water_fill(want - one, size, m - int(one.sum()), live)
    d = want[idx].astype(np.float64)
    if m == 0 or not len(idx):
        return np.zeros(len(want), dtype=np.int64)
    srt = np.sort(d)[::-1]
    level = srt[0] - m  # one split takes everything
    for j in range(1, len(srt) + 1):
        cand = (srt[:j].sum() - m) / j
        if j == len(srt) or cand >= srt[j]:
            level = cand
            break
    real = np.clip(d - level, 0.0, None)
    real *= m / real.sum() if real.sum() > 0 else 0.0
    n = np.floor(real).astype(np.int64)
    rest = m - int(n.sum())
    if rest:
        key = np.lexsort((np.arange(len(idx)), -size[idx], -(real - n)))
        n[key[:rest]] += 1
    out = np.zeros(len(want), dtype=np.int64)
    out[idx] = n
    return out


def assign_splits(
    patient_ids: pd.Series,
    official: pd.Series | None = None,
    mode: str = "official",
    seed: int = 0,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    labels: np.ndarray | None = None,
    carve: str = "stratified",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Split per row and a description for the report (method, seed, fractions, carved splits).

    ``official`` holds train/val/test or missing per row; it is used in ``official`` mode when it
    has any value (a row without one is an error there). Splits that are made (``hash`` or
    ``stratified`` mode, a release without a split, the splits carved from an official train split)
    use ``mode`` when it names a method, else ``carve``; ``labels`` (float (n, K), 1 = positive) is
    what a stratified split balances.
    """
    info: dict[str, Any] = {"seed": int(seed), "fractions": [round(f, 6) for f in fractions]}
    method = mode if mode in ("hash", "stratified") else carve
    info["stratified"] = method == "stratified"
    has_official = official is not None and official.notna().any()
    if mode in ("hash", "stratified") or not has_official:
        info["method"] = method if mode != "official" else f"{method} (the release has no official split)"
        return _made(patient_ids, labels, seed, fractions, SPLITS, method), info
    off = official.to_numpy(dtype=object)
    missing_rows = pd.isna(off)
    if missing_rows.any():
        row = int(np.flatnonzero(missing_rows)[0])
        raise InputError(
            f"the image at index row {row + 1} has no official split",
            where="official split",
            fix="use --splits hash, or complete the split file",
        )
    present = [s for s in SPLITS if (off == s).any()]
    if "train" not in present:
        info["method"] = "official"
        return off, info
    absent = [s for s in SPLITS if s not in present]
    info["method"] = "official" + (f" + {'/'.join(absent)} carved ({method}) by patient from train"
                                   if absent else "")
    if absent:
        names = ["train", *absent]
        shares = [fractions[SPLITS.index(n)] for n in names]
        if sum(shares[1:]) > 0:
            train = off == "train"
            sub = None if labels is None else np.asarray(labels)[train]
            off = off.copy()
            off[train] = _made(patient_ids[train], sub, seed, shares, names, method)
        info["carved"] = absent
    return off, info


def _made(patient_ids: pd.Series, labels: np.ndarray | None, seed: int, fractions: Sequence[float],
          names: Sequence[str], method: str) -> np.ndarray:
    if method == "stratified":
        return stratified_split(patient_ids, labels, seed, fractions, names)
    # the hash rule: a patient keeps its relative position whatever the other patients
    return _cut(_by_patient(patient_ids, seed), names, fractions)


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

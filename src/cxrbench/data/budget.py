"""Label budget and label noise of a training split: nested stratified patient subsets, symmetric flips.

* :func:`budget_order` ranks the training patients so that every prefix is a stratified sample:
  patients are grouped by their rarest positive finding (or "none"), shuffled within the group from
  ``seed``, and interleaved by their relative rank inside the group. A budget of ``f`` keeps the
  first ``ceil(f * n_patients)`` patients (or exactly ``k`` patients for an integer ``k > 1``),
  so a smaller budget is always inside a larger one (nested), each group contributes about its
  share, and the validation and test splits are never touched (only training rows are ranked).
* :func:`flip_labels` flips a fraction ``rate`` of the *known* labels of each finding (0 <-> 1,
  unknown stays unknown), chosen from ``seed`` and the finding's position: the symmetric noise
  protocol of the reference group's follow-up study. The flipped counts are returned per finding.

Both are pure functions of their inputs (numpy only); the training loop applies them to the train
split and records what it did in the run's ``best.json``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError


def budget_patients(fraction: float, n_patients: int) -> int:
    """Patients kept by a budget: ``ceil(fraction * n)`` for ``0 < fraction <= 1``, or the integer
    count ``fraction`` itself when it is above 1 (at most ``n``)."""
    if not fraction > 0:
        raise InputError(f"label fraction {fraction} is not positive", where="label_fraction",
                         fix="give a share in (0, 1] or a patient count above 1")
    if fraction <= 1:
        return max(1, math.ceil(fraction * n_patients - 1e-9))
    if fraction != int(fraction):
        raise InputError(f"label budget {fraction} is neither a share in (0, 1] nor a whole patient count",
                         where="label_fraction", fix="e.g. 0.1 (10% of the patients) or 500 (patients)")
    if fraction > n_patients:
        raise InputError(f"label budget of {int(fraction)} patients, but the training split has "
                         f"{n_patients}", where="label_fraction", fix=f"give at most {n_patients}")
    return int(fraction)


def budget_order(patient_ids: Sequence[str] | np.ndarray, labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """Per row, the rank of its patient (int64 (n_rows,), 0 = kept first): every prefix of the
    ranking is stratified by the patients' rarest positive finding. ``labels`` is float (n_rows, K),
    1 = positive (a patient is positive when any of its rows is)."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(patient_ids, dtype=object)).astype(str), sort=True)
    n_pat = len(uniques)
    pos = np.nan_to_num(np.asarray(labels, dtype=np.float32), nan=0.0) == 1
    k = pos.shape[1] if pos.ndim == 2 else 0
    if k:
        per_patient = np.column_stack([np.bincount(codes, weights=pos[:, j], minlength=n_pat) > 0
                                       for j in range(k)])
        rarity = per_patient.sum(axis=0)
        order = np.argsort(rarity, kind="stable")  # rarest finding first
        ranked = per_patient[:, order]
        has = ranked.any(axis=1)
        group = np.where(has, np.argmax(ranked, axis=1), k)  # index of the rarest positive, or k = none
    else:
        group = np.zeros(n_pat, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6C61626C]))
    jitter = rng.random(n_pat)
    key = np.empty(n_pat)
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        shuffled = members[np.argsort(jitter[members], kind="stable")]
        # relative position inside the group, offset by a random phase so small groups do not all
        # land first: a prefix of length m holds about m * |group| / n of each group
        key[shuffled] = (np.arange(len(shuffled)) + rng.random()) / len(shuffled)
    rank = np.empty(n_pat, dtype=np.int64)
    rank[np.lexsort((jitter, key))] = np.arange(n_pat)
    return rank[codes]


def budget_mask(patient_ids: Sequence[str] | np.ndarray, labels: np.ndarray, fraction: float,
                seed: int = 0) -> np.ndarray:
    """Rows kept by a label budget (all rows of the kept patients): bool (n_rows,)."""
    rank = budget_order(patient_ids, labels, seed)
    n_pat = int(rank.max()) + 1 if rank.size else 0
    keep = budget_patients(fraction, n_pat) if n_pat else 0
    return rank < keep


def flip_labels(labels: np.ndarray, rate: float, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """A copy of ``labels`` (float (n, K), NaN unknown) with ``round(rate * known)`` known labels of
    each finding flipped; returns ``(noisy, flipped per finding)``."""
    if not 0 <= rate < 1:
        raise InputError(f"label noise {rate} is not in [0, 1)", where="label_noise",
                         fix="give the share of training labels to flip, e.g. 0.2")
    out = np.array(labels, dtype=np.float32, copy=True)
    flipped = []
    for j in range(out.shape[1] if out.ndim == 2 else 0):
        known = np.flatnonzero(~np.isnan(out[:, j]))
        n = int(round(rate * len(known)))
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x6E6F6973, j]))
        chosen = rng.choice(known, size=n, replace=False) if n else np.zeros(0, dtype=np.int64)
        out[chosen, j] = 1.0 - out[chosen, j]
        flipped.append(n)
    return out, flipped


def apply_budget(dataset, fraction: float = 1.0, noise: float = 0.0, seed: int = 0) -> dict | None:
    """Restrict a training :class:`~cxrbench.data.dataset.CacheDataset` to a label budget and flip
    its labels (in place); returns what was done (also set as ``dataset.label_changes``, recorded in
    ``config.yaml`` and ``best.json``), or None when nothing was."""
    if fraction == 1.0 and noise == 0.0:
        return None
    out: dict = {"seed": int(seed)}
    n_images, n_patients = len(dataset), len(set(dataset.patient_ids))
    if fraction != 1.0:
        keep = budget_mask(dataset.patient_ids, dataset.labels, fraction, seed)
        dataset.restrict(keep)
        out["budget"] = {"fraction": float(fraction), "patients": len(set(dataset.patient_ids)),
                         "of_patients": n_patients, "images": len(dataset), "of_images": n_images}
    if noise:
        noisy, flipped = flip_labels(dataset.labels, noise, seed)
        known = (~np.isnan(dataset.labels)).sum(axis=0)
        dataset.restrict(np.ones(len(dataset), dtype=bool), labels=noisy)
        out["noise"] = {"rate": float(noise), "flipped": dict(zip(dataset.findings, flipped, strict=True)),
                        "known": dict(zip(dataset.findings, (int(n) for n in known), strict=True))}
    dataset.label_changes = out
    return out

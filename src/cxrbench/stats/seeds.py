"""Statistics of an arm: one initialization trained with S seeds, every seed scored on the same images.

Estimand: the expected AUROC of the training procedure (over seeds) on the test population. Per finding:

* point estimate: the mean over seeds of each seed's AUROC on the full set (``ArmBootstrap.pooled_point``);
  the macro mean is the mean over the findings estimable on the full set, as in ``evaluate``;
* CI: a **two-level bootstrap** with crossed resampling (Owen's "pigeonhole" bootstrap): resample
  ``b`` draws one patient-cluster resample of the images (exactly :func:`cxrbench.stats.bootstrap.
  make_resamples`, the same for every arm and seed) and, per arm, S seeds with replacement; the
  statistic is the mean over the drawn seeds of each seed's AUROC on the drawn images. The percentile
  interval is :func:`cxrbench.stats.bootstrap.summarize`'s;
* seed-to-seed SD (ddof=1) of the per-seed full-set AUROCs, beside it;
* the seed-ensemble: the AUROC of the seeds' mean score, with the one-level image bootstrap CI.

Two arms are compared with the paired bootstrap of :mod:`cxrbench.stats.significance` on these
resampled statistics: the image resample is shared (that pairs them), the seed draws are independent
per arm. With one seed every draw is that seed, so all of this reduces exactly (bit for bit) to
today's one-seed numbers.

Seed draws: ``PCG64(SeedSequence(seed, spawn_key=(b, 1, stream))).integers(0, S, S)`` over the arm's
seeds in canonical order (sorted by a hash of their scores), ``stream`` = 64 bits of a hash of those
hashes. So an arm's intervals depend on (seed, B, cluster, the images, the set of its seeds'
predictions): not on the arm's name, the order its runs are listed in, or the other arms.

Speed: each (seed, finding) AUROC on every image resample is computed once (S x B values per
finding) and then mixed by the seed draws. The AUROC of a resample uses the integer identity of
:mod:`cxrbench.stats.bootstrap` (``2 W+ W- AUROC = sum_k w_k (2 W- - FP_gt(k) - FP_ge(k))``) with the
negatives' weights summed per stretch between consecutive positive scores by one sparse product
``R @ unit_counts`` (R: stretches x sampling units, the items folded into their patients), so the
per-seed cost is one pass over the known labels per resample; exact in floating point (integers
below 2^24 in float32, else float64) and equal bit for bit to :func:`~cxrbench.stats.bootstrap.
bootstrap_auroc`. Memory per chunk of c resamples: about ``c x (16 U + 16 rows)`` bytes (U sampling
units, rows = 2 x the positive runs of the largest finding), kept under ``memory_bytes``.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from cxrbench.common.errors import InputError
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt

SEED_DRAW_KEY = 1  # second spawn_key entry: separates the seed draws from the image draws of resample b
_FLOAT32_EXACT = 2**24  # float32 holds every integer up to here exactly
_CACHE_BYTES = 4 * 2**20


@dataclass(frozen=True)
class _Stretches:
    """One (model, finding): the sparse map from sampling units to negative stretches and positive runs."""

    matrix: sp.csr_matrix  # (1 + R + G, U): row 0 empty, rows 1..R negative stretches, then G positive runs
    n_stretches: int  # R
    gt: np.ndarray  # (G,) row of the cumulative negative weight scoring above each positive run
    ge: np.ndarray  # (G,) same, scoring above or equal (== gt when no positive ties a negative)
    ties: bool


def _stretches(y: np.ndarray, s: np.ndarray, unit_of_item: np.ndarray, n_units: int) -> _Stretches:
    """Group one finding's known items for :func:`_auroc_from_units` (positives and negatives by score)."""
    idx = np.flatnonzero(~np.isnan(y))
    pos, neg = idx[y[idx] == 1.0], idx[y[idx] == 0.0]
    pos = pos[np.argsort(-s[pos], kind="stable")]
    neg = neg[np.argsort(-s[neg], kind="stable")]
    neg_desc = -s[neg]  # ascending
    gt = np.searchsorted(neg_desc, -s[pos], side="left")  # negatives scoring strictly higher
    ge = np.searchsorted(neg_desc, -s[pos], side="right")  # ... higher or equal
    cuts = np.unique(np.r_[gt, ge, neg.size])
    cuts = cuts[cuts > 0]  # stretch r (1-based) = sorted negatives [cuts[r-2], cuts[r-1])
    stretch = 1 + np.searchsorted(cuts, np.arange(neg.size), side="right")
    new_run = np.r_[True, (gt[1:] != gt[:-1]) | (ge[1:] != ge[:-1])] if pos.size else np.zeros(0, bool)
    run = np.cumsum(new_run) - 1  # consecutive positives with no negative between them share a run
    first = np.flatnonzero(new_run)

    def row(t: np.ndarray) -> np.ndarray:
        return np.where(t == 0, 0, 1 + np.searchsorted(cuts, t))

    rows = np.r_[stretch, cuts.size + 1 + run]  # non-decreasing: CSR directly, no sort
    cols = np.r_[unit_of_item[neg], unit_of_item[pos]]
    n_rows = 1 + cuts.size + first.size
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_rows))]
    # a unit drawn twice into one row (two images of a patient) stays two entries; the product sums them
    matrix = sp.csr_matrix((np.ones(rows.size, np.float32), cols, indptr), shape=(n_rows, n_units))
    g_gt, g_ge = row(gt[first]), row(ge[first])
    return _Stretches(matrix, int(cuts.size), g_gt, g_ge, not np.array_equal(g_gt, g_ge))


def _auroc_from_units(st: _Stretches, units_t: np.ndarray) -> np.ndarray:
    """AUROC (c,) of one (model, finding) on the resamples whose unit counts are ``units_t`` (U, c)."""
    y = st.matrix @ units_t  # (1 + R + G, c) summed weights; exact integers
    cum = y[:st.n_stretches + 1]
    np.add.accumulate(cum, axis=0, out=cum)  # row r: weight of the negatives above cut r
    runs = y[st.n_stretches + 1:]
    w_neg = cum[-1].astype(np.float64)
    w_pos = runs.sum(axis=0, dtype=np.float64)
    below = np.einsum("gc,gc->c", runs, cum[st.gt], dtype=np.float64)
    if st.ties:
        below += np.einsum("gc,gc->c", runs, cum[st.ge], dtype=np.float64)
    else:
        below *= 2.0
    denom = 2.0 * w_pos * w_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > 0, (denom - below) / np.where(denom > 0, denom, 1.0), np.nan)


def _unit_chunk_size(resamples: bs.Resamples, stretches: list[_Stretches], memory_bytes: int) -> int:
    """Resamples per chunk: within ``memory_bytes``, and small enough that one product's float32
    operands stay near a core's cache (``_CACHE_BYTES``; measured 1.7x faster than one chunk of 1000)."""
    rows = max((st.matrix.shape[0] + 2 * st.gt.size for st in stretches), default=1)
    per_resample = 16 * resamples.n_units + 8 * rows + 64
    cached = max(16, _CACHE_BYTES // (4 * (rows + resamples.n_units)))
    return int(max(1, min(resamples.n_resamples, memory_bytes // per_resample, cached)))


def bootstrap_auroc_many(labels: np.ndarray, scores: np.ndarray, resamples: bs.Resamples,
                         memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """AUROC of M score sets (seeds) on every resample: (M, B, K), equal to
    :func:`cxrbench.stats.bootstrap.bootstrap_auroc` bit for bit (NaN where a resample has one class).

    ``labels`` (n, K) with 1/0/NaN shared by every score set, ``scores`` (M, n, K) or (n, K).
    """
    labels = np.asarray(labels, dtype=np.float64)
    n, k = labels.shape
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[None] if scores.ndim == 2 else scores
    if scores.ndim != 3 or scores.shape[1:] != (n, k):
        raise ValueError(f"scores must be (n, K) or (M, n, K) with n={n}, K={k}; got {scores.shape}")
    if resamples.n_items != n:
        raise ValueError(f"resamples cover {resamples.n_items} images but the arrays have {n}")
    units_of = resamples.unit_of_item
    stretches = [[_stretches(labels[:, j], scores[m, :, j], units_of, resamples.n_units) for j in range(k)]
                 for m in range(scores.shape[0])]
    size = _unit_chunk_size(resamples, [st for per in stretches for st in per], memory_bytes)
    unit_sizes = np.bincount(units_of, minlength=resamples.n_units).astype(np.float64)
    out = np.full((scores.shape[0], resamples.n_resamples, k), np.nan)
    for start in range(0, resamples.n_resamples, size):
        stop = min(start + size, resamples.n_resamples)
        units = np.stack([resamples.unit_counts(b) for b in range(start, stop)])
        exact32 = float((units @ unit_sizes).max(initial=0)) < _FLOAT32_EXACT
        units_t = np.ascontiguousarray(units.T, dtype=np.float32 if exact32 else np.float64)
        del units
        for m, per_finding in enumerate(stretches):
            for j, st in enumerate(per_finding):
                out[m, start:stop, j] = _auroc_from_units(st, units_t)
    return out


# ---------------------------------------------------------------------------------------------
# seed draws


def seed_digests(scores: np.ndarray) -> list[str]:
    """A hash of each seed's scores (S, n, K) in canonical image order (16 hex digits each)."""
    scores = np.ascontiguousarray(scores, dtype=np.float64)
    return [hashlib.sha256(scores[i].tobytes()).hexdigest()[:16] for i in range(scores.shape[0])]


def seed_stream(digests: list[str]) -> tuple[np.ndarray, int]:
    """Canonical order of the seeds (sorted digests) and the arm's stream number (64 bits)."""
    order = np.argsort(np.asarray(digests), kind="stable")
    text = ",".join(digests[i] for i in order)
    return order, int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def ensemble_scores(scores: np.ndarray) -> np.ndarray:
    """The seed-ensemble's scores: the mean over seeds (S, n, K) -> (n, K), summed in canonical seed
    order so that it does not depend on the order the seeds are listed in (ties stay ties)."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape[0] == 1:
        return scores[0].copy()
    order, _ = seed_stream(seed_digests(scores))
    return scores[order].mean(axis=0)


def seed_draws(n_seeds: int, n_resamples: int, seed: int, stream: int) -> np.ndarray:
    """How often each seed is drawn in each resample: int64 (B, S), rows summing to S.

    Resample ``b`` draws ``PCG64(SeedSequence(seed, spawn_key=(b, 1, stream))).integers(0, S, S)``;
    like the image draws, the first B' rows do not depend on B.
    """
    if int(seed) < 0:
        raise InputError(f"got {seed}, expected a whole number >= 0", where="--seed",
                         fix="give e.g. --seed 0")
    out = np.empty((int(n_resamples), int(n_seeds)), dtype=np.int64)
    for b in range(int(n_resamples)):
        ss = np.random.SeedSequence(int(seed), spawn_key=(b, SEED_DRAW_KEY, int(stream)))
        rng = np.random.Generator(np.random.PCG64(ss))
        out[b] = np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds)
    return out


def pool(per_seed: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Mean over the drawn seeds: ``per_seed`` (S, B, K), ``draws`` (B, S) -> (B, K).

    NaN where the metric is undefined on the image resample (labels are shared, so for every seed).
    """
    per_seed = np.asarray(per_seed, dtype=np.float64)
    s = per_seed.shape[0]
    if s == 1:
        return per_seed[0].copy()
    return np.einsum("bs,sbk->bk", draws.astype(np.float64), per_seed) / s


# ---------------------------------------------------------------------------------------------
# one arm


@dataclass(frozen=True)
class ArmBootstrap:
    """An arm's per-seed AUROCs and its two-level bootstrap, K findings, S seeds, B resamples.

    ``point`` (S, K): each seed on the full set; ``resampled`` (S, B, K): each seed on each image
    resample; ``draws`` (B, S): seed draw counts (in the order of ``point``); ``ensemble_point`` (K,)
    and ``ensemble_resampled`` (B, K): the seeds' mean score (None when not asked for); ``stream``:
    the seed-draw stream.
    """

    point: np.ndarray
    resampled: np.ndarray
    draws: np.ndarray
    ensemble_point: np.ndarray | None
    ensemble_resampled: np.ndarray | None
    stream: int

    @property
    def n_seeds(self) -> int:
        """S."""
        return int(self.point.shape[0])

    @property
    def pooled_point(self) -> np.ndarray:
        """Mean over seeds of the full-set AUROC: (K,)."""
        return self.point[0].copy() if self.n_seeds == 1 else self.point.mean(axis=0)

    @property
    def pooled(self) -> np.ndarray:
        """The two-level bootstrap statistic on every resample: (B, K)."""
        return pool(self.resampled, self.draws)

    @property
    def image_only(self) -> np.ndarray:
        """The one-level statistic (images resampled, every seed kept): (B, K); under-covers (docs)."""
        return self.resampled.mean(axis=0)

    def seed_sd(self, cols: list[int] | None = None) -> np.ndarray | float:
        """Seed-to-seed SD (ddof=1) of the full-set AUROC per finding (K,), or of the per-seed macro
        mean over ``cols``; NaN with one seed."""
        values = self.point if cols is None else self.point[:, cols].mean(axis=1)
        if self.n_seeds < 2:
            return np.full(values.shape[1:], np.nan) if cols is None else float("nan")
        sd = values.std(axis=0, ddof=1)
        return sd if cols is None else float(sd)

    def macro(self, cols: list[int]) -> tuple[float, np.ndarray]:
        """Macro mean over findings ``cols``: point and its resampled values (B,) (a resample where
        any of them is undefined is NaN, so it is excluded rather than averaged over fewer)."""
        return float(np.mean(self.pooled_point[cols])), self.pooled[:, cols].mean(axis=1)


def full_set_auroc(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """AUROC of each seed and finding on the full set: (S, K) (NaN, silently, where not estimable)."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    out = np.full((scores.shape[0], labels.shape[1]), np.nan)
    for j in range(labels.shape[1]):
        if mt.not_estimable_reason(labels[:, j]):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", mt.UndefinedMetricWarning)
            out[:, j] = [mt.auroc(labels[:, j], scores[m, :, j]) for m in range(scores.shape[0])]
    return out


def arm_bootstrap(labels: np.ndarray, scores: np.ndarray, resamples: bs.Resamples, *, ensemble: bool = True,
                  memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> ArmBootstrap:
    """The two-level bootstrap of one arm: ``labels`` (n, K) shared, ``scores`` (S, n, K) per seed,
    on the image ``resamples`` every arm shares (the seed draws are the arm's own, see module doc).
    ``ensemble=False`` skips the seed-ensemble (one score set fewer to bootstrap)."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 3 or scores.shape[0] < 1:
        raise ValueError(f"scores must be (S, n, K) with S >= 1; got {scores.shape}")
    s = scores.shape[0]
    mean = ensemble_scores(scores) if ensemble and s > 1 else None
    order, stream = seed_stream(seed_digests(scores))
    both = np.concatenate([scores, mean[None]]) if mean is not None else scores
    boot = bootstrap_auroc_many(labels, both, resamples, memory_bytes=memory_bytes)
    canonical = seed_draws(scores.shape[0], resamples.n_resamples, resamples.seed, stream)
    draws = np.empty_like(canonical)
    draws[:, order] = canonical  # canonical column i is seed order[i]
    point = full_set_auroc(labels, scores)
    ens_point = ens_boot = None
    if ensemble:  # with one seed, the ensemble is that seed
        ens_point = point[0].copy() if mean is None else full_set_auroc(labels, mean[None])[0]
        ens_boot = boot[-1]
    return ArmBootstrap(point=point, resampled=boot[:s], draws=draws, ensemble_point=ens_point,
                        ensemble_resampled=ens_boot, stream=stream)

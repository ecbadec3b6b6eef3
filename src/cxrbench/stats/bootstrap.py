"""Bootstrap resamples as count vectors, and metrics over every resample at once (no Python loop
over resamples calling scikit-learn).

A resample of an evaluation set of n images is stored as a count vector: ``counts[b, i]`` is how
many times image ``i`` was drawn in resample ``b`` (0, 1, 2, ...). A metric of the resampled set is
the same metric with integer weights, so every resample is evaluated with one sort per finding
(done once) plus cumulative sums over the resamples of a chunk.

Resamples are a pure function of ``(seed, b, the number of sampling units)``, over the canonical
item order the caller passes (sorted by image id in :mod:`cxrbench.evaluate`):

* resample ``b`` draws ``n_units`` units with replacement from
  ``numpy.random.Generator(PCG64(SeedSequence(seed, spawn_key=(b,)))).integers(0, n_units, n_units)``;
* ``cluster="image"``: units are images; ``cluster="patient"``: units are patients (sorted patient
  ids) and every image of a drawn patient is taken as many times as the patient was drawn.

So two models evaluated on the same images with the same seed see identical resamples (a paired
bootstrap), whatever the chunk size or B (the first B' resamples of B > B' are the same).

Memory: the work per chunk of ``c`` resamples holds ``c x n`` uint8 counts plus, for the finding in
progress, int32/int64 arrays of ``c x n_finding`` elements; the chunk size is chosen so that this
stays under ``memory_bytes`` (default 256 MiB, see :func:`chunk_size`). Besides the chunk, each
(model, finding) keeps its sort order (int32 indices and float64 distinct scores, at most about
24 bytes per image) and the outputs take 8 bytes per (model, resample, finding). Example: 50,000
images x 20 findings x 2 models: 256 MiB + 48 MiB + 0.3 MiB at B = 1000.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_choice

CLUSTERS: tuple[str, ...] = ("image", "patient")
DEFAULT_MEMORY_BYTES = 256 * 2**20
# Bytes held per resample and per image of the finding in progress, worst case (all metrics, no
# ties): gathered counts (1), int32 cumulative sums of positives and negatives (4), int32 TP/FP at
# every threshold (8), then the larger of average precision's float64 temporaries (about 21) and
# Youden's int64 J (16), slack (6).
_BYTES_PER_ITEM_WORK = 40


def ids_hash(ids: Sequence[str] | np.ndarray) -> str:
    """Hash of an ordered list of ids (16 hex digits); stored with an evaluation to detect a changed set."""
    text = json.dumps([str(i) for i in ids], separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Resamples:
    """B bootstrap resamples of an ordered evaluation set, generated lazily in chunks.

    ``unit_of_item[i]`` is the sampling unit (image or patient index) of item ``i``.
    """

    seed: int
    n_resamples: int
    cluster: str
    unit_of_item: np.ndarray
    n_units: int
    order_hash: str

    @property
    def n_items(self) -> int:
        """Number of images in the evaluation set."""
        return int(self.unit_of_item.size)

    def unit_counts(self, b: int) -> np.ndarray:
        """How often each unit is drawn in resample ``b``: int64 (n_units,)."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(self.seed, spawn_key=(b,))))
        return np.bincount(rng.integers(0, self.n_units, self.n_units), minlength=self.n_units)

    def counts(self, start: int, stop: int) -> np.ndarray:
        """Item counts of resamples ``start..stop-1``: (stop - start, n_items), smallest unsigned dtype."""
        units = np.stack([self.unit_counts(b) for b in range(start, stop)])
        dtype = np.uint8 if units.max(initial=0) <= 255 else np.uint16 if units.max() <= 65535 else np.int32
        units = units.astype(dtype)
        if self.cluster == "image":
            return units
        return np.take(units, self.unit_of_item, axis=1)

    def indices(self, b: int) -> np.ndarray:
        """Explicit item indices of resample ``b`` (with repeats, sorted): the resampled set itself."""
        counts = self.counts(b, b + 1)[0]
        return np.repeat(np.arange(self.n_items), counts)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, counts)`` for consecutive chunks of at most ``size`` resamples."""
        for start in range(0, self.n_resamples, max(1, size)):
            yield start, self.counts(start, min(start + size, self.n_resamples))

    def describe(self) -> dict:
        """What to store with an evaluation so the resamples can be regenerated and checked."""
        return {"n_resamples": self.n_resamples, "seed": self.seed, "cluster": self.cluster,
                "n_units": self.n_units, "n_images": self.n_items, "image_order_hash": self.order_hash,
                "image_order": "sorted by image_id",
                "generator": "PCG64(SeedSequence(seed, spawn_key=(b,))).integers(0, n_units, n_units)"}


def check_resampling(n_resamples: int, seed: int) -> None:
    """The bootstrap settings every command passes on: ``--bootstrap`` >= 1 resamples and a ``--seed``
    numpy's SeedSequence takes (a whole number >= 0); else one InputError naming the option."""
    if int(n_resamples) < 1:
        raise InputError(f"got {n_resamples}, expected a whole number of resamples >= 1", where="--bootstrap",
                         fix="give e.g. --bootstrap 1000 (0 skips the intervals where a command allows it)")
    if int(seed) < 0:
        raise InputError(f"got {seed}, expected a whole number >= 0", where="--seed",
                         fix="give e.g. --seed 0")


def make_resamples(image_ids: Sequence[str] | np.ndarray,
                   patient_ids: Sequence[str] | np.ndarray | None = None, n_resamples: int = 1000,
                   seed: int = 0, cluster: str = "image") -> Resamples:
    """Resamples of the ordered set ``image_ids`` (the caller fixes the order, e.g. sorted by id).

    ``cluster="patient"`` needs ``patient_ids`` aligned with ``image_ids``; patients are numbered in
    sorted id order.
    """
    check_choice("cluster", cluster, CLUSTERS)
    check_resampling(n_resamples, seed)
    ids = np.asarray([str(i) for i in image_ids])
    if cluster == "image":
        unit_of_item = np.arange(ids.size, dtype=np.int64)
        n_units = int(ids.size)
    else:
        if patient_ids is None:
            raise ValueError("cluster='patient' needs patient_ids")
        pats = np.asarray([str(p) for p in patient_ids])
        if pats.shape != ids.shape:
            raise ValueError("patient_ids must align with image_ids")
        uniq, unit_of_item = np.unique(pats, return_inverse=True)
        n_units = int(uniq.size)
    return Resamples(seed=int(seed), n_resamples=int(n_resamples), cluster=cluster,
                     unit_of_item=np.asarray(unit_of_item, dtype=np.int64), n_units=n_units,
                     order_hash=ids_hash(ids))


def chunk_size(n_items: int, n_resamples: int, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> int:
    """Resamples per chunk so that the working set (about 42 bytes per image per resample) fits."""
    per_resample = max(1, n_items) * (2 + _BYTES_PER_ITEM_WORK)
    return int(max(1, min(n_resamples, memory_bytes // per_resample)))


@dataclass(frozen=True)
class _Prepared:
    """One finding's known labels, sorted once by descending score."""

    pos: np.ndarray  # item indices of positives, highest score first
    neg: np.ndarray  # item indices of negatives, highest score first
    neg_gt: np.ndarray  # per positive: number of negatives scoring strictly higher
    neg_ge: np.ndarray | None  # per positive: negatives scoring higher or equal; None when no ties
    values: np.ndarray  # distinct known scores, descending (G,)
    pos_at: np.ndarray  # (G + 1,): positives scoring >= values[g - 1]; entry 0 (threshold +inf) is 0
    neg_at: np.ndarray  # (G + 1,): same for negatives


def _prepare(y: np.ndarray, s: np.ndarray) -> _Prepared:
    idx = np.flatnonzero(~np.isnan(y))
    order = idx[np.argsort(-s[idx], kind="stable")]
    is_pos = y[order] == 1.0
    pos, neg = order[is_pos], order[~is_pos]
    neg_desc = -s[neg]  # ascending
    neg_gt = np.searchsorted(neg_desc, -s[pos], side="left")
    neg_ge = np.searchsorted(neg_desc, -s[pos], side="right")
    sorted_s = s[order]
    last = np.r_[np.flatnonzero(np.diff(sorted_s)), sorted_s.size - 1] if sorted_s.size else np.zeros(0, int)
    cum_pos = np.cumsum(is_pos)
    pos_at = np.r_[0, cum_pos[last]] if last.size else np.zeros(1, int)
    neg_at = np.r_[0, last + 1 - cum_pos[last]] if last.size else np.zeros(1, int)
    ix = np.int32 if y.size < 2**31 else np.int64  # indices kept for every chunk: keep them small
    return _Prepared(pos=pos.astype(ix), neg=neg.astype(ix), neg_gt=neg_gt.astype(ix),
                     neg_ge=None if np.array_equal(neg_gt, neg_ge) else neg_ge.astype(ix),
                     values=sorted_s[last], pos_at=pos_at.astype(ix), neg_at=neg_at.astype(ix))


def _cumsum_pad(weights: np.ndarray) -> np.ndarray:
    """(c, m) counts -> (c, m + 1) cumulative sums with a leading zero column (int32 unless too large)."""
    c, m = weights.shape
    dtype = np.int32 if m * int(np.iinfo(weights.dtype).max) < 2**31 else np.int64
    out = np.zeros((c, m + 1), dtype=dtype)
    np.cumsum(weights, axis=1, dtype=dtype, out=out[:, 1:])
    return out


def _auroc_chunk(p: _Prepared, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted Mann-Whitney AUROC of every resample in ``counts`` for one finding.

    With weights w (counts), positives k and FP[j] = weight of the j highest-scoring negatives:
    2 * W+ * W- * AUROC = sum_k w_k (2 W- - FP[#neg > s_k] - FP[#neg >= s_k]), exact in integers.
    Returns (auroc, W+, W-, cumulative negative weights); AUROC is NaN where W+ or W- is 0.
    """
    cp = np.take(counts, p.pos, axis=1)
    fp = _cumsum_pad(np.take(counts, p.neg, axis=1))
    w_pos = cp.sum(axis=1, dtype=np.int64)
    w_neg = fp[:, -1].astype(np.int64)
    gathered = np.take(fp, p.neg_gt, axis=1)
    # w_k * (FP + FP) <= 2 * max count * total weight: stay in int32 when that cannot overflow
    bound = 2 * int(np.iinfo(counts.dtype).max) * int((w_pos + w_neg).max(initial=0))
    if bound >= 2**31:
        gathered = gathered.astype(np.int64)
    if p.neg_ge is not None:
        gathered += np.take(fp, p.neg_ge, axis=1)
    else:
        gathered *= 2
    below = (cp * gathered).sum(axis=1, dtype=np.int64)
    denom = 2 * w_pos * w_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = np.where(denom > 0, (denom - below) / np.where(denom > 0, denom, 1), np.nan)
    return auc, w_pos, w_neg, fp


def _as_models(scores: np.ndarray, n: int, k: int) -> tuple[np.ndarray, bool]:
    scores = np.asarray(scores, dtype=np.float64)
    single = scores.ndim == 2
    scores = scores[None] if single else scores
    if scores.ndim != 3 or scores.shape[1:] != (n, k):
        raise ValueError(f"scores must be (n, K) or (M, n, K) with n={n}, K={k}; got {scores.shape}")
    return scores, single


def bootstrap_auroc(labels: np.ndarray, scores: np.ndarray, resamples: Resamples,
                    memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """AUROC of every finding on every resample.

    ``labels`` (n, K) with 1/0/NaN, ``scores`` (n, K) or (M, n, K) for M models scored on the same
    images. Returns (B, K), or (M, B, K); NaN where a resample has only one class for a finding.
    Each value equals ``roc_auc_score`` on the explicitly resampled set (ties included).
    """
    labels = np.asarray(labels, dtype=np.float64)
    n, k = labels.shape
    scores, single = _as_models(scores, n, k)
    _check_items(resamples, n)
    prepared = [[_prepare(labels[:, j], scores[m, :, j]) for j in range(k)] for m in range(scores.shape[0])]
    out = np.full((scores.shape[0], resamples.n_resamples, k), np.nan)
    for start, counts in resamples.chunks(chunk_size(n, resamples.n_resamples, memory_bytes)):
        stop = start + counts.shape[0]
        for m, per_finding in enumerate(prepared):
            for j, p in enumerate(per_finding):
                out[m, start:stop, j] = _auroc_chunk(p, counts)[0]
    return out[0] if single else out


def bootstrap_metrics(labels: np.ndarray, scores: np.ndarray, resamples: Resamples, *,
                      thresholds: np.ndarray | None = None, youden: bool = False,
                      memory_bytes: int = DEFAULT_MEMORY_BYTES) -> dict[str, np.ndarray]:
    """AUROC, average precision and confusion counts of every finding on every resample.

    ``labels``, ``scores``: (n, K). Returns arrays of shape (B, K): ``auroc``,
    ``average_precision``; with ``thresholds`` (K,) (NaN = none for that finding) the confusion
    counts ``tp``, ``fp``, ``tn``, ``fn`` at ``s >= threshold``; with ``youden=True`` instead the
    threshold chosen on each resample by Youden's J (``threshold``, +inf when J <= 0 everywhere) and
    the counts there (the reference study's protocol). A resample where a finding has only one
    class gives NaN in every output for that finding.
    """
    labels = np.asarray(labels, dtype=np.float64)
    n, k = labels.shape
    scores, _ = _as_models(scores, n, k)
    scores = scores[0]
    _check_items(resamples, n)
    if thresholds is not None and youden:
        raise ValueError("give either fixed thresholds or youden=True, not both")
    prepared = [_prepare(labels[:, j], scores[:, j]) for j in range(k)]
    b_total = resamples.n_resamples
    names = ["auroc", "average_precision"]
    if thresholds is not None or youden:
        names += ["tp", "fp", "tn", "fn"] + (["threshold"] if youden else [])
    out = {name: np.full((b_total, k), np.nan) for name in names}
    fixed_at = None
    if thresholds is not None:
        thr = np.asarray(thresholds, dtype=np.float64)
        fixed_at = [(int(np.sum(scores[p.pos, j] >= thr[j])), int(np.sum(scores[p.neg, j] >= thr[j])))
                    if not np.isnan(thr[j]) else None for j, p in enumerate(prepared)]
    for start, counts in resamples.chunks(chunk_size(n, b_total, memory_bytes)):
        rows = slice(start, start + counts.shape[0])
        for j, p in enumerate(prepared):
            auc, w_pos, w_neg, fp = _auroc_chunk(p, counts)
            ok = (w_pos > 0) & (w_neg > 0)
            out["auroc"][rows, j] = auc
            tp = _cumsum_pad(np.take(counts, p.pos, axis=1))
            tp_g = np.take(tp, p.pos_at, axis=1)
            fp_g = np.take(fp, p.neg_at, axis=1)
            out["average_precision"][rows, j] = np.where(ok, _average_precision(tp_g, fp_g, w_pos), np.nan)
            if youden:
                g = _youden_index(tp_g, fp_g, w_pos, w_neg)
                tp_at = np.take_along_axis(tp_g, g[:, None], axis=1)[:, 0].astype(np.float64)
                fp_at = np.take_along_axis(fp_g, g[:, None], axis=1)[:, 0].astype(np.float64)
                out["threshold"][rows, j] = np.where(ok, np.r_[np.inf, p.values][g], np.nan)
            elif fixed_at is not None and (at := fixed_at[j]) is not None:
                tp_at = tp[:, at[0]].astype(np.float64)
                fp_at = fp[:, at[1]].astype(np.float64)
            else:
                continue
            out["tp"][rows, j] = np.where(ok, tp_at, np.nan)
            out["fp"][rows, j] = np.where(ok, fp_at, np.nan)
            out["fn"][rows, j] = np.where(ok, w_pos - tp_at, np.nan)
            out["tn"][rows, j] = np.where(ok, w_neg - fp_at, np.nan)
    return out


def _average_precision(tp_g: np.ndarray, fp_g: np.ndarray, w_pos: np.ndarray) -> np.ndarray:
    """Step-wise AP per row from cumulative TP/FP at descending thresholds (column 0 = +inf).

    In place where possible: the peak is about 21 bytes per threshold and resample.
    """
    tp = tp_g[:, 1:].astype(np.float64)
    predicted = tp + fp_g[:, 1:]
    np.divide(tp, predicted, out=predicted, where=predicted > 0)  # precision; 0 where nothing predicted
    del tp
    predicted *= np.diff(tp_g, axis=1)  # recall step x precision (times W+)
    with np.errstate(divide="ignore", invalid="ignore"):
        return predicted.sum(axis=1) / w_pos


def _youden_index(tp_g: np.ndarray, fp_g: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """Per row, the first column maximizing J * W+ * W- = TP * W- - FP * W+ (exact int64)."""
    j_scaled = tp_g.astype(np.int64)
    j_scaled *= w_neg[:, None]
    other = fp_g.astype(np.int64)
    other *= w_pos[:, None]
    j_scaled -= other
    del other
    return np.argmax(j_scaled, axis=1)


def _check_items(resamples: Resamples, n: int) -> None:
    if resamples.n_items != n:
        raise ValueError(f"resamples cover {resamples.n_items} images but the arrays have {n}")


def summarize(values: np.ndarray, point: float, ci_level: float = 0.95) -> dict:
    """Point estimate with the bootstrap percentile CI and the mean and std (ddof=1) over resamples.

    NaN resamples (metric undefined there) are excluded and counted.
    """
    values = np.asarray(values, dtype=np.float64)
    used = values[~np.isnan(values)]
    alpha = (1.0 - ci_level) / 2.0
    if used.size:
        lo, hi = np.quantile(used, [alpha, 1.0 - alpha])
        mean = float(used.mean())
        std = float(used.std(ddof=1)) if used.size > 1 else float("nan")
    else:
        lo = hi = mean = std = float("nan")
    return {"value": float(point), "ci_low": float(lo), "ci_high": float(hi), "mean": mean, "std": std,
            "n_resamples_used": int(used.size), "n_resamples_excluded": int(values.size - used.size)}

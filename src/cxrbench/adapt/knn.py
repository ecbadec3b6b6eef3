"""Multi-label kNN on L2-normalized embeddings: cosine similarity, temperature-weighted votes.

For a query q and a finding f, the neighbours are the k training images with the highest cosine
similarity s_j to q **among those whose label of f is known** (unknown labels are excluded per
finding, so every finding gets k real votes), and the score is the weighted vote

    p_f(q) = sum_j w_j y_jf / sum_j w_j,   w_j = exp(s_j / T)

(DINO's weighted kNN, Caron et al. 2021, with one binary vote per finding), a number in [0, 1] used
as the Contract-4 probability. The weights are computed as ``exp((s_j - s_1) / T)``, the same ratio
without overflow at small T. The ``knn`` adaptation method (:mod:`cxrbench.train.methods.knn`)
chooses k and T on the validation split and keeps the bank in its run folder. Similarities are
matrix products in torch, chunked so that one block of
``queries x bank`` stays within a memory budget (GPU when given one, CPU otherwise); findings
that share the same known-label mask share one top-k pass. On CPUs with AMX (where bf16 products
are several times faster), candidates come from a bf16 product and are rescored in fp32, with a
per-query proof that no other row can be closer (:func:`nearest`): the same neighbours as the fp32
search, in about a third of the time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

CPU_BUDGET = 1 << 25  # similarity entries per block (128 MB of float32)
GPU_BUDGET = 1 << 28


def normalize(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm (float32 tensor; a zero row stays zero)."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.require(x, np.float32, ["W"]))
    t = t.float()
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def label_groups(labels: np.ndarray) -> list[tuple[list[int], np.ndarray | None]]:
    """Findings grouped by their known-label mask over the bank: ``[(finding indices, bool [N] or
    None = every label known), ...]`` in order of first appearance."""
    known = ~np.isnan(labels)
    groups: dict[bytes, tuple[list[int], np.ndarray | None]] = {}
    for k in range(labels.shape[1]):
        col = known[:, k]
        key = b"all" if col.all() else np.packbits(col).tobytes()
        groups.setdefault(key, ([], None if col.all() else col))[0].append(k)
    return list(groups.values())


@dataclass
class Neighbours:
    """The ``k`` nearest bank rows of every query for one group of findings: ``sims`` float32 and
    ``index`` int64, both ``[Q, k]`` (most similar first; ``-inf`` where fewer rows were allowed)."""

    findings: list[int]
    sims: torch.Tensor
    index: torch.Tensor


def prefilter_eps(dim: int) -> float:
    """A bound on |bf16 similarity - exact similarity| of unit vectors in ``dim`` dimensions: inputs
    rounded to bf16 (unit roundoff u = 2^-8) move the product by at most (2u + u^2) sum |q_i b_i|
    <= 2u + u^2 (Cauchy-Schwarz), fp32 accumulation adds at most dim 2^-24 (1 + u)^2, rounding the
    result to bf16 at most u (1 + 3u); 0.0120 for dim 4096. A margin of 1% on top."""
    u = 2.0 ** -8
    return 1.01 * (2 * u + u * u + dim * 2.0 ** -24 * (1 + u) ** 2 + u * (1 + 3 * u))


def use_prefilter(device: torch.device) -> bool:
    """True on CPUs with AMX tiles, where a bf16 matrix product is several times faster than fp32."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return device.type == "cpu" and probe is not None and bool(probe())
    except Exception:  # a private probe: absent or failing means no
        return False


def candidates(k: int) -> int:
    """How many bf16 candidates the prefilter rescores exactly for ``k`` neighbours."""
    return 2 * int(k) + 64


@torch.no_grad()
def nearest(queries: torch.Tensor, bank: torch.Tensor, k: int, masks: Sequence[np.ndarray | None], *,
            device: torch.device | str = "cpu", budget: int | None = None, prefilter: bool | None = None,
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """For each mask (None = every bank row allowed): ``(sims, index)`` ``[Q, k]`` of the ``k`` most
    similar allowed bank rows of every query (both normalized, ``[Q, D]`` and ``[N, D]``), on the CPU.

    ``prefilter`` (default: :func:`use_prefilter`) finds candidates with a bf16 product, rescores them
    in fp32 and keeps a query's result only when it is provably the exact one: its k-th exact
    similarity is at least the best bf16 similarity left out plus :func:`prefilter_eps` (no row left
    out can be closer); every other query is redone exactly. Results equal the fp32 search's.
    """
    device = torch.device(device)
    budget = budget or (GPU_BUDGET if device.type == "cuda" else CPU_BUDGET)
    n = bank.shape[0]
    k = min(int(k), n)
    bank_d = bank.to(device)
    masks_d = [None if m is None else torch.as_tensor(m, dtype=torch.bool, device=device) for m in masks]
    prefilter = use_prefilter(device) if prefilter is None else prefilter
    fast = prefilter and n <= budget and n > candidates(k)
    cols = min(n, budget)
    rows = max(1, budget // cols)
    bank_b = bank_d.bfloat16() if fast else None
    out: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = [([], []) for _ in masks]
    for q0 in range(0, queries.shape[0], rows):
        q = queries[q0:q0 + rows].to(device)
        found = (_prefiltered(q, bank_d, bank_b, k, masks_d) if bank_b is not None
                 else _exact(q, bank_d, k, masks_d, cols))
        for g, (v, i) in enumerate(found):
            out[g][0].append(v.cpu())
            out[g][1].append(i.cpu())
    empty = (torch.zeros(0, k), torch.zeros(0, k, dtype=torch.long))
    return [(torch.cat(v), torch.cat(i)) if v else empty for v, i in out]


def _exact(q: torch.Tensor, bank: torch.Tensor, k: int, masks: list, cols: int) -> list[tuple[torch.Tensor,
                                                                                           torch.Tensor]]:
    """fp32 top-k of one block of queries, over bank blocks of ``cols`` rows (merged as it goes)."""
    n = bank.shape[0]
    best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(masks)
    for b0 in range(0, n, cols):
        s = q @ bank[b0:b0 + cols].T
        for g, m in enumerate(masks):
            sg = s if m is None else s.masked_fill(~m[b0:b0 + cols], -math.inf)
            v, i = sg.topk(min(k, sg.shape[1]), dim=1)
            i = i + b0
            earlier = best[g]
            if earlier is not None:  # merge with the best of the earlier bank blocks
                v, pos = torch.cat([earlier[0], v], 1).topk(k, dim=1)
                i = torch.cat([earlier[1], i], 1).gather(1, pos)
            best[g] = (v, i)
    return [b for b in best if b is not None]


def _dots(bank: torch.Tensor, cand: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """fp32 ``[R, M]`` similarities of R queries to their M candidate rows of the bank."""
    rows = torch.index_select(bank, 0, cand.reshape(-1)).view(*cand.shape, bank.shape[1])
    return torch.bmm(rows, q.unsqueeze(2)).squeeze(2)


def _prefiltered(q: torch.Tensor, bank: torch.Tensor, bank_b: torch.Tensor, k: int,
                 masks: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """bf16 candidates, exact fp32 rescoring, proof of exactness per query, exact redo where it fails."""
    m_c = candidates(k)
    eps = prefilter_eps(bank.shape[1])
    coarse = q.bfloat16() @ bank_b.T
    found = []
    for m in masks:
        cg = coarse if m is None else coarse.masked_fill(~m, -math.inf)
        vb, ib = cg.topk(m_c + 1, dim=1)
        cand, edge = ib[:, :m_c], vb[:, m_c].float()
        exact = torch.cat([_dots(bank, cand[r:r + 64], q[r:r + 64]) for r in range(0, len(q), 64)])
        if m is not None:
            exact = exact.masked_fill(~m[cand], -math.inf)
        v, pos = exact.topk(k, dim=1)
        i = cand.gather(1, pos)
        redo = torch.nonzero(~(v[:, -1] >= edge + eps)).squeeze(1)
        if len(redo):
            v[redo], i[redo] = _exact(q[redo], bank, k, [m], bank.shape[0])[0]
        found.append((v, i))
    return found


def neighbours(queries: np.ndarray | torch.Tensor, bank: torch.Tensor, labels: np.ndarray, k: int, *,
               device: torch.device | str = "cpu", budget: int | None = None,
               prefilter: bool | None = None) -> list[Neighbours]:
    """The per-finding-group neighbours of raw ``queries`` (normalized here) in the normalized ``bank``
    whose labels ``[N, K]`` (NaN = unknown) decide which rows each finding may use."""
    groups = label_groups(labels)
    found = nearest(normalize(queries), bank, k, [m for _, m in groups], device=device, budget=budget,
                    prefilter=prefilter)
    return [Neighbours(f, s, i) for (f, _), (s, i) in zip(groups, found, strict=True)]


def vote(nb: Neighbours, labels: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """float64 ``[Q, len(nb.findings)]`` weighted votes of the first ``k`` neighbours."""
    sims = nb.sims[:, :k].double()
    idx = nb.index[:, :k]
    w = torch.exp((sims - sims[:, :1]) / float(temperature))
    w = torch.where(torch.isfinite(sims), w, torch.zeros_like(w))  # rows not allowed (fewer than k)
    y = torch.nan_to_num(torch.tensor(labels[:, nb.findings], dtype=torch.float64), nan=0.0)
    yk = y[idx]  # [Q, k, F]
    return ((w.unsqueeze(-1) * yk).sum(1) / w.sum(1, keepdim=True)).numpy()


def scores(nbs: list[Neighbours], labels: np.ndarray, k: int, temperature: float) -> np.ndarray:
    """float32 ``[Q, K]`` kNN scores of every finding (columns in the labels' order)."""
    q = nbs[0].sims.shape[0] if nbs else 0
    out = np.full((q, labels.shape[1]), np.nan)
    for nb in nbs:
        out[:, nb.findings] = vote(nb, labels, k, temperature)
    return out.astype(np.float32)


def predict(queries: np.ndarray, bank: torch.Tensor, labels: np.ndarray, k: int, temperature: float, *,
            device: torch.device | str = "cpu", budget: int | None = None,
            prefilter: bool | None = None) -> np.ndarray:
    """kNN scores ``[Q, K]`` of raw query embeddings against a normalized bank and its labels."""
    nbs = neighbours(queries, bank, labels, k, device=device, budget=budget, prefilter=prefilter)
    return scores(nbs, labels, min(int(k), bank.shape[0]), temperature)

"""adapt.knn: the chunked torch kNN against a brute-force loop and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.adapt import knn


def data(n=300, q=40, d=16, k=3, nan=(0.0, 0.2, 0.5), seed=0):
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    labels = (rng.random((n, k)) < 0.4).astype(np.float32)
    for j, rate in enumerate(nan):
        labels[rng.random(n) < rate, j] = np.nan
    return bank, queries, labels


def brute(bank, queries, labels, k, t):
    """The definition, one query and one finding at a time, in float64: (scores, neighbour indices)."""
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores = np.zeros((len(queries), labels.shape[1]))
    index = np.zeros((len(queries), labels.shape[1], k), dtype=int)
    for i, q in enumerate(qn.astype(np.float64)):
        sims = b.astype(np.float64) @ q
        for f in range(labels.shape[1]):
            known = np.flatnonzero(~np.isnan(labels[:, f]))
            top = known[np.argsort(-sims[known], kind="stable")[:k]]
            w = np.exp(sims[top] / t)
            scores[i, f] = (w * labels[top, f]).sum() / w.sum()
            index[i, f] = top
    return scores, index


@pytest.mark.parametrize(("budget", "prefilter"), [(None, False), (1000, False), (97, False), (None, True),
                                                  (1000, True)])  # blocks of queries, of the bank too; bf16
def test_equals_the_brute_force_reference_with_unknown_labels(budget, prefilter):
    bank, queries, labels = data()
    ref, ref_idx = brute(bank, queries, labels, 7, 0.07)
    nbs = knn.neighbours(queries, knn.normalize(bank), labels, 7, budget=budget, prefilter=prefilter)
    for nb in nbs:
        for f in nb.findings:
            assert np.array_equal(nb.index.numpy(), ref_idx[:, f]), f  # the same neighbours, same order
    got = knn.scores(nbs, labels, 7, 0.07)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert len(nbs) == 3  # three different known-label masks: three top-k passes over one product


def test_findings_sharing_a_mask_share_one_pass_and_unknown_rows_never_vote():
    labels = np.array([[1, 0, np.nan], [0, 1, 1], [np.nan, 1, 0], [1, 1, np.nan]], dtype=np.float32)
    groups = knn.label_groups(labels)
    assert [g[0] for g in groups] == [[0], [1], [2]]
    assert groups[1][1] is None and groups[0][1].tolist() == [True, True, False, True]
    same = np.stack([labels[:, 1], labels[:, 1]], 1)
    assert [g[0] for g in knn.label_groups(same)] == [[0, 1]]
    # k larger than the known rows of a finding: only the known rows vote
    bank, queries, lab = data(n=30, q=5, nan=(0.0, 0.9, 0.0))
    n_known = int((~np.isnan(lab[:, 1])).sum())
    got = knn.predict(queries, knn.normalize(bank), lab, 30, 0.1)
    ref, _ = brute(bank, queries, lab, n_known, 0.1)
    np.testing.assert_allclose(got[:, 1], ref[:, 1], rtol=1e-5)


@pytest.mark.parametrize(("t", "prefilter"), [(0.01, False), (0.07, False), (1.0, False), (0.07, True)])
def test_equals_scikit_learn_brute_cosine_with_exponential_weights(t, prefilter):
    from sklearn.neighbors import KNeighborsClassifier

    bank, queries, labels = data(n=500, q=60, d=32, nan=(0.0, 0.0, 0.0), seed=1)
    k = 15
    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine",
                               weights=lambda d: np.exp((1 - d) / t)).fit(bank, labels.astype(int))
    proba = np.stack([p[:, 1] for p in clf.predict_proba(queries)], 1)
    _, sk_idx = clf.kneighbors(queries)
    nbs = knn.neighbours(queries, knn.normalize(bank), labels, k, prefilter=prefilter)
    assert len(nbs) == 1 and np.array_equal(nbs[0].index.numpy(), sk_idx)
    np.testing.assert_allclose(knn.scores(nbs, labels, k, t), proba, rtol=1e-5, atol=1e-6)


def test_the_bf16_prefilter_redoes_exactly_the_queries_it_cannot_prove(monkeypatch):
    rng = np.random.default_rng(4)
    base = rng.standard_normal((1, 32)).astype(np.float32)
    bank = np.concatenate([base + 1e-3 * rng.standard_normal((200, 32), dtype=np.float32),  # near-ties
                           rng.standard_normal((400, 32), dtype=np.float32)])
    queries = np.concatenate([base, rng.standard_normal((9, 32), dtype=np.float32)])
    labels = (rng.random((600, 2)) < 0.5).astype(np.float32)
    redone = []
    exact = knn._exact

    def spy(q, *args):
        redone.append(len(q))
        return exact(q, *args)

    monkeypatch.setattr(knn, "_exact", spy)
    b = knn.normalize(bank)
    fast = knn.neighbours(queries, b, labels, 5, prefilter=True)[0]
    assert redone and redone[0] >= 1  # the query among 200 near-identical rows cannot be proven: redone
    assert sum(redone) < len(queries)  # the others were proven
    slow = knn.neighbours(queries, b, labels, 5, prefilter=False)[0]
    assert torch.equal(fast.index[1:], slow.index[1:])  # query 0: near-ties at 1e-6, order may differ
    assert torch.allclose(fast.sims, slow.sims, atol=1e-6)
    assert 0.011 < knn.prefilter_eps(768) < 0.0125

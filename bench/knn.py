"""cxrbench's kNN (chunked torch matrix products + top-k per finding group) against scikit-learn.

The baseline is ``KNeighborsClassifier(algorithm="brute", metric="cosine")`` with the same
temperature weights ``exp(s / T) = exp((1 - d) / T)`` on the same embeddings, fitted on the train
bank with every finding as one output (multi-output: one neighbour search for all findings, as
cxrbench does when no label is unknown). Both run in this process with the same threads; the figure
is the wall time of scoring every test embedding, printed as a ratio against scikit-learn measured
in the same run. Correctness is checked on the same data: identical neighbours (first 2,000 queries)
and the largest score difference. Goal: >= 5x on a CPU.

Embeddings are drawn from a Gaussian mixture (40 clusters in 768 dimensions), labels depend on the
cluster, so neighbourhoods mean something; the timing does not depend on it.

    python bench/knn.py                 # 100,000 x 768 train, 20,000 test (a few minutes on 2 cores)
    python bench/knn.py --smoke         # 5,000 x 64 train, 1,000 test
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def embeddings(n_train: int, n_test: int, dim: int, findings: int, seed: int = 0):
    """(train [N, D], test [Q, D] float32, train labels [N, K] in {0, 1})."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((40, dim)).astype(np.float32)
    ct, cq = rng.integers(0, 40, n_train), rng.integers(0, 40, n_test)
    train = centers[ct] + 1.5 * rng.standard_normal((n_train, dim), dtype=np.float32)
    test = centers[cq] + 1.5 * rng.standard_normal((n_test, dim), dtype=np.float32)
    p = rng.random((40, findings))
    labels = (rng.random((n_train, findings)) < p[ct]).astype(np.float32)
    return train, test, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train", type=int, default=100_000)
    p.add_argument("--test", type=int, default=20_000)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--findings", type=int, default=14)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--smoke", action="store_true", help="small sizes: seconds")
    args = p.parse_args()
    if args.smoke:
        args.train, args.test, args.dim = 5_000, 1_000, 64
    if args.threads:
        torch.set_num_threads(args.threads)
    from sklearn.neighbors import KNeighborsClassifier

    from cxrbench.adapt import knn

    train, test, labels = embeddings(args.train, args.test, args.dim, args.findings)
    t, k = args.temperature, args.k

    start = time.perf_counter()
    bank = knn.normalize(train)
    ours = knn.predict(test, bank, labels, k, t)
    t_ours = time.perf_counter() - start

    clf = KNeighborsClassifier(n_neighbors=k, algorithm="brute", metric="cosine",
                               weights=lambda d: np.exp((1.0 - d) / t))
    start = time.perf_counter()
    clf.fit(train, labels.astype(np.int64))
    theirs = np.stack([proba[:, 1] for proba in clf.predict_proba(test)], 1)
    t_sk = time.perf_counter() - start

    n_check = min(2_000, args.test)
    _, sk_idx = clf.kneighbors(test[:n_check])
    our_idx = knn.neighbours(test[:n_check], bank, labels, k)[0].index.numpy()
    same = int((our_idx == sk_idx).all(axis=1).sum())
    same_set = int((np.sort(our_idx, 1) == np.sort(sk_idx, 1)).all(axis=1).sum())
    diff = float(np.abs(ours - theirs).max())
    # queries whose scores differ: is it a float32 near-tie at the k-th neighbour (exact float64 gap)?
    differ = np.flatnonzero(np.abs(ours - theirs).max(axis=1) > 1e-4)
    gaps = []
    for i in differ:
        exact = np.sort(train.astype(np.float64) @ test[i].astype(np.float64)
                        / np.linalg.norm(train.astype(np.float64), axis=1) / np.linalg.norm(test[i]))[::-1]
        gaps.append(exact[k - 1] - exact[k])
    print(f"knn: {args.train:,} x {args.dim} train, {args.test:,} test embeddings, {args.findings} findings, "
          f"k={k}, T={t:g}, {torch.get_num_threads()} torch thread(s); one run on a possibly shared machine")
    print(f"  scikit-learn brute cosine   {t_sk:8.2f} s   (baseline)")
    print(f"  cxrbench adapt.knn          {t_ours:8.2f} s   speed-up {t_sk / t_ours:5.1f}x (goal >= 5x)")
    print(f"  same neighbours             {same_set:,} of {n_check:,} queries as sets, {same:,} in the same "
          "order (float32 near-ties may swap)")
    print(f"  max |score difference|      {diff:.2e} over {args.test:,} x {args.findings} scores; "
          f"{len(differ)} queries differ by > 1e-4"
          + (f", all at near-ties (exact gap between neighbour {k} and {k + 1}: at most {max(gaps):.1e})"
             if gaps else ""))


if __name__ == "__main__":
    main()

"""train.methods.knn: k and T chosen on validation, the bank file, and the method's registry entry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.adapt import knn
from cxrbench.common.errors import InputError
from cxrbench.stats.metrics import mean_auroc
from cxrbench.train.methods import knn as method


def data(n=300, q=40, d=16, k=3, nan=(0.0, 0.2, 0.5), seed=0):
    rng = np.random.default_rng(seed)
    bank = rng.standard_normal((n, d)).astype(np.float32)
    queries = rng.standard_normal((q, d)).astype(np.float32)
    labels = (rng.random((n, k)) < 0.4).astype(np.float32)
    for j, rate in enumerate(nan):
        labels[rng.random(n) < rate, j] = np.nan
    return bank, queries, labels


def test_choose_picks_the_best_validation_pair_and_reports_the_grid():
    bank, val, labels = data(n=200, q=80, seed=2)
    rng = np.random.default_rng(3)
    val_labels = (rng.random((80, 3)) < 0.4).astype(np.float32)
    b = knn.normalize(bank)
    k, t, grid = method.choose(val, val_labels, b, labels, [5, 500, 20], [0.5, 0.05])
    assert [(g["k"], g["temperature"]) for g in grid] == [(5, 0.05), (5, 0.5), (20, 0.05), (20, 0.5),
                                                          (200, 0.05), (200, 0.5)]  # k clamped to the bank
    for g in grid:  # each figure is the mean AUROC of the scores at that pair
        m, _ = mean_auroc(val_labels, knn.predict(val, b, labels, g["k"], g["temperature"]))
        assert g["val_mean_auroc"] == pytest.approx(m, abs=1e-12)
    best = max(grid, key=lambda g: g["val_mean_auroc"])
    assert (k, t) == (best["k"], best["temperature"])


def test_choose_refuses_a_validation_split_without_both_classes():
    bank, val, labels = data(n=50, q=10)
    with pytest.raises(InputError, match="k and T cannot be chosen"):
        method.choose(val, np.ones((10, 3), np.float32), knn.normalize(bank), labels, [5], [0.1])


def test_bank_roundtrip_and_a_damaged_bank_is_one_error(tmp_path):
    bank, _, labels = data(n=20)
    method.save_bank(tmp_path / "bank.safetensors", knn.normalize(bank), labels, {"k": "5"})
    emb, lab, meta = method.load_bank(tmp_path / "bank.safetensors")
    assert torch.allclose(emb, knn.normalize(bank)) and np.array_equal(np.isnan(lab), np.isnan(labels))
    assert meta["k"] == "5"
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="cannot read the kNN bank"):
        method.load_bank(tmp_path / "bad.safetensors")

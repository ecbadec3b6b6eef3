"""Label budget (nested, stratified patient subsets) and label noise (symmetric flips)."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.common.errors import InputError
from cxrbench.data.budget import apply_budget, budget_mask, budget_patients, flip_labels


def labels_of(n_patients=400, images=2, seed=0):
    rng = np.random.default_rng(seed)
    per_patient = (rng.random((n_patients, 3)) < [0.03, 0.15, 0.4]).astype(np.float32)
    labels = np.repeat(per_patient, images, axis=0)
    labels[rng.random(labels.shape) < 0.05] = np.nan
    patients = np.repeat([f"p{i:04d}" for i in range(n_patients)], images)
    return patients, labels, per_patient


def test_budgets_are_nested_patient_level_and_stratified():
    patients, labels, per_patient = labels_of()
    masks = {f: budget_mask(patients, labels, f, seed=3) for f in (0.05, 0.1, 0.25, 0.5, 1.0)}
    for small, large in [(0.05, 0.1), (0.1, 0.25), (0.25, 0.5), (0.5, 1.0)]:
        assert not (masks[small] & ~masks[large]).any()  # every smaller subset inside the larger
    assert masks[1.0].all()
    for f, m in masks.items():
        kept = set(patients[m])
        assert len(kept) == budget_patients(f, 400)
        assert all(m[patients == p].all() for p in list(kept)[:20])  # whole patients only
        if f >= 0.25:  # each finding's positives keep about their share (rarest: 12 patients in all)
            pos = per_patient[[int(p[1:]) for p in kept]].sum(axis=0)
            np.testing.assert_allclose(pos, f * per_patient.sum(axis=0), atol=max(2, 0.15 * f * 160))
    rare = per_patient[:, 0] == 1  # the rarest finding reaches even the 5% budget
    assert per_patient[[int(p[1:]) for p in set(patients[masks[0.05]])], 0].sum() >= 1 and rare.sum() > 5
    again = budget_mask(patients[::-1], labels[::-1], 0.25, seed=3)[::-1]
    np.testing.assert_array_equal(again, masks[0.25])  # row order does not matter
    assert not np.array_equal(budget_mask(patients, labels, 0.25, seed=4), masks[0.25])
    assert len(set(patients[budget_mask(patients, labels, 37, seed=3)])) == 37  # an absolute count


def test_budget_errors():
    with pytest.raises(InputError, match="not positive"):
        budget_patients(0, 10)
    with pytest.raises(InputError, match="neither a share"):
        budget_patients(2.5, 10)
    with pytest.raises(InputError, match="training split has 10"):
        budget_patients(11, 10)


def test_flips_only_known_labels_at_the_given_rate():
    _, labels, _ = labels_of()
    noisy, flipped = flip_labels(labels, 0.2, seed=1)
    known = ~np.isnan(labels)
    assert np.array_equal(np.isnan(noisy), np.isnan(labels))  # unknown stays unknown
    changed = known & (noisy != labels)
    assert changed.sum(axis=0).tolist() == flipped == [round(0.2 * k) for k in known.sum(axis=0)]
    assert set(np.unique(noisy[known])) <= {0.0, 1.0}
    np.testing.assert_array_equal(flip_labels(labels, 0.2, seed=1)[0], noisy)
    assert flip_labels(labels, 0.0, seed=1)[1] == [0, 0, 0]
    with pytest.raises(InputError, match="not in"):
        flip_labels(labels, 1.0)


def test_training_uses_the_budget_and_the_noise_and_records_them(tiny_cache_factory, tmp_path):
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=60)
    ds = CacheDataset(cache, split="train")
    full_labels = ds.labels.copy()
    done = apply_budget(ds, 0.5, 0.25, seed=2)
    assert done["budget"]["patients"] == 18 and done["budget"]["of_patients"] == 36 and len(ds) == 18
    assert ds.label_changes is done and len(ds.patient_ids) == len(ds.rows) == len(ds.labels) == 18
    assert sum(done["noise"]["flipped"].values()) > 0
    assert apply_budget(CacheDataset(cache, split="train")) is None
    run = tmp_path / "run"
    cfg = TrainConfig(cache=str(cache), init="random-vit-test", out=str(run), epochs=1, batch_size=8, lr=1e-3,
                      workers=0, label_fraction=0.5, label_noise=0.25, label_seed=2)
    train(cfg, quiet=True)
    import json

    meta = json.loads((run / "best.json").read_text())
    assert meta["training_labels"] == json.loads(json.dumps(done))
    assert full_labels.shape[0] == 36
    ident = cfg.step_identity()
    assert ident["label_fraction"] == 0.5 and ident["label_noise"] == 0.25 and ident["label_seed"] == 2
    plain = TrainConfig(cache="-", init="-", out="-").step_identity()
    assert not {"label_fraction", "label_noise", "label_seed"} & set(plain)  # old keys unchanged

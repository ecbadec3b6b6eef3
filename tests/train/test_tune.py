"""Tuning on validation (train.tune): schedules, the tie rule, trials that never read the test split, the
Python door."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrbench.common.errors import InputError
from cxrbench.data.dataset import CacheDataset, SplitGuardError, only_splits
from cxrbench.train import tune as T

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_grid_points_and_schedules_within_the_budget():
    space = {"lr": [1e-4, 1e-3], "weight_decay": [0.0, 0.05, 0.1]}
    points = T.grid_points(space)
    assert points[:2] == [{"lr": 1e-4, "weight_decay": 0.0}, {"lr": 1e-4, "weight_decay": 0.05}]
    assert len(points) == 6
    assert T.schedule(6, "grid", 4) == (list(range(6)), [T.Rung(6, 4)])
    idx, rungs = T.schedule(6, "grid", 4, budget=13)  # 3 trials of 4 epochs: random search, grid order
    assert len(idx) == 3 and idx == sorted(idx) and rungs == [T.Rung(3, 4)]
    assert T.schedule(6, "grid", 4, budget=13)[0] == idx  # seeded: the same subset every time
    idx, rungs = T.schedule(9, "halving", 9, eta=3, min_epochs=1)
    assert rungs == [T.Rung(9, 1), T.Rung(3, 3), T.Rung(1, 9)] and idx == list(range(9))
    # the same budget buys the halving search more points than the grid
    budget = 27
    assert len(T.schedule(27, "grid", 9, budget)[0]) == 3
    n_halving = len(T.schedule(27, "halving", 9, budget, eta=3)[0])
    assert (
        n_halving > 3 and sum(r.configs * r.epochs for r in T.schedule(27, "halving", 9, budget)[1]) <= budget
    )
    with pytest.raises(InputError, match="does not cover one trial"):
        T.schedule(6, "grid", 10, budget=5)
    with pytest.raises(InputError, match="unknown tuning strategy"):
        T.schedule(6, "random", 10)


def test_the_tie_rule_prefers_the_point_listed_first():
    trials = [
        T.Trial({"lr": 3}, 2, 0, 1, 0.81234),
        T.Trial({"lr": 1}, 0, 0, 1, 0.81231),
        T.Trial({"lr": 2}, 1, 0, 1, 0.7),
        T.Trial({"lr": 4}, 3, 0, 1, float("nan")),
    ]
    assert [t.point["lr"] for t in T.rank(trials)] == [1, 3, 2, 4]  # 0.8123 both: the earlier point


def test_check_space_names_the_bad_key_and_value():
    assert T.check_space({"lr": [1e-4, 1e-3]}, {}, "tuning") == {"lr": [1e-4, 1e-3]}
    with pytest.raises(InputError, match="'seed' cannot be tuned") as e:
        T.check_space({"seed": [1, 2]}, {}, "tuning")
    assert e.value.where == "tuning.space.seed"
    with pytest.raises(InputError, match="did you mean 'lr'"):
        T.check_space({"lrr": [1]}, {}, "tuning")
    with pytest.raises(InputError, match="without repeats"):
        T.check_space({"lr": [1e-4, 1e-4]}, {}, "tuning")
    with pytest.raises(InputError):
        T.check_space({"lr": [-1.0]}, {}, "tuning")


def test_the_split_guard_refuses_the_test_split(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=20)
    with only_splits(("train", "val"), "a tuning run"):
        CacheDataset(cache, split="val")
        with pytest.raises(SplitGuardError, match="a tuning run may read only the train, val split"):
            CacheDataset(cache, split="test")
        with pytest.raises(SplitGuardError, match="every split"):
            CacheDataset(cache)
    CacheDataset(cache, split="test")  # outside the guard: allowed


def test_tune_runs_every_trial_on_val_then_chooses_and_records(tmp_path, tiny_cache_factory, monkeypatch):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    opened: list[object] = []
    original = CacheDataset.__init__

    def spy(self, cache_dir, split=None, findings=None):
        opened.append(split)
        original(self, cache_dir, split=split, findings=findings)

    monkeypatch.setattr(CacheDataset, "__init__", spy)
    options = {"cache": str(cache), "init": "random-vit-test", "batch_size": 8, "workers": 0, "epochs": 3}
    settings = T.TuningSettings(
        space={"lr": [1e-5, 1e-3], "weight_decay": [0.0, 0.1]},
        strategy="halving",
        epochs=2,
        eta=2,
        min_epochs=1,
    )
    doc = T.tune(options, settings, tmp_path / "tuning")
    assert set(opened) <= {"train", "val"} and "test" not in opened
    saved = json.loads((tmp_path / "tuning" / T.TUNING_FILE).read_text())
    assert saved["chosen"] == doc["chosen"] and doc["metric"] == "val_mean_auroc" and doc["split"] == "val"
    assert [(r["configs"], r["epochs"]) for r in doc["rungs"]] == [(4, 1), (2, 2)]
    assert doc["trial_epochs"] == 4 * 1 + 2 * 2 and len(doc["trials"]) == 6
    last = [t for t in doc["trials"] if t["rung"] == 1]
    best = max(round(t["val_mean_auroc"], 4) for t in last)
    assert doc["value"] == pytest.approx(next(t for t in last if t["chosen"])["val_mean_auroc"])
    assert round(doc["value"], 4) == best and doc["default"] == {"lr": 1e-5, "weight_decay": 0.0}
    # the second rung trained the best two of the first
    first = T.rank(
        [T.Trial(t["point"], t["order"], 0, 1, t["val_mean_auroc"]) for t in doc["trials"] if t["rung"] == 0]
    )
    assert sorted(map(str, (t["point"] for t in last))) == sorted(map(str, (first[0].point, first[1].point)))
    trial = tmp_path / "tuning" / "r0" / "t0"
    assert (trial / T.TRIAL_RUN / "best.json").is_file() and not (
        trial / T.TRIAL_RUN / "best.safetensors"
    ).exists()
    assert json.loads((trial / T.TRIAL_FILE).read_text())["splits_read"] == ["train", "val"]
    assert T.chosen_options(tmp_path / "tuning" / T.TUNING_FILE) == doc["chosen"]
    opened.clear()
    again = T.tune(options, settings, tmp_path / "tuning")  # resumable: recorded trials are read back
    assert again["chosen"] == doc["chosen"] and opened == []


def test_a_trial_that_reads_the_test_split_fails(tmp_path, tiny_cache_factory, monkeypatch):
    """The guard is real: a training loop that opened the test split inside a trial would raise."""
    from cxrbench.train import setup

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=30)
    original = setup.open_data

    def leaky(cfg):
        CacheDataset(cfg.cache, split="test")
        return original(cfg)

    monkeypatch.setattr(setup, "open_data", leaky)
    monkeypatch.setattr("cxrbench.train.loop.open_data", leaky, raising=False)
    options = {"cache": str(cache), "init": "random-vit-test", "batch_size": 8, "workers": 0, "epochs": 1}
    with pytest.raises(SplitGuardError, match="tried to read test"):
        T.run_trial(options, tmp_path / "trial", point={"lr": 1e-3})
    assert not (tmp_path / "trial" / T.TRIAL_FILE).exists()
    assert np.isnan(T.Trial({}, 0, 0, 1, float("nan")).value)


def test_a_searched_epochs_key_trains_each_point_for_its_own_epochs():
    grid = T.TuningSettings(space={"epochs": [2, 5], "lr": [1e-4]})
    idx, rungs = grid.schedule(10)
    assert rungs == [T.Rung(2, 5)] and grid.trial_epochs(rungs[0]) is None  # budget counts the longest
    assert T.TuningSettings(space={"lr": [1e-4]}, epochs=3).trial_epochs(T.Rung(1, 3)) == 3
    for bad in (T.TuningSettings(space={"epochs": [2, 5]}, epochs=3),
                T.TuningSettings(space={"epochs": [2, 5]}, strategy="halving")):
        with pytest.raises(InputError, match="epochs is searched"):
            bad.schedule(10)

"""Tuning as study steps (study.tuning, study.plan_tuning): which arms are tuned with which space, the
trial and choice steps, the tuned runs reading the choice, and a study without tuning unchanged."""

from __future__ import annotations

import json

import pytest

from cxrbench.common.errors import InputError
from cxrbench.study.plan import build_plan
from cxrbench.study.tuning import arm_tuning
from cxrbench.train.tune import TRIAL_FILE, TUNING_FILE, TUNING_FORMAT

from .test_plan import mini

INITS = {
    "rand": {"init": "random-vit-test", "datasets": ["a"]},
    "dino": {"init": "dinov2-vits14", "datasets": ["a"]},
}
TUNING = {"space": {"lr": [1e-4, 1e-3], "weight_decay": [0.0, 0.05], "lora_rank": [4, 8]}, "epochs": 1}


def test_arms_are_tuned_with_their_own_space_and_overrides(tmp_path):
    study = mini(
        tmp_path,
        inits={
            **INITS,
            "dino": {**INITS["dino"], "tuning": {"space": {"lr": [1e-5]}}},
            "off": {"init": "random-vit-test", "datasets": ["a"], "tuning": False},
        },
        tuning={**TUNING, "methods": {"lora": {"strategy": "halving"}}},
        seeds=[3, 4],
    )
    cfg, arms = study.config, study.config.inits
    full = arm_tuning(cfg, arms["rand"], "full")
    assert full.space == {"lr": [1e-4, 1e-3], "weight_decay": [0.0, 0.05]}  # lora_rank: lora's only
    assert full.seed == 3 and full.epochs == 1 and full.strategy == "grid"
    lora = arm_tuning(cfg, arms["rand"], "lora")
    assert lora.space["lora_rank"] == [4, 8] and lora.strategy == "halving"
    assert arm_tuning(cfg, arms["dino"], "full").space["lr"] == [1e-5]  # the init's keys over the study's
    assert arm_tuning(cfg, arms["off"], "full") is None
    assert arm_tuning(cfg, arms["rand"], "knn") is None  # nothing to tune: it chooses k and T itself
    assert arm_tuning(mini(tmp_path, inits=INITS).config, arms["rand"], "full") is None


def test_trials_choice_and_tuned_runs_are_steps_and_untuned_keys_stay(tmp_path):
    untuned = build_plan(mini(tmp_path, inits=INITS, seeds=[0, 1]))
    plan = build_plan(mini(tmp_path, inits=INITS, seeds=[0, 1], tuning=TUNING))
    # every step of the study without tuning keeps its id and key (the report step excepted)
    same = {s.id: s.key for s in untuned.steps if s.id != "report"}
    assert {i: plan[i].key for i in same} == same
    trials = [s for s in plan.of_kind("tune") if s.id.startswith("tune/a/r224/rand/")]
    assert [s.id for s in trials] == [f"tune/a/r224/rand/r0/t{k}" for k in range(4)]
    t = trials[3]
    assert t.params.point == {"lr": 1e-3, "weight_decay": 0.05} and t.params.epochs == 1
    assert t.config["train"]["lr"] == 1e-3 and t.config["train"]["seed"] == 0 and t.complete == (TRIAL_FILE,)
    assert t.out == plan.study.layout.tuning_dir("a", "r224", "rand") / "r0" / "t3"
    assert t.group == t.id  # each trial its own shard group and job
    chosen = plan["tuned/a/r224/rand"]
    assert set(chosen.deps) == {s.id for s in trials} and chosen.config["metric"] == "val_mean_auroc"
    run = plan["train/a/r224/rand/tuned/s1"]
    assert chosen.id in run.deps and run.config["tuning"] == chosen.id
    assert run.params.tuning == str(chosen.out / TUNING_FILE)
    assert run.out == plan.study.layout.run_dir("a", "r224", "rand", 1, "tuned/")
    assert "compare/a/r224/tuned/s1" in plan.by_id and "pooled/a/r224/tuned" in plan.by_id
    assert not any(s.id.startswith("external/") and "/tuned/" in s.id for s in plan.steps)
    other = build_plan(
        mini(
            tmp_path,
            inits=INITS,
            seeds=[0, 1],
            tuning={**TUNING, "space": {**TUNING["space"], "lr": [1e-4, 3e-3]}},
        )
    )
    assert (
        other["tuned/a/r224/rand"].key != chosen.key
        and other["train/a/r224/rand/tuned/s0"].key != plan["train/a/r224/rand/tuned/s0"].key
    )
    assert other["train/a/r224/rand/s0"].key == plan["train/a/r224/rand/s0"].key


def test_successive_halving_rungs_read_the_rung_before(tmp_path):
    plan = build_plan(
        mini(
            tmp_path,
            inits={"rand": INITS["rand"]},
            tuning={
                "space": {"lr": [1e-4, 3e-4, 1e-3, 3e-3]},
                "strategy": "halving",
                "epochs": 4,
                "eta": 2,
                "min_epochs": 1,
            },
        )
    )
    trials = {s.id: s for s in plan.of_kind("tune")}
    assert len(trials) == 4 + 2 + 1
    r1 = trials["tune/a/r224/rand/r1/t1"]
    assert r1.params.point is None and r1.params.slot == 1 and r1.params.epochs == 2
    assert set(r1.deps) >= {f"tune/a/r224/rand/r0/t{k}" for k in range(4)}
    assert r1.params.previous == tuple(str(trials[f"tune/a/r224/rand/r0/t{k}"].out) for k in range(4))
    assert trials["tune/a/r224/rand/r2/t0"].params.epochs == 4


def test_the_budget_limits_the_trials(tmp_path):
    plan = build_plan(
        mini(
            tmp_path,
            inits={"rand": INITS["rand"]},
            tuning={
                "space": {"lr": [1e-5, 1e-4, 1e-3], "weight_decay": [0.0, 0.1]},
                "epochs": 2,
                "budget": 6,
            },
        )
    )
    assert len(plan.of_kind("tune")) == 3  # 6 trial-epochs / 2 epochs: a random half of the grid


@pytest.mark.parametrize(
    "tuning,match",
    [
        ({"space": {"seed": [1, 2]}}, "'seed' cannot be tuned"),
        ({"space": {"lrr": [1e-3]}}, "did you mean 'lr'"),
        ({"space": {"lr": [1e-3]}, "strategy": "bayes"}, "strategy"),
        ({"space": {"lr": [1e-3]}, "methods": {"lorra": {}}}, "did you mean 'lora'"),
        ({"space": {"lr": [1e-3]}, "epochs": 4, "budget": 2}, "does not cover one trial"),
    ],
)
def test_tuning_errors_name_the_key(tmp_path, tuning, match):
    with pytest.raises(InputError, match=match):
        build_plan(mini(tmp_path, inits={"rand": INITS["rand"]}, tuning=tuning))


def test_the_tuned_run_reads_the_chosen_values(tmp_path):
    from cxrbench.study.executors import Context, train_config

    study = mini(tmp_path, inits={"rand": INITS["rand"]}, tuning=TUNING)
    plan = build_plan(study)
    run = plan["train/a/r224/rand/tuned/s0"]
    path = plan["tuned/a/r224/rand"].out / TUNING_FILE
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": TUNING_FORMAT, "chosen": {"lr": 1e-3, "weight_decay": 0.05}}))
    cfg = train_config(run, Context(study, plan))
    assert (cfg.lr, cfg.weight_decay, cfg.epochs) == (1e-3, 0.05, 2)  # the runs' own schedule
    assert train_config(plan["train/a/r224/rand/s0"], Context(study, plan)).lr == 1e-5


E2E = """\
name: tuned-e2e
datasets:
  t: {adapter: nih, labels: "cardiomegaly,pleural_effusion", phantom: {patients: 60, size: 32, seed: 3}}
preprocess: {px32: {size: 32}}
inits: [random-vit-test]
train: {epochs: 1, batch_size: 16, lr: 0.001, workers: 0}
evaluation: {bootstrap: 20}
tuning: {space: {lr: [0.0003, 0.003]}}
"""


@pytest.mark.slow
def test_a_tuned_study_runs_end_to_end_and_its_trials_never_open_the_test_split(tmp_path, monkeypatch):
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.study.load import load_study
    from cxrbench.study.runner import run_study

    path = tmp_path / "study.yaml"
    path.write_text(E2E)
    study = load_study(path, out=tmp_path / "out")
    opened: list[tuple[str, object]] = []
    original = CacheDataset.__init__

    def spy(self, cache_dir, split=None, findings=None):
        from cxrbench.data.dataset import _ALLOWED_SPLITS

        opened.append(("guarded" if _ALLOWED_SPLITS.get() else "free", split))
        original(self, cache_dir, split=split, findings=findings)

    monkeypatch.setattr(CacheDataset, "__init__", spy)
    summary = run_study(study, quiet=True, device="cpu")
    assert not summary.failed, summary.failed
    guarded = {s for g, s in opened if g == "guarded"}
    assert guarded == {"train", "val"} and ("free", "test") in opened  # the final evaluation reads test
    plan = build_plan(study)
    assert all(s.status == "done" for s in plan.steps)
    chosen = json.loads((plan["tuned/t/px32/random-vit-test"].out / TUNING_FILE).read_text())
    run = plan["train/t/px32/random-vit-test/tuned/s0"]
    assert f"lr: {chosen['chosen']['lr']}" in (run.out / "config.yaml").read_text()
    csv = (study.layout.report_dir / "results.csv").read_text()
    assert "tuned_lr" in csv.splitlines()[0]
    assert "Does the ranking survive tuning?" in (study.layout.report_dir / "report.md").read_text()

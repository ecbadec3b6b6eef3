"""What the training seed varies (study.seeds): deterministic arms run once, pretraining per seed or
shared, and the words for the variance a seed SD covers."""

from __future__ import annotations

import pytest

from cxrbench.common.errors import InputError
from cxrbench.study.plan import build_plan
from cxrbench.study.seeds import deterministic, pretrain_seeds, seed_variance

from .test_plan import mini


def test_a_deterministic_method_on_fixed_weights_runs_once_and_is_compared_at_every_seed(tmp_path):
    inits = {"rand": {"init": "random-vit-test", "datasets": ["a"]},
             "dino": {"init": "dinov2-vits14", "datasets": ["a"]}}
    plan = build_plan(mini(tmp_path, inits=inits, seeds=[0, 1], adaptations=["full", "knn"]))
    runs = {s.id for s in plan.of_kind("train")}
    assert "train/a/r224/dino/knn/s0" in runs and "train/a/r224/dino/knn/s1" not in runs
    assert {"train/a/r224/rand/knn/s0", "train/a/r224/rand/knn/s1"} <= runs  # random weights vary
    assert {"train/a/r224/dino/s0", "train/a/r224/dino/s1"} <= runs  # fine-tuning varies
    assert plan["eval/a/r224/dino/knn/s0"].params.deterministic
    assert not plan["eval/a/r224/rand/knn/s0"].params.deterministic
    s1 = plan["compare/a/r224/knn/s1"]
    assert s1.params.runs["dino"] == plan["eval/a/r224/dino/knn/s0"].params.run  # its one run, every seed
    assert "eval/a/r224/dino/knn/s0" in s1.deps
    pooled = plan["pooled/a/r224/knn"]
    assert len(pooled.params.runs["dino"]) == 1 and len(pooled.params.runs["rand"]) == 2


def test_pretraining_per_seed_or_shared(tmp_path):
    ssl = {"init": "ssl:cxr", "base": "random-vit-test", "datasets": ["a"], "pretrain": {"epochs": 1}}
    dom = {"init": "domain:src", "base": "random-vit-test", "datasets": ["a"]}
    shared = build_plan(mini(tmp_path, inits={"ssl": ssl, "dom": dom}, seeds=[0, 1],
                             comparisons={"reference": "dom"}))
    assert [s.id for s in shared.of_kind("ssl")] == ["ssl/ssl/r224"]
    assert len(shared.of_kind("pretrain")) == 2  # domain: one per seed (its default)
    per = build_plan(mini(tmp_path, seeds=[0, 1], comparisons={"reference": "dom"},
                          inits={"ssl": {**ssl, "pretrain_seeds": "per-seed"},
                                 "dom": {**dom, "pretrain_seeds": "shared"}}))
    ssl_steps = {s.id: s for s in per.of_kind("ssl")}
    assert set(ssl_steps) == {"ssl/ssl/r224/s0", "ssl/ssl/r224/s1"}
    assert ssl_steps["ssl/ssl/r224/s1"].config["pretrain"]["seed"] == 1
    assert ssl_steps["ssl/ssl/r224/s1"].out == per.study.layout.out / "ssl" / "ssl" / "s1" / "r224"
    assert "ssl/ssl/r224/s1" in per["train/a/r224/ssl/s1"].deps
    pre = per.of_kind("pretrain")
    assert len(pre) == 1 and pre[0].id.endswith("/s0")  # shared: the first seed's, for every seed
    assert pre[0].id in per["train/a/r224/dom/s1"].deps
    assert per["train/a/r224/dom/s1"].group == per["train/a/r224/dom/s0"].group
    with pytest.raises(InputError, match="'pretrain_seeds'"):
        mini(tmp_path, inits={"rand": {"init": "random-vit-test", "pretrain_seeds": "shared"}})


def test_the_words_for_the_variance_a_seed_sd_covers(tmp_path):
    study = mini(tmp_path, inits={
        "rand": {"init": "random-vit-test"}, "dino": {"init": "dinov2-vits14"},
        "ssl": {"init": "ssl:cxr", "base": "random-vit-test"},
        "ssl2": {"init": "ssl:cxr2", "base": "random-vit-test", "pretrain_seeds": "per-seed"},
        "dom": {"init": "domain:src", "base": "random-vit-test"}})
    arms = study.config.inits
    assert pretrain_seeds(arms["ssl"]) == "shared" and pretrain_seeds(arms["dom"]) == "per-seed"
    assert pretrain_seeds(arms["rand"]) is None
    assert deterministic(arms["dino"], "knn") and not deterministic(arms["rand"], "knn")
    assert deterministic(arms["ssl"], "knn") and not deterministic(arms["ssl2"], "knn")
    assert seed_variance(arms["dino"], "knn").startswith("none: deterministic")
    assert seed_variance(arms["rand"], "full").startswith("the random initialization and fine-tuning")
    assert seed_variance(arms["dino"], "full").endswith("the pretrained weights are fixed")
    assert "only: one self-supervised pretraining run is shared" in seed_variance(arms["ssl"], "full")
    assert seed_variance(arms["ssl2"], "full").startswith("self-supervised pretraining (one run per seed)")
    assert seed_variance(arms["dom"], "linear").startswith("supervised pretraining (one run per seed) and "
                                                           "the head's training")

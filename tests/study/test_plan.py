"""The step graph: structure, content keys, statuses from markers, sharding."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.schema import write_index
from cxrbench.study.facts import source_fingerprint
from cxrbench.study.load import load_study, parse_study, resolve
from cxrbench.study.plan import build_plan, parse_shard, select_shard, shard_assignment
from cxrbench.study.state import marker_path

REPO = Path(__file__).resolve().parents[2]


def study_2024(out: Path):
    return load_study(REPO / "configs" / "study-2024.yaml", out=out)


def mini(tmp_path: Path, **changes):
    data = {
        "name": "mini",
        "datasets": {
            "a": {"adapter": "nih", "root": str(tmp_path / "a"), "labels": "study-cxr14"},
            "b": {"adapter": "nih", "root": str(tmp_path / "b"), "labels": "all"},
            "src": {"adapter": "nih", "root": str(tmp_path / "src"), "labels": "all"},
        },
        "inits": {
            "rand": {"init": "random-vit-test", "datasets": ["a", "b"]},
            "dom": {"init": "domain:src", "base": "random-vit-test"},
        },
        "comparisons": {"reference": "rand"},
        "train": {"epochs": 2},
        "external": [{"train": "a", "test": ["b"]}],
    }
    for k, v in changes.items():
        data[k] = v
    return resolve(parse_study(data), tmp_path / "mini.yaml", out=tmp_path / "out")


def write_fake_index(study, dataset: str, findings: list[str]) -> None:
    n = 6
    df = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "patient_id": [f"p{k}" for k in range(n)],
            "study_id": None,
            "path": [f"x/{k}.png" for k in range(n)],
            "view": "PA",
            "split": ["train", "train", "val", "val", "test", "test"],
            "dataset": "nih",
            "sex": "F",
            "age": 50.0,
            **{f: np.float32(1.0) for f in findings},
        }
    )
    write_index(df, study.out / "index" / dataset / "index.parquet", findings)


def mark_done(study, step) -> None:
    path = marker_path(study.out, step.id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"id": step.id, "key": step.key, "status": "done"}))
    step.out.mkdir(parents=True, exist_ok=True)
    for c in step.complete:
        (step.out / c).touch()


def test_study_2024_graph(tmp_path):
    plan = build_plan(study_2024(tmp_path / "s"))
    kinds = {k: len(plan.of_kind(k))
             for k in ("index", "cache", "pretrain", "train", "eval", "compare", "pooled", "report")}
    # 6 datasets x 3 inits minus MIMIC pretraining applied to MIMIC itself = 17 runs per seed, 3 seeds;
    # one MIMIC pretraining run per distinct shared label set (cxr14 and padchest share theirs) and
    # seed = 4 x 3; a comparison per dataset and seed, and one pooled over the seeds per dataset.
    assert kinds == {
        "index": 6,
        "cache": 6,
        "pretrain": 12,
        "train": 51,
        "eval": 51,
        "compare": 18,
        "pooled": 6,
        "report": 1,
    }
    assert "train/mimic/r224/mimic/s0" not in plan.by_id
    vindr = plan["train/vindr/r224/mimic/s0"]
    pre = plan[next(d for d in vindr.deps if d.startswith("pretrain/"))]
    assert vindr.params.findings == pre.config["findings"] and "lung_opacity" in vindr.params.findings
    assert vindr.params.init.startswith("checkpoint:") and vindr.params.init.endswith(
        "best.safetensors"
    )
    assert pre.deps == ("cache/mimic/r224",) and pre.config["init"] == "imagenet21k-vitb16"
    order = {s.id: i for i, s in enumerate(plan.steps)}
    assert all(order[d] < order[s.id] for s in plan.steps for d in s.deps)
    assert all(s.status == "pending" for s in plan.steps)


def test_keys_are_stable_and_path_independent(tmp_path):
    a = build_plan(study_2024(tmp_path / "one"))
    b = build_plan(study_2024(tmp_path / "two"))
    assert [s.key for s in a.steps] == [s.key for s in b.steps]
    assert len({s.key for s in a.steps}) == len(a.steps)


def test_a_change_reruns_exactly_what_depends_on_it(tmp_path):
    base = mini(tmp_path)
    p0 = build_plan(base)
    lr = build_plan(mini(tmp_path, train={"epochs": 2, "lr": 1e-3}))
    changed = {s.id for s in lr.steps if s.key != p0[s.id].key}
    assert changed and all(
        s.split("/")[0] in ("pretrain", "train", "eval", "external", "compare", "report") for s in changed
    )
    assert {s.id for s in lr.of_kind("train")} <= changed
    boot = build_plan(mini(tmp_path, evaluation={"bootstrap": 50}))
    changed = {s.id for s in boot.steps if s.key != p0[s.id].key}
    assert {s.split("/")[0] for s in changed} == {"eval", "external", "compare", "report"}
    size = build_plan(mini(tmp_path, preprocess={"r224": {"size": 64}}))
    changed = {s.id for s in size.steps if s.key != p0[s.id].key}
    assert (
        not any(s.startswith("index/") for s in changed) and {s.id for s in size.of_kind("cache")} <= changed
    )


def test_domain_findings_are_deferred_until_indexed(tmp_path):
    study = mini(tmp_path)
    plan = build_plan(study)
    assert plan["train/a/r224/dom/s0"].deferred and plan["train/a/r224/dom/s0"].status == "deferred"
    assert not plan["train/a/r224/rand/s0"].deferred
    write_fake_index(study, "a", ["no_finding", "cardiomegaly", "edema"])
    write_fake_index(study, "src", ["cardiomegaly", "edema", "fracture"])
    plan = build_plan(study)
    t = plan["train/a/r224/dom/s0"]
    assert not t.deferred and t.params.findings == ["cardiomegaly", "edema"]
    write_fake_index(study, "b", ["hernia"])
    with pytest.raises(InputError, match="share no finding"):
        build_plan(study)


def test_statuses_follow_markers(tmp_path):
    study = mini(tmp_path)
    for d, f in (("a", ["cardiomegaly"]), ("b", ["cardiomegaly"]), ("src", ["cardiomegaly"])):
        write_fake_index(study, d, f)
    plan = build_plan(study)
    cache = plan["cache/a/r224"]
    mark_done(study, plan["index/a"])
    mark_done(study, cache)
    plan = build_plan(study)
    assert plan["index/a"].status == "done" and plan["cache/a/r224"].status == "done"
    # a missing completion file means not done (interrupted)
    (cache.out / "manifest.json").unlink()
    assert build_plan(study)["cache/a/r224"].status == "pending"
    (cache.out / "manifest.json").touch()
    # another recipe: the existing cache is stale, index untouched
    plan = build_plan(mini(tmp_path, preprocess={"r224": {"size": 32}}))
    assert plan["cache/a/r224"].status == "stale" and plan["index/a"].status == "done"


def test_source_fingerprint_sees_metadata_not_images(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "Data_Entry_2017.csv").write_text("a,b\n1,2\n")
    (root / "images" / "x.png").write_bytes(b"png")
    fp = source_fingerprint(root)
    assert [r[0] for r in fp] == ["Data_Entry_2017.csv"]
    os.utime(root / "Data_Entry_2017.csv", ns=(1, 10**18))
    assert source_fingerprint(root) != fp


def test_sharding_is_a_deterministic_partition(tmp_path):
    plan = build_plan(study_2024(tmp_path / "s"))
    for n in (1, 2, 3, 5):
        assign = shard_assignment(plan, n)
        assert assign == shard_assignment(build_plan(study_2024(tmp_path / "t")), n)
        groups = {s.group for s in plan.of_kind("train", "pretrain")}
        assert set(assign) == groups and set(assign.values()) <= set(range(1, n + 1))
        runs = [
            [s.id for s in select_shard(plan, (i, n)) if s.kind in ("train", "pretrain")]
            for i in range(1, n + 1)
        ]
        flat = [r for part in runs for r in part]
        assert sorted(flat) == sorted(
            s.id for s in plan.of_kind("train", "pretrain")
        )  # each run exactly once
        if n > 1:
            assert all(part for part in runs)
    # a fine-tune run and the domain pretraining it reads are always on the same shard
    for i in (1, 2, 3):
        mine = {s.id for s in select_shard(plan, (i, 3))}
        for s in plan.of_kind("train"):
            if s.id in mine:
                assert set(s.deps) <= mine


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4)
    for bad in ("0/4", "5/4", "x", "1/0", "1-2"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_presets_inside_comma_lists_expand_in_the_planner(tmp_path):
    from cxrbench.index.findings import PRESETS

    study = mini(tmp_path, datasets={
        "a": {"adapter": "nih", "root": str(tmp_path / "a"), "labels": "study-mimic,edema"},
        "src": {"adapter": "nih", "root": str(tmp_path / "src"), "labels": "study-mimic"},
    }, inits={"rand": {"init": "random-vit-test"}, "dom": {"init": "domain:src", "base": "random-vit-test"}},
        external=[])
    plan = build_plan(study)
    dom = plan["train/a/r224/dom/s0"]
    assert not dom.deferred  # the findings are known from the config, presets expanded
    assert dom.params.findings == list(PRESETS["study-mimic"])  # shared with the source: edema is not


def test_runtime_train_keys_do_not_move_step_keys(tmp_path):
    def keys(plan):  # the report's key holds the config hash: it re-renders (cheap) on any change
        return {s.id: s.key for s in plan.steps if s.kind != "report"}

    base = keys(build_plan(mini(tmp_path)))
    runtime = {"epochs": 2, "compile": True, "workers": 3, "log_every": 5, "deterministic": True}
    changed = build_plan(mini(tmp_path, train=runtime))
    assert keys(changed) == base
    run = changed["train/a/r224/rand/s0"]
    assert run.params.runtime["compile"] is True and run.params.runtime["workers"] == 3  # still applied


def test_an_ssl_arm_pretrains_once_per_recipe_then_fine_tunes_from_the_teacher(tmp_path):
    inits = {"rand": {"init": "random-vit-test", "datasets": ["a", "b"]},
             "ssl": {"init": "ssl:cxr", "base": "random-vit-test", "datasets": ["a", "b"],
                     "pretrain": {"unlabeled": ["src"], "epochs": 3, "out_dim": 256, "workers": 0}}}
    study = mini(tmp_path, inits=inits, seeds=[0, 1])
    plan = build_plan(study)
    ssl = plan["ssl/ssl/r224"]
    assert [s.id for s in plan.of_kind("ssl")] == ["ssl/ssl/r224"]  # shared by both seeds and datasets
    assert ssl.config["datasets"] == ["a", "b"] and ssl.config["unlabeled"] == ["src"]
    assert ssl.config["exclude"] == ["a", "b", "src"] and ssl.config["init"] == "random-vit-test"
    assert ssl.config["pretrain"]["epochs"] == 3 and ssl.config["pretrain"]["out_dim"] == 256
    assert "workers" not in ssl.config["pretrain"] and ssl.params.runtime == {"workers": 0}
    assert set(ssl.deps) == {"cache/a/r224", "cache/b/r224", "cache/src/r224"}
    assert ssl.params.caches == [str(study.layout.cache_dir(d, "r224")) for d in ("a", "b")]
    assert ssl.params.unlabeled == [str(study.layout.cache_dir("src", "r224"))] and ssl.params.exclude == []
    run = plan["train/a/r224/ssl/s1"]
    assert "ssl/ssl/r224" in run.deps and run.config["init"] == {"pretrained": "ssl/ssl/r224"}
    assert run.params.init == "checkpoint:" + str(ssl.out / "best.safetensors")
    assert run.group == ssl.group == "ssl/ssl/r224"  # one shard pretrains and fine-tunes the arm
    other = build_plan(mini(tmp_path, inits={**inits, "ssl": {**inits["ssl"], "pretrain": {"epochs": 4}}}))
    assert other["ssl/ssl/r224"].key != ssl.key and other["train/a/r224/rand/s0"].key == plan[
        "train/a/r224/rand/s0"].key


@pytest.mark.parametrize("arm,match", [
    ({"init": "ssl:cxr"}, "needs 'base: <init>'"),
    ({"init": "ssl:cxr", "base": "random-vit-test", "pretrain": {"datasets": ["zz"]}},
     "pretrain.datasets: dataset 'zz'"),
    ({"init": "ssl:cxr", "base": "random-vit-test", "pretrain": {"epochz": 3}}, "epochz"),
    ({"init": "ssl:cxr", "base": "random-vit-test", "pretrain": {"caches": ["x"]}}, "set by the study"),
    ({"init": "ssl:cxr", "base": "random-vit-test", "labels": {"a": "all"}}, "'labels' only applies"),
])
def test_ssl_arm_errors_name_the_key(tmp_path, arm, match):
    with pytest.raises(InputError, match=match):
        mini(tmp_path, inits={"rand": {"init": "random-vit-test"}, "ssl": arm})


def test_adaptations_are_an_axis_and_an_init_may_list_its_own(tmp_path):
    inits = {"rand": {"init": "random-vit-test", "datasets": ["a"]},
             "big": {"init": "random-vit-test", "datasets": ["a"], "adaptations": ["linear", "knn"]}}
    base = build_plan(mini(tmp_path, inits={"rand": inits["rand"]}))
    plan = build_plan(mini(tmp_path, inits=inits, adaptations=["full", "lora"],
                           train={"epochs": 2, "lora_rank": 4}))
    runs = {s.id: s for s in plan.of_kind("train")}
    assert set(runs) == {"train/a/r224/rand/s0", "train/a/r224/rand/lora/s0",
                         "train/a/r224/big/linear/s0", "train/a/r224/big/knn/s0"}
    # full fine-tuning keeps the id and key it had before the axis existed
    assert runs["train/a/r224/rand/s0"].key == base["train/a/r224/rand/s0"].key
    assert "lora_rank" not in runs["train/a/r224/rand/s0"].config["train"]  # lora's option only for lora
    lora = runs["train/a/r224/rand/lora/s0"]
    assert lora.config["train"]["adaptation"] == "lora" and lora.config["train"]["lora_rank"] == 4
    assert lora.params.condition.as_dict["adaptation"] == "lora"
    assert runs["train/a/r224/big/knn/s0"].config["train"]["adaptation"] == "knn"
    assert lora.out == plan.study.layout.run_dir("a", "r224", "rand", 0, "lora/")
    # a comparison per condition with two or more inits: none here (every method has one init)
    assert not plan.of_kind("compare")
    both = build_plan(mini(tmp_path, inits={**inits, "big": {**inits["big"], "adaptations": None,
                                                             "train": {"lr": 1e-3}}},
                           adaptations=["full", "knn"]))
    assert {s.id for s in both.of_kind("compare")} == {"compare/a/r224/s0", "compare/a/r224/knn/s0"}


@pytest.mark.parametrize("changes,match", [
    ({"adaptations": ["full", "lorra"]}, "did you mean 'lora'"),
    ({"adaptations": ["full", "full"]}, "without repeats"),
    ({"train": {"adaptation": "lora"}}, "adaptation method is a study axis"),
    ({"inits": {"rand": {"init": "random-vit-test", "train": {"adaptation": "knn"}}}}, "inits.rand.train"),
    ({"inits": {"rand": {"init": "random-vit-test", "adaptations": "knnn"}}}, "unknown adaptation"),
])
def test_adaptation_errors_name_the_key(tmp_path, changes, match):
    with pytest.raises(InputError, match=match):
        mini(tmp_path, **changes)


def test_external_validation_scores_the_clean_models_unless_asked(tmp_path):
    study = mini(tmp_path, label_noise=[0.0, 0.2], adaptations=["full", "knn"])
    ids = {s.id for s in build_plan(study).of_kind("external")}
    assert ids == {f"external/a-on-b/r224/{i}/{a}s0" for i in ("rand", "dom") for a in ("", "knn/")}
    every = build_plan(mini(tmp_path, label_noise=[0.0, 0.2], external_conditions="all"))
    assert "external/a-on-b/r224/rand/n0.2/s0" in {s.id for s in every.of_kind("external")}


def test_an_ssl_arm_is_not_fine_tuned_on_what_it_read_whole(tmp_path):
    inits = {"rand": {"init": "random-vit-test"},
             "ssl": {"init": "ssl:cxr", "base": "random-vit-test", "pretrain": {"unlabeled": ["src"]}}}
    plan = build_plan(mini(tmp_path, inits=inits))
    runs = {s.id for s in plan.of_kind("train")}
    assert "train/a/r224/ssl/s0" in runs and "train/src/r224/ssl/s0" not in runs
    assert "train/src/r224/rand/s0" in runs
    assert any("ssl" in n and "src" in n and "unlabeled" in n for n in plan.notes)


def test_a_condition_without_the_reference_compares_its_inits_pairwise(tmp_path):
    inits = {"rand": {"init": "random-vit-test", "datasets": ["a"]},
             "big": {"init": "random-vit-test", "datasets": ["a"], "adaptations": ["full", "linear"],
                     "train": {"lr": 1e-3}},
             "huge": {"init": "random-vit-test", "datasets": ["a"], "adaptations": ["linear"],
                      "train": {"lr": 3e-3}}}
    plan = build_plan(mini(tmp_path, inits=inits))
    default, linear = plan["compare/a/r224/s0"], plan["compare/a/r224/linear/s0"]
    assert default.config["reference"] == "rand" and not default.config["all_pairs"]
    assert linear.config["reference"] is None and linear.config["all_pairs"]
    assert set(linear.params.runs) == {"big", "huge"}
    assert any("compared pairwise" in n for n in plan.notes)


@pytest.mark.parametrize("changes,match", [
    ({"label_fractions": [0]}, "neither a share"),
    ({"label_fractions": [-2]}, "neither a share"),
    ({"train": {"label_fraction": 0.5}}, "from its 'label_fractions' axis"),
    ({"inits": {"rand": {"init": "random-vit-test", "train": {"label_noise": 0.1}}}}, "inits.rand.train"),
])
def test_label_axes_are_set_by_the_study_only(tmp_path, changes, match):
    with pytest.raises(InputError, match=match):
        mini(tmp_path, **changes)


def test_zero_shot_runs_once_per_seed_and_init_not_once_per_label_budget(tmp_path):
    inits = {"clip": {"init": "random-clip-test", "datasets": ["a"]},
             "siglip": {"init": "random-siglip-test", "datasets": ["a"], "adaptations": ["zeroshot"]}}
    plan = build_plan(mini(tmp_path, inits=inits, adaptations=["zeroshot", "linear"], seeds=[0, 1],
                           label_fractions=[0.25, 1.0], label_noise=[0.0, 0.1],
                           comparisons={"reference": "clip"}, external=[]))
    runs = {s.id: s for s in plan.of_kind("train")}
    zero = sorted(i for i in runs if "/zeroshot/" in i)
    assert zero == [f"train/a/r224/{i}/zeroshot/s{s}" for i in ("clip", "siglip") for s in (0, 1)]
    assert len([i for i in runs if "/linear/" in i]) == 2 * 2 * 2  # clip: budgets x noise x seeds
    z = runs["train/a/r224/clip/zeroshot/s0"]
    assert z.params.condition.is_default_for("label_fraction") and z.params.condition.is_default_for(
        "label_noise")
    assert "label_fraction" not in z.config["train"] and z.config["train"]["adaptation"] == "zeroshot"
    compares = {s.id for s in plan.of_kind("compare")}
    assert {"compare/a/r224/zeroshot/s0", "compare/a/r224/zeroshot/s1"} <= compares


def test_a_zero_shot_arm_on_an_init_without_text_tower_is_refused_at_load(tmp_path):
    text = tmp_path / "mini.yaml"
    text.write_text("name: z\n"
                    "datasets:\n  a: {adapter: nih, root: a, labels: all}\n"
                    "adaptations: [linear, zeroshot]\n"
                    "inits:\n  vit: {init: random-vit-test}\n")
    with pytest.raises(InputError, match="inits.vit: adaptation zeroshot needs a vision-language init") as e:
        load_study(text)
    assert e.value.where == f"{text}, line 4" and "random-clip-test" in e.value.fix
    with pytest.raises(InputError, match=r"inits.ssl: adaptation zeroshot .* ssl:x is not one"):
        mini(tmp_path, inits={"clip": {"init": "random-clip-test"},
                              "ssl": {"init": "ssl:x", "base": "random-clip-test",
                                      "adaptations": ["zeroshot"]}},
             comparisons={"reference": "clip"})
    study = mini(tmp_path, inits={"clip": {"init": "random-clip-test", "adaptations": ["zeroshot", "full"]},
                                  "vit": {"init": "random-vit-test"}}, comparisons={"reference": "clip"})
    assert study.config.inits["clip"].adaptations == ("zeroshot", "full")

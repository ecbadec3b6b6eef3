"""The study's localization steps and study-level option: added later, so a study without them (or with
them off) keeps every step key; with them on, new steps and the evaluations' keys move as they should;
a small study with phantom boxes runs them, and the report shows the scores and the paired tests."""

from pathlib import Path

import pytest
import yaml

from cxrbench.common.errors import InputError
from cxrbench.common.layout import LOCALIZATION_FILE, STUDY_METRICS_FILE
from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan

DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(autouse=True)
def _no_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CXRBENCH_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("CXRBENCH_OUT", str(tmp_path / "no-out"))


def plan_of(tmp_path, name, **changes):
    base = yaml.safe_load((DATA / "demo-tiny.yaml").read_text())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**base, **changes}))
    return build_plan(load_study(path, out=tmp_path / "study"))


def keys(plan):
    return {s.id: s.key for s in plan.steps}


def test_off_keeps_every_key_and_on_adds_steps_without_moving_others(tmp_path):
    base = keys(plan_of(tmp_path, "base"))
    assert keys(plan_of(tmp_path, "off", localization=False)) == base
    assert keys(plan_of(tmp_path, "none", localization=None)) == base
    on = plan_of(tmp_path, "on", localization={"levels": [0.5, 0.25]})
    new = {k: v for k, v in keys(on).items() if k not in base}
    assert set(new) == {f"localization/{d}/px32/{i}/s0" for d in ("target1", "target2")
                        for i in ("random", "source-pretrained")}
    assert {k: v for k, v in keys(on).items() if k in base and k != "report"} == \
        {k: v for k, v in base.items() if k != "report"}
    step = on["localization/target1/px32/random/s0"]
    assert step.deps == ("train/target1/px32/random/s0",) and step.id in on["report"].deps
    assert step.out == tmp_path / "study" / "localization" / "target1" / "px32" / "random" / "s0"
    assert step.config["levels"] == [0.5, 0.25] and "batch_size" not in step.config
    assert step.params.required is False and step.group == on["train/target1/px32/random/s0"].group
    batch = plan_of(tmp_path, "batch", localization={"levels": [0.5, 0.25], "batch_size": 4})
    same = {k: v for k, v in keys(batch).items() if k != "report"}  # the report's key hashes the config
    assert same == {k: v for k, v in keys(on).items() if k != "report"}  # the batch size changes no number
    only = plan_of(tmp_path, "only", localization={"datasets": ["target2"]})
    assert {s.id.split("/")[1] for s in only.of_kind("localization")} == {"target2"}
    assert all(s.params.required for s in only.of_kind("localization"))
    with pytest.raises(InputError, match="localization.datasets"):
        plan_of(tmp_path, "bad", localization={"datasets": ["target3"]})
    with pytest.raises(InputError, match="levels"):
        plan_of(tmp_path, "bad2", localization={"levels": [0.0]})


def test_knn_runs_get_one_note_and_no_step(tmp_path):
    plan = plan_of(tmp_path, "knn", localization=True, adaptations=["full", "knn"],
                   label_fractions=[0.5, 1.0])
    ids = [s.id for s in plan.of_kind("localization")]
    assert ids and not any("/knn/" in i for i in ids) and not any("f0.5" in i for i in ids)
    notes = [n for n in plan.notes if n.startswith("localization:")]
    assert len(notes) == 1 and "kNN run has no classifier" in notes[0]


def test_study_level_is_added_later(tmp_path):
    base = keys(plan_of(tmp_path, "base"))
    evaluation = yaml.safe_load((DATA / "demo-tiny.yaml").read_text())["evaluation"]
    assert keys(plan_of(tmp_path, "null", evaluation={**evaluation, "study_level": None})) == base
    on = plan_of(tmp_path, "max", evaluation={**evaluation, "study_level": "max"})
    moved = {k for k, v in keys(on).items() if base.get(k) != v}
    assert {k for k in moved if k.startswith("eval/")} == {k for k in base if k.startswith("eval/")}
    assert not any(k.startswith(("train/", "cache/", "index/", "pretrain/", "phantom/")) for k in moved)
    assert on["eval/target1/px32/random/s0"].params.evaluation.study_level == "max"


MINI = {
    "name": "loc-mini",
    "datasets": {"site": {"adapter": "nih", "labels": "cardiomegaly,pleural_effusion", "views": "frontal",
                          "phantom": {"patients": 80, "size": 32, "site": "A", "seed": 3}}},
    "preprocess": {"px32": {"size": 32}},
    "inits": {"a": {"init": "random-vit-test"}, "b": {"init": "random-vit-test", "train": {"lr": 0.0003}}},
    "train": {"epochs": 2, "batch_size": 16, "lr": 0.001, "workers": 0, "deterministic": True},
    "evaluation": {"bootstrap": 30, "study_level": "max"},
    "comparisons": {"reference": "a"},
    "localization": True,
}


@pytest.mark.usefixtures("torch_one_thread")
def test_a_study_scores_localization_and_the_report_shows_it(tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    from cxrbench.study.gather import gather_results
    from cxrbench.study.runner import run_study

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(MINI))
    study = load_study(path, out=tmp_path / "out")
    run_study(study, quiet=True, device="cpu")
    plan = build_plan(study)
    assert all(s.status == "done" for s in plan.steps)
    for s in plan.of_kind("localization"):
        assert (s.out / LOCALIZATION_FILE).is_file()
    for s in plan.of_kind("eval"):
        assert (s.out / STUDY_METRICS_FILE).is_file()
    res = gather_results(plan)
    loc = res.analyses.localization
    assert set(loc["init"]) == {"a", "b"}
    assert {"pointing", "energy", "iou@0.5", "hit@0.5"} <= set(loc["metric"])
    pairs = res.analyses.localization_tests[["model_a", "model_b"]]
    assert set(pairs.itertuples(index=False, name=None)) == {("b", "a")}
    md = (tmp_path / "out" / "report" / "report.md").read_text()
    assert "site: is the saliency on the finding?" in md and "site: localization, init against init" in md

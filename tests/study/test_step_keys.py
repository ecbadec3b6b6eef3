"""Step keys are a contract: a study finished by an earlier cxrbench must show every step done.

``data/step-keys-426b80e.json`` holds the key of every step of four fixed configs (frozen copies
under ``data/``: the demo, the tiny demo, study-2024, study-dinov3) as computed by commit 426b80e,
before the package moved to one folder per stage. Any change to what a step hashes fails here.
Analyses added since (the metadata-only shortcut baseline per dataset) are new steps of new kinds:
a finished study runs only those and re-renders its report; no run, evaluation or cache reruns.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cxrbench.cli import app
from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan
from cxrbench.study.state import write_marker

DATA = Path(__file__).resolve().parent / "data"
NEW_KINDS = ("shortcut",)  # analysis steps added after 426b80e (cheap, no training)
RECORDED = json.loads((DATA / "step-keys-426b80e.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _no_data(monkeypatch, tmp_path):
    # the real-data configs read $CXRBENCH_DATA; point it at a folder that does not exist
    monkeypatch.setenv("CXRBENCH_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("CXRBENCH_OUT", str(tmp_path / "no-out"))


@pytest.mark.parametrize("config", sorted(RECORDED))
def test_step_keys_of_fixed_configs_did_not_move(config, tmp_path):
    plan = build_plan(load_study(DATA / config, out=tmp_path / "study"))
    keys = {s.id: s.key for s in plan.steps if s.kind not in NEW_KINDS}
    assert set(keys) == set(RECORDED[config])
    moved = [sid for sid, key in RECORDED[config].items() if keys[sid] != key and sid != "report"]
    assert not moved, f"{len(moved)} step key(s) moved, e.g. {moved[:3]}"
    new = [s for s in plan.steps if s.kind in NEW_KINDS]
    assert {s.id.split("/")[1] for s in new} <= set(plan.study.config.datasets) and new


def test_a_study_finished_before_the_move_dry_runs_all_done(cli_runner, tmp_path):
    """Markers as 426b80e wrote them (its keys) plus the completion files: every step is done."""
    config = DATA / "demo-tiny.yaml"
    out = tmp_path / "study"
    plan = build_plan(load_study(config, out=out))
    for step in plan.steps:
        if step.kind in NEW_KINDS or step.id == "report":
            continue  # written by 426b80e: not these
        step.key = RECORDED["demo-tiny.yaml"][step.id]
        for name in step.complete:
            (step.out / name).parent.mkdir(parents=True, exist_ok=True)
            (step.out / name).mkdir() if name == "_phantom" else (step.out / name).write_text("{}")
        write_marker(out, step, "done")
    result = cli_runner.invoke(app, ["study", "run", str(config), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.startswith((" = ", " + ", " ~ "))]
    assert len(rows) == len(plan.steps) == 25 + 2
    todo = {r[1] for r in rows if not (r[0] == "=" and r[2] == "done")}
    assert todo == {"shortcut/target1/px32", "shortcut/target2/px32", "report"}, result.output


def test_new_axes_keep_the_keys_of_the_default_condition(tmp_path):
    """Adding a label-budget or noise axis adds steps; every step of the default condition keeps its
    id and key (so a finished study only runs the new conditions), and the report step reruns."""
    import yaml

    base = yaml.safe_load((DATA / "demo-tiny.yaml").read_text())
    recorded = RECORDED["demo-tiny.yaml"]
    path = tmp_path / "axes.yaml"
    path.write_text(yaml.safe_dump({**base, "label_fractions": [0.25, 1.0], "label_noise": [0.0, 0.2]}))
    plan = build_plan(load_study(path, out=tmp_path / "study"))
    keys = {s.id: s.key for s in plan.steps if s.kind not in NEW_KINDS}
    same = [sid for sid in recorded if sid != "report" and keys.get(sid) != recorded[sid]]
    assert not same, same[:3]
    new = sorted(set(keys) - set(recorded))
    assert "train/target1/px32/random/f0.25/s0" in new and "train/target1/px32/random/f0.25/n0.2/s0" in new
    assert "eval/target2/px32/source-pretrained/n0.2/s0" in new and "compare/target1/px32/f0.25/s0" in new
    assert not any(s.startswith("pretrain/") for s in new)  # the supervised source run is shared
    run = plan["train/target1/px32/random/f0.25/n0.2/s0"]
    assert run.out == tmp_path / "study" / "runs" / "target1" / "px32" / "random" / "f0.25" / "n0.2" / "s0"
    ident = run.config["train"]
    assert (ident["label_fraction"], ident["label_noise"], ident.get("label_seed", 0)) == (0.25, 0.2, 0)
    explicit = tmp_path / "explicit.yaml"  # the default axis values written out: nothing changes
    explicit.write_text(yaml.safe_dump({**base, "label_fractions": [1.0], "label_noise": [0]}))
    plan = build_plan(load_study(explicit, out=tmp_path / "study2"))
    keys = {s.id: s.key for s in plan.steps if s.kind not in NEW_KINDS}
    assert {k: v for k, v in keys.items() if k != "report"} == {k: v for k, v in recorded.items()
                                                               if k != "report"}


def test_several_seeds_add_pooled_steps(tmp_path):
    import yaml

    base = yaml.safe_load((DATA / "demo-tiny.yaml").read_text())
    path = tmp_path / "seeds.yaml"
    path.write_text(yaml.safe_dump({**base, "seeds": [0, 1], "label_fractions": [0.5, 1.0]}))
    plan = build_plan(load_study(path, out=tmp_path / "study"))
    pooled = {s.id: s for s in plan.of_kind("pooled")}
    assert set(pooled) == {"pooled/target1/px32", "pooled/target2/px32", "pooled/target1/px32/f0.5",
                           "pooled/target2/px32/f0.5"}
    p = pooled["pooled/target1/px32/f0.5"]
    assert p.params.runs["random"] == [str(plan[f"train/target1/px32/random/f0.5/s{k}"].out) for k in (0, 1)]
    assert set(p.deps) == {f"eval/target1/px32/{a}/f0.5/s{k}" for a in ("random", "source-pretrained")
                           for k in (0, 1)}
    for k in (0, 1):  # each seed draws its own budget
        assert plan[f"train/target1/px32/random/f0.5/s{k}"].config["train"].get("label_seed", 0) == k

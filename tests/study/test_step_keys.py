"""Step keys are a contract: a study finished by an earlier cxrbench must show every step done.

``data/step-keys-426b80e.json`` holds the key of every step of four fixed configs (frozen copies
under ``data/``: the demo, the tiny demo, study-2024, study-dinov3) as computed by commit 426b80e,
before the package moved to one folder per stage. Any change to what a step hashes fails here.
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
RECORDED = json.loads((DATA / "step-keys-426b80e.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def _no_data(monkeypatch, tmp_path):
    # the real-data configs read $CXRBENCH_DATA; point it at a folder that does not exist
    monkeypatch.setenv("CXRBENCH_DATA", str(tmp_path / "no-data"))
    monkeypatch.setenv("CXRBENCH_OUT", str(tmp_path / "no-out"))


@pytest.mark.parametrize("config", sorted(RECORDED))
def test_step_keys_of_fixed_configs_did_not_move(config, tmp_path):
    plan = build_plan(load_study(DATA / config, out=tmp_path / "study"))
    keys = {s.id: s.key for s in plan.steps}
    assert set(keys) == set(RECORDED[config])
    moved = [sid for sid, key in RECORDED[config].items() if keys[sid] != key]
    assert not moved, f"{len(moved)} step key(s) moved, e.g. {moved[:3]}"


def test_a_study_finished_before_the_move_dry_runs_all_done(cli_runner, tmp_path):
    """Markers as 426b80e wrote them (its keys) plus the completion files: every step is done."""
    config = DATA / "demo-tiny.yaml"
    out = tmp_path / "study"
    plan = build_plan(load_study(config, out=out))
    for step in plan.steps:
        step.key = RECORDED["demo-tiny.yaml"][step.id]
        for name in step.complete:
            (step.out / name).parent.mkdir(parents=True, exist_ok=True)
            (step.out / name).mkdir() if name == "_phantom" else (step.out / name).write_text("{}")
        write_marker(out, step, "done")
    result = cli_runner.invoke(app, ["study", "run", str(config), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.splitlines() if line.startswith((" = ", " + ", " ~ "))]
    assert len(rows) == len(plan.steps) == 25
    assert all(r[0] == "=" and r[2] == "done" for r in rows), result.output

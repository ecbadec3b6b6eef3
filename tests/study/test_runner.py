"""The runner: order, skip-if-unchanged, crash-resume, stale outputs set aside, shards, gather.

Most cases replace the stage executors with recorders (the scheduling logic is what is tested);
the end-to-end case runs the real stages on tiny phantom datasets.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.index.schema import write_index
from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan, select_shard
from cxrbench.study.runner import GATHER_KINDS, describe_plan, report_study, run_study
from cxrbench.study.state import read_marker
from cxrbench.study.steps import KINDS

FINDINGS = ["cardiomegaly", "pleural_effusion"]

CONFIG = """\
name: fake
datasets:
  a: {adapter: nih, root: data/a}
  b: {adapter: nih, root: data/b}
  src: {adapter: nih, root: data/src}
inits:
  rand: {init: random-vit-test, datasets: [a, b]}
  dom: {init: "domain:src", base: random-vit-test}
comparisons: {reference: rand}
train: {epochs: 2}
evaluation: {bootstrap: 20}
external: [{train: a, test: [b]}]
"""


class Recorder:
    """Fake executors: write each step's completion files and record the call order."""

    def __init__(self, fail: set[str] | None = None, crash: set[str] | None = None) -> None:
        self.calls: list[str] = []
        self.fail = set(fail or ())
        self.crash = set(crash or ())

    def __call__(self, step, ctx) -> None:
        self.calls.append(step.id)
        if step.id in self.fail:
            raise InputError("synthetic failure", where=step.id)
        if step.id in self.crash:
            self.crash.discard(step.id)
            raise KeyboardInterrupt  # a kill in the middle of the step
        step.out.mkdir(parents=True, exist_ok=True)
        if step.kind == "index":
            df = pd.DataFrame(
                {
                    "image_id": ["i0", "i1"],
                    "patient_id": ["p0", "p1"],
                    "study_id": None,
                    "path": ["x0.png", "x1.png"],
                    "view": "PA",
                    "split": ["train", "test"],
                    "dataset": "nih",
                    "sex": "F",
                    "age": 1.0,
                    **{f: np.float32(1.0) for f in FINDINGS},
                }
            )
            write_index(df, step.out / "index.parquet", FINDINGS)
        for c in step.complete:
            if not (step.out / c).exists():
                (step.out / c).write_text("x")

    def executors(self) -> dict:
        return dict.fromkeys(KINDS, self)


@pytest.fixture
def study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CONFIG)
    for d in ("a", "b", "src"):
        (tmp_path / "data" / d).mkdir(parents=True)
    return load_study(path)


def test_runs_every_step_in_dependency_order_then_skips(study):
    rec = Recorder()
    summary = run_study(study, quiet=True, executors=rec.executors())
    plan = build_plan(study)
    assert set(rec.calls) == {s.id for s in plan.steps} and len(rec.calls) == len(plan.steps)
    pos = {sid: i for i, sid in enumerate(rec.calls)}
    assert all(pos[d] < pos[s.id] for s in plan.steps for d in s.deps)
    assert all(s.status == "done" for s in plan.steps) and summary.executed == rec.calls
    assert read_marker(study.out, "report")["status"] == "done"
    assert (study.out / "study.yaml").is_file()
    # where the outputs are (the fake report step wrote placeholders of both files)
    assert summary.out == study.out and summary.report == study.layout.report_html
    assert summary.results == study.layout.report_dir / "results.csv"
    with pytest.raises(InputError, match="not a cxrbench results.csv"):  # a placeholder, not a table
        summary.load_results()
    again = Recorder()
    summary = run_study(study, quiet=True, executors=again.executors())
    assert again.calls == [] and summary.executed == [] and len(summary.skipped) == len(plan.steps)


def test_a_changed_setting_reruns_only_what_depends_on_it(study):
    run_study(study, quiet=True, executors=Recorder().executors())
    path = study.path
    path.write_text(CONFIG.replace("evaluation: {bootstrap: 20}", "evaluation: {bootstrap: 30}"))
    rec = Recorder()
    run_study(load_study(path), quiet=True, executors=rec.executors())
    assert rec.calls and {c.split("/")[0] for c in rec.calls} == {"eval", "external", "compare", "report"}
    stale = list((study.out / ".stale").iterdir())  # set aside, never deleted (the report too)
    reran = [c for c in rec.calls if c.startswith(("eval", "external", "compare", "report"))]
    assert len(stale) == len(reran)


def test_resume_after_a_crash_reruns_the_interrupted_step_only(study):
    victim = "train/b/r224/rand/s0"
    rec = Recorder(crash={victim})
    with pytest.raises(KeyboardInterrupt):
        run_study(study, quiet=True, executors=rec.executors())
    m = read_marker(study.out, victim)
    assert m["status"] == "failed" and "KeyboardInterrupt" in m["error"]
    finished = set(rec.calls[:-1])
    rec2 = Recorder()
    run_study(study, quiet=True, executors=rec2.executors())
    assert rec2.calls[0] == victim and not finished & set(rec2.calls)
    assert all(s.status == "done" for s in build_plan(study).steps)


def test_keep_going_skips_dependents_of_a_failure(study):
    bad = "train/a/r224/rand/s0"
    rec = Recorder(fail={bad})
    with pytest.raises(InputError, match="synthetic failure"):
        run_study(study, quiet=True, executors=rec.executors())
    rec = Recorder(fail={bad})
    summary = run_study(study, quiet=True, keep_going=True, executors=rec.executors())
    assert bad in summary.failed
    assert "eval/a/r224/rand/s0" in summary.blocked and "report" in summary.blocked
    assert (
        "train/b/r224/rand/s0" in build_plan(study).by_id
        and build_plan(study)["train/b/r224/rand/s0"].status == "done"
    )


def test_shards_split_the_runs_and_report_gathers(study):
    calls = []
    for i in (1, 2):
        rec = Recorder()
        run_study(study, shard=(i, 2), quiet=True, executors=rec.executors())
        calls.append(rec.calls)
    trained = [[c for c in part if c.startswith(("train/", "pretrain/"))] for part in calls]
    assert trained[0] and trained[1] and not set(trained[0]) & set(trained[1])
    assert not any(c.split("/")[0] in GATHER_KINDS for part in calls for c in part)
    plan = build_plan(study)
    assert all(s.status == "done" for s in plan.steps if s.kind not in GATHER_KINDS)
    rec = Recorder()
    html, summary = report_study(study, quiet=True, executors=rec.executors())
    assert {c.split("/")[0] for c in rec.calls} == {"compare", "shortcut", "report"}
    assert html.name == "index.html"


def test_dry_run_lists_the_plan(study, cli_runner):
    text = describe_plan(build_plan(study))
    assert "train/a/r224/rand/s0" in text and "pending" in text
    result = cli_runner.invoke(app, ["study", "run", str(study.path), "--dry-run", "--shard", "1/2"])
    assert result.exit_code == 0, result.output
    assert "shard 1/2" in result.output and "index/a" in result.output
    assert not (study.out / ".steps").exists()  # a dry run writes nothing


def test_cli_errors_are_one_line(tmp_path, cli_runner):
    bad = tmp_path / "bad.yaml"
    bad.write_text(textwrap.dedent(CONFIG).replace("adapter: nih, root: data/a", "adaptr: nih, root: data/a"))
    result = cli_runner.invoke(app, ["study", "run", str(bad), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "unknown key 'datasets.a.adaptr'" in result.output and "line 3" in result.output
    result = cli_runner.invoke(app, ["study", "run", str(bad), "--shard", "3/2"])
    assert result.exit_code == 2 and "--shard" in result.output


def test_missing_dataset_root_is_a_clear_error(tmp_path, cli_runner):
    path = tmp_path / "s.yaml"
    path.write_text(CONFIG)
    result = cli_runner.invoke(app, ["study", "run", str(path), "--quiet"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "dataset folder" in result.output and "data/a" in result.output


def test_gather_reads_results_of_a_finished_study(study):
    """gather_results on outputs in the stages' formats (metrics.json, predictions, comparisons)."""
    from cxrbench.study.gather import gather_results

    run_study(study, quiet=True, executors=Recorder().executors())
    plan = build_plan(study)
    rng = np.random.default_rng(0)
    for s in plan.of_kind("eval"):
        y = (rng.random(40) < 0.4).astype(np.float32)
        pred = pd.DataFrame(
            {
                "image_id": [f"i{k}" for k in range(40)],
                "patient_id": [f"p{k}" for k in range(40)],
                **{f"p_{f}": (y + rng.normal(0, 0.5, 40)).astype(np.float32) for f in FINDINGS},
                **{f"y_{f}": y for f in FINDINGS},
            }
        )
        pred.to_parquet(s.out / "predictions.parquet")
        auc = {"value": 0.8, "ci_low": 0.7, "ci_high": 0.9, "std": 0.05}
        (s.out / "metrics.json").write_text(
            json.dumps(
                {
                    "findings": FINDINGS,
                    "n_images": 40,
                    "per_finding": {
                        f: {
                            "n": 40,
                            "n_positive": 16,
                            "threshold": 0.5,
                            "metrics": {"auroc": auc, "sensitivity": {"value": 0.7}},
                        }
                        for f in FINDINGS
                    },
                    "macro": {"findings": FINDINGS, "metrics": {"auroc": {**auc, "n_findings": 2}}},
                }
            )
        )
        run = Path(s.params.run)
        (run / "log.jsonl").write_text(
            "\n".join(
                json.dumps(r)
                for r in (
                    {"kind": "step", "epoch": 1, "step": 1, "loss": 0.9},
                    {"kind": "epoch", "epoch": 1, "val_mean_auroc": 0.7},
                    {"kind": "step", "epoch": 2, "step": 2, "loss": 0.5},
                    {"kind": "epoch", "epoch": 2, "val_mean_auroc": 0.8},
                )
            )
        )
    for s in plan.of_kind("compare"):
        rows = [
            {
                "model_a": "dom",
                "model_b": "rand",
                "finding": f,
                "diff": 0.01,
                "diff_lo": -0.02,
                "diff_hi": 0.04,
                "p_bootstrap": p,
                "p_adjusted": p,
                "p_delong": p,
                "auroc_a": 0.81,
                "auroc_b": 0.8,
                "n_positive": 16,
                "n_negative": 24,
            }
            for f, p in (("cardiomegaly", 0.04), ("pleural_effusion", 0.5))
        ]
        rows.append(
            {"model_a": "dom", "model_b": "rand", "finding": "mean", "diff": 0.01, "p_bootstrap": 0.01}
        )
        (s.out / "comparison.json").write_text(json.dumps({"rows": rows}))
    for s in plan.of_kind("external"):
        (s.out / "metrics.json").write_text(json.dumps({"macro": {"metrics": {"auroc": {"value": 0.66}}}}))
    for s in plan.of_kind("shortcut"):  # the metadata-only baseline's predictions
        y = (rng.random(40) < 0.4).astype(np.float32)
        for split in ("val", "test"):
            pred = pd.DataFrame({"image_id": [f"i{k}" for k in range(40)],
                                 "patient_id": [f"p{k}" for k in range(40)],
                                 **{f"p_{f}": rng.random(40).astype(np.float32) for f in FINDINGS},
                                 **{f"y_{f}": y for f in FINDINGS}})
            (s.out / "eval" / split).mkdir(parents=True, exist_ok=True)
            pred.to_parquet(s.out / "eval" / split / "predictions.parquet")
    res = gather_results(build_plan(study))
    csv = res.results_csv()
    base = csv[csv["init"] == "shortcut"]
    assert set(base["dataset"]) == {"a", "b"} and set(base["finding"]) == {*FINDINGS, "mean"}
    assert base["seed"].isna().all() and base["auroc_lo"].notna().all() and base["init_name"].str.contains(
        "metadata-only").all()
    dom = csv[(csv["init"] == "dom") & (csv["finding"] == "cardiomegaly")]
    # stored without it: the minimum detectable difference from the correlation the stored CI implies
    assert dom["min_detectable_diff"].between(0.01, 0.5).all()
    t = res.table
    assert set(t["dataset"]) == {"a", "b"} and set(t["init"]) == {"rand", "dom"}
    assert len(t) == 2 * 2 * 3 and res.missing == []
    dom_mean = t[(t["init"] == "dom") & (t["finding"] == "mean")]
    assert (dom_mean["p_vs_reference"] == 0.01).all() and np.allclose(dom_mean["p_adjusted"], 0.01)
    assert len(res.roc) == 2 * 2 * 2 and len(res.curves) == 4 * 2
    assert res.external["auroc"].tolist() == [0.66, 0.66] or len(res.external) == 2
    assert res.provenance["config_hash"] == study.config.config_hash()
    assert res.provenance["weights"]["rand"]["file"].startswith("random")
    assert {"a", "b"} <= set(res.summaries["dataset"])


def test_select_shard_without_shard_is_everything(study):
    plan = build_plan(study)
    assert [s.id for s in select_shard(plan, None)] == [s.id for s in plan.steps]


@pytest.mark.slow
def test_torchrun_two_processes_run_a_real_study(tmp_path):
    """`torchrun --nproc_per_node=2 -m cxrbench study run`: DDP training runs, rank 0 does the rest."""
    import os
    import shutil
    import subprocess
    import sys

    import yaml

    from cxrbench.study.demo import demo_config

    cfg, _ = demo_config(tiny=True, optional=False)
    cfg["external"] = []
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(cfg))
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "cxrbench", "study", "run", str(path)]
    r = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    study = load_study(path)
    plan = build_plan(study)
    assert all(s.status == "done" for s in plan.steps)
    config = (plan["train/target1/px32/random/s0"].out / "config.yaml").read_text()
    assert "world_size: 2" in config
    df = pd.read_csv(study.out / "report" / "results.csv")
    assert set(df["dataset"]) == {"target1", "target2"}


def test_stale_outputs_are_set_aside_with_foreign_files_never_deleted(study):
    run_study(study, quiet=True, executors=Recorder().executors())
    report = study.out / "report"
    report.mkdir(parents=True, exist_ok=True)
    (report / "my_notes.md").write_text("mine")
    path = study.path
    path.write_text(CONFIG.replace("evaluation: {bootstrap: 20}", "evaluation: {bootstrap: 30}"))
    run_study(load_study(path), quiet=True, executors=Recorder().executors())
    kept = list((study.out / ".stale").rglob("my_notes.md"))
    assert len(kept) == 1 and kept[0].read_text() == "mine"


def test_the_study_copy_never_replaces_a_file_cxrbench_did_not_write(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CONFIG)
    for d in ("a", "b", "src"):
        (tmp_path / "data" / d).mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.yaml").write_text("my own notes\n")
    with pytest.raises(InputError, match="not the copy cxrbench writes there"):
        run_study(load_study(path, out=out), quiet=True, executors=Recorder().executors())
    assert (out / "study.yaml").read_text() == "my own notes\n"
    with pytest.raises(InputError, match="not the copy cxrbench writes"):  # the config itself as out
        run_study(load_study(path, out=tmp_path), quiet=True, executors=Recorder().executors())
    assert path.read_text() == CONFIG


VLM_STUDY = """\
name: vlm
seeds: [0]
label_fractions: [0.5, 1.0]
adaptations: [zeroshot, linear]
datasets:
  ph:
    adapter: nih
    labels: cardiomegaly,pleural_effusion
    views: frontal
    phantom: {patients: 120, size: 32, site: A, seed: 5}
preprocess:
  px32: {size: 32}
inits:
  clip: {init: random-clip-test}
  siglip: {init: random-siglip-test}
comparisons: {reference: clip}
train: {epochs: 2, batch_size: 16, lr: 1.0e-3, workers: 0, zeroshot_inverted: keep}
evaluation: {bootstrap: 20}
"""


def test_a_phantom_study_with_tiny_vision_language_inits_zero_shot_then_probe(tmp_path, cli_runner,
                                                                              offline_weights):
    """The ladder zero-shot -> linear probe on tiny CLIP and SigLIP inits: zero-shot runs once (no label
    budget applies to it), the report sets the methods side by side and draws it at 0 labels."""
    pytest.importorskip("open_clip", reason="open_clip_torch (dev dependency, extra vlm)")
    pytest.importorskip("transformers", reason="transformers (dev dependency, extra vlm)")
    path = tmp_path / "vlm.yaml"
    path.write_text(VLM_STUDY)
    result = cli_runner.invoke(app, ["study", "run", str(path), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output + result.stderr
    out = tmp_path / "vlm"
    runs = sorted(str(p.parent.relative_to(out / "runs")) for p in (out / "runs").rglob("best.json"))
    assert runs == sorted(f"ph/px32/{i}/{c}s0" for i in ("clip", "siglip")
                          for c in ("linear/", "linear/f0.5/", "zeroshot/"))
    zs = json.loads((out / "runs/ph/px32/siglip/zeroshot/s0/best.json").read_text())
    assert zs["adaptation"] == "zeroshot" and zs["findings"] == FINDINGS
    df = pd.read_csv(out / "report" / "results.csv")
    df = df[df["subgroup"].isna()] if "subgroup" in df.columns else df
    cells = df.groupby(["init", "adaptation", "label_fraction"]).size()
    assert dict(cells) == {(i, a, f): 3 for i in ("clip", "siglip")
                           for a, f in (("linear", 0.5), ("linear", 1.0), ("zeroshot", 1.0))}
    assert df["auroc"].between(0, 1).all()
    md = (out / "report" / "report.md").read_text()
    assert "| dataset | init | zeroshot | linear | best method |" in md
    assert "vs zeroshot" in md  # the probe tested against zero-shot of the same init
    assert "figures/axis-label_fraction.png" in md and "prompt set cxrbench" in md

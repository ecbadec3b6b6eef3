"""Experiment trackers: MLflow with a local file store, W&B in offline mode; a resumed run continues
its tracker run; neither library is required."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.fileio import file_sha256
from cxrbench.train.config import TrainConfig
from cxrbench.train.loop import train
from cxrbench.train.tracking import flat_params


def _cfg(cache: Path, out: Path, **kw) -> TrainConfig:
    return TrainConfig(
        cache=str(cache),
        init="random-vit-test",
        out=str(out),
        epochs=2,
        batch_size=8,
        lr=1e-3,
        workers=0,
        log_every=1,
        seed=0,
        **kw,
    )


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """The documented local store (docs/training.md): ``MLFLOW_TRACKING_URI=sqlite:///mlflow.db``, with
    what the ``mlflow`` extra installs (mlflow-skinny, SQLAlchemy, Alembic); no file-store override."""
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy", reason="the mlflow extra's SQLAlchemy (pip install 'cxrbench[mlflow]')")
    pytest.importorskip("alembic", reason="the mlflow extra's Alembic (pip install 'cxrbench[mlflow]')")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # relative: in the current folder
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    from mlflow.tracking import MlflowClient

    return MlflowClient("sqlite:///mlflow.db")


def test_flat_params():
    assert flat_params({"a": {"b": 1}, "c": [1, 2], "d": None, "e": "x"}) == {
        "a.b": "1",
        "c": "[1, 2]",
        "d": "null",
        "e": "x",
    }


def test_mlflow_gets_config_metrics_and_the_best_weights_hash(
    tmp_path, tiny_cache_factory, mlflow_store, torch_one_thread
):
    cache = tiny_cache_factory(tmp_path / "cache")
    run = tmp_path / "run"
    stop = {"at": 7}

    def interrupt(step, epoch):  # killed in epoch 2, after epoch 1's checkpoint
        if step == stop["at"]:
            raise KeyboardInterrupt

    cfg = _cfg(cache, run, tracker="mlflow", tracker_project="cxr-test", tracker_name="tiny")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, quiet=True, on_step=interrupt)
    state = json.loads((run / "tracker.json").read_text())
    first = mlflow_store.get_run(state["run_id"])
    assert first.info.status == "KILLED" and first.info.run_name == "tiny"
    result = train(cfg, quiet=True)  # resumes the run folder and its MLflow run
    assert result.resumed
    assert json.loads((run / "tracker.json").read_text())["run_id"] == state["run_id"]
    r = mlflow_store.get_run(state["run_id"])
    exp = mlflow_store.get_experiment_by_name("cxr-test")
    assert r.info.experiment_id == exp.experiment_id and r.info.status == "FINISHED"
    assert r.data.params["lr"] == "0.001" and r.data.params["arch"].startswith("test_vit")
    best = json.loads((run / "best.json").read_text())
    assert r.data.metrics["best_val_mean_auroc"] == pytest.approx(best["metric"]["value"])
    assert r.data.tags["best_weights_sha256"] == file_sha256(run / "best.safetensors")
    steps = [rec["step"] for rec in _log(run) if rec["kind"] == "step"]
    history = mlflow_store.get_metric_history(state["run_id"], "train/loss")
    assert sorted({m.step for m in history}) == sorted(set(steps))
    by_step = {rec["step"]: rec["loss"] for rec in _log(run) if rec["kind"] == "step"}
    last = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
    assert all(last[s] == pytest.approx(v) for s, v in by_step.items())
    assert {m.step for m in mlflow_store.get_metric_history(state["run_id"], "val/mean_auroc")} == {
        rec["step"] for rec in _log(run) if rec["kind"] == "epoch"
    }


def _wandb_records(run: Path) -> list:
    """The records of W&B's offline run file (LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = next((run / "wandb").glob("offline-run-*/run-*.wandb"))
    data, pos, block, out, buf = path.read_bytes(), 7, 32768, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full or last fragment
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def _wandb_records_flushed(run: Path, timeout: float = 60.0) -> list:
    """The offline run file's records once its run record and final summary are on disk: W&B's service
    (wandb-core) may still be writing the file when ``finish()`` has returned on a loaded machine."""
    deadline = time.monotonic() + timeout
    while True:
        records = _wandb_records(run) if list((run / "wandb").glob("offline-run-*/run-*.wandb")) else []
        has_run = any(r.WhichOneof("record_type") == "run" for r in records)
        final = any(_key(i) == "best_weights_sha256" for r in records
                    if r.WhichOneof("record_type") == "summary" for i in r.summary.update)
        if (has_run and final) or time.monotonic() > deadline:
            return records
        time.sleep(0.5)


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # "train/loss" is stored as a nested key


def test_mlflow_3_refuses_the_file_store_in_one_line_naming_the_local_store(tmp_path, monkeypatch):
    """Why the docs name sqlite:///mlflow.db: MLflow 3 refuses ``file:`` without an override; the error
    is one line that says what works."""
    mlflow = pytest.importorskip("mlflow")
    if int(mlflow.__version__.split(".")[0]) < 3:
        pytest.skip("MLflow 2 still writes file: stores")
    from cxrbench.train.tracking import open_tracker

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(InputError) as err:
        open_tracker("mlflow", tmp_path / "run", project="p", name="n", params={}, resume=False)
    line = err.value.one_line()
    assert "MLflow cannot open its tracking store" in line and "sqlite:///mlflow.db" in line
    assert "\n" not in line


def test_wandb_offline_logs_into_the_run_folder(tmp_path, tiny_cache_factory, monkeypatch, torch_one_thread):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cache = tiny_cache_factory(tmp_path / "cache")
    run = tmp_path / "run"
    train(_cfg(cache, run, tracker="wandb", tracker_project="cxr-test"), quiet=True)
    state = json.loads((run / "tracker.json").read_text())
    records = _wandb_records_flushed(run)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert runs[0].run_id == state["run_id"] and runs[0].project == "cxr-test"
    assert runs[0].display_name == "tmp_path/run".replace("tmp_path", tmp_path.name)
    history = [
        {_key(i): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    logged = {h["_step"]: h for h in history}
    for rec in _log(run):
        if rec["kind"] == "step":
            assert logged[rec["step"]]["train/loss"] == pytest.approx(rec["loss"])
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in r.summary.update})
    assert summary["best_weights_sha256"] == file_sha256(run / "best.safetensors")
    assert summary["best_epoch"] == json.loads((run / "best.json").read_text())["epoch"]


def test_a_missing_tracker_package_names_the_extra(tmp_path, tiny_cache_factory, monkeypatch, cli_runner):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=20)
    with pytest.raises(InputError) as err:
        train(_cfg(cache, tmp_path / "run", tracker="mlflow"), quiet=True)
    assert "pip install 'cxrbench[mlflow]'" in err.value.one_line()
    result = cli_runner.invoke(
        app,
        [
            "train",
            "--cache",
            str(cache),
            "--init",
            "random-vit-test",
            "--out",
            str(tmp_path / "run2"),
            "--tracker",
            "neptune",
        ],
    )
    assert result.exit_code == 2 and "tracker" in result.output and "Traceback" not in result.output


def test_a_study_tracker_reaches_every_training_run(tmp_path):
    from cxrbench.study.load import load_study
    from cxrbench.study.runner import study_executors

    path = tmp_path / "s.yaml"
    path.write_text(
        "name: tr\ndatasets: {a: {adapter: nih, root: data}}\ninits: [random-vit-test]\n"
        "tracker: {kind: mlflow, project: lab}\n"
    )
    study = load_study(path)
    seen = {}

    def record(step, ctx):
        seen[step.kind] = step.params.runtime if hasattr(step.params, "runtime") else None

    from cxrbench.study.plan import build_plan

    plan = build_plan(study)
    execs = study_executors(study, {"train": record, "index": record})
    execs["train"](plan.of_kind("train")[0], None)
    execs["index"](plan.of_kind("index")[0], None)
    assert seen["train"]["tracker"] == "mlflow" and seen["train"]["tracker_project"] == "lab"
    assert seen["train"]["tracker_name"] == plan.of_kind("train")[0].id and seen["index"] is None

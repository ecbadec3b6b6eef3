"""pretrain.loop: the run folder is a usable init; exact resume; NaN stop; leakage; CLI; DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cxrbench.cli import app
from cxrbench.common.errors import InputError, TrainingDiverged
from cxrbench.pretrain.config import PretrainConfig
from cxrbench.pretrain.loop import pretrain
from cxrbench.train.checkpoint import load_best, load_last

REPO = Path(__file__).resolve().parents[2]
TINY = dict(
    init="random-vit-test",
    epochs=1,
    batch_size=8,
    out_dim=64,
    head_hidden=64,
    head_bottleneck=32,
    local_crops=2,
    workers=0,
    log_every=1,
    warmup_epochs=0.5,
    warmup_teacher_temp_epochs=1.0,
    seed=0,
    lr=1e-3,
)


def cfg_for(cache, out, **kw) -> PretrainConfig:
    caches = [str(c) for c in (cache if isinstance(cache, list | tuple) else [cache])]
    return PretrainConfig(caches=caches, out=str(out), **{**TINY, **kw})


def read_log(run):
    return [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines()]


def same(a, b) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def cache(tmp_path, tiny_cache_factory, torch_one_thread):
    return tiny_cache_factory(tmp_path / "cache", n_patients=60)  # 36 train images: 4 steps of 8


def test_the_run_folder_is_an_init_of_the_teacher_backbone(tmp_path, cache):
    from cxrbench.models.build import create_model

    run = tmp_path / "run"
    result = pretrain(cfg_for(cache, run, epochs=2), quiet=True)
    assert result.epochs_done == 2 and result.steps == 8 and result.images == 36
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml",
        "checkpoints",
        "best.safetensors",
        "best.json",
        "log.jsonl",
        "tensorboard",
        "pretrain_images.parquet",
    }
    weights, meta = load_best(run)
    assert meta["findings"] == [] and meta["arch"].startswith("test_vit") and meta["image_size"] == 32
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["patch_size"] == 16 and meta["model_kwargs"] == {}
    assert meta["pretraining"]["images"] == 36 and meta["pretrained_on"] == ["nih"] and meta["epoch"] == 2
    state = load_last(run / "checkpoints" / "last.pt")
    teacher_backbone = {
        k[len("backbone.") :]: v for k, v in state["teacher"].items() if k.startswith("backbone.")
    }
    assert same(weights, teacher_backbone)
    student_backbone = {
        k[len("backbone.") :]: v for k, v in state["student"].items() if k.startswith("backbone.")
    }
    assert not same(weights, student_backbone)  # the EMA teacher, not the student
    start, _ = create_model("random-vit-test", 0, image_size=32, seed=0)
    assert not same(weights, start.state_dict())  # it learned something

    model, info = create_model(f"checkpoint:{run / 'best.safetensors'}", 3, image_size=32)
    loaded = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert same(loaded, weights) and info.mean == (0.5, 0.5, 0.5)

    used = pd.read_parquet(run / "pretrain_images.parquet")
    index = pd.read_parquet(cache / "index.parquet")
    assert set(used["image_id"]) == set(index.loc[index["split"] == "train", "image_id"])
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["data"]["images_sha256"] == meta["pretraining"]["images_sha256"]
    assert doc["derived"]["steps_per_epoch"] == 4 and doc["model"]["local_size"] == 16
    steps = [r for r in read_log(run) if r["kind"] == "step"]
    assert len(steps) == 8 and {
        "loss",
        "dino",
        "ibot",
        "koleo",
        "entropy",
        "momentum",
        "teacher_temp",
    } <= set(steps[0])
    assert steps[0]["teacher_temp"] == pytest.approx(0.04) and steps[-1]["teacher_temp"] == pytest.approx(
        0.07
    )
    assert (run / "tensorboard").is_dir()


def test_audit_of_a_pretraining_run_uses_its_own_image_list(tmp_path, cache, cli_runner):
    run = tmp_path / "run"
    pretrain(cfg_for(cache, run, local_crops=0, ibot=False), quiet=True)
    result = cli_runner.invoke(app, ["audit", "--init", f"checkpoint:{run}", "--index", str(cache), "--split",
                                     "train", "--split", "test", "--json"])
    assert result.exit_code == 0, result.output + result.stderr
    doc = json.loads(result.output)
    assert doc["pretrained_on"] == ["nih"] and doc["pretraining_list"]["rows"] == 36
    assert doc["splits"]["train"]["found_images"] == 36 and doc["splits"]["test"]["found_images"] == 0


def test_fine_tuning_from_it_guards_val_and_test_patients(tmp_path, cache, tiny_cache_factory):
    from cxrbench.index.schema import read_index, write_index
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    run = tmp_path / "ssl"
    pretrain(cfg_for(cache, run, centering="sinkhorn", ibot=False, local_crops=0), quiet=True)
    init = f"checkpoint:{run / 'best.safetensors'}"
    ft = train(
        TrainConfig(
            cache=str(cache), init=init, out=str(tmp_path / "ft"), epochs=1, batch_size=8, lr=1e-3, workers=0
        ),
        quiet=True,
    )  # train-split images seen unlabeled: allowed
    assert ft.epochs_done == 1
    # a cache whose test split holds patients the pretraining used: refused
    other = tiny_cache_factory(tmp_path / "other", n_patients=60, seed=5)
    df, findings = read_index(other / "index.parquet")
    df["split"] = df["split"].map({"train": "test", "val": "train", "test": "val"})
    write_index(df, other / "index.parquet", findings)
    with pytest.raises(InputError, match=r"val/test patient\(s\) of this cache are among the images"):
        train(
            TrainConfig(
                cache=str(other), init=init, out=str(tmp_path / "ft2"), epochs=1, batch_size=8, workers=0
            ),
            quiet=True,
        )


def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, cache):
    opts = dict(epochs=2, checkpoint_every=3, deterministic=True, log_every=2)
    whole = pretrain(cfg_for(cache, tmp_path / "whole", **opts), quiet=True)

    class Crash(Exception):
        pass

    def crash(step, epoch):
        if step == 5:  # in epoch 2, one step after the epoch-end checkpoint
            raise Crash

    with pytest.raises(Crash):
        pretrain(cfg_for(cache, tmp_path / "cut", **opts), quiet=True, on_step=crash)
    state = load_last(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 4 and state["progress"]["micro"] == 0  # the end of epoch 1
    resumed = pretrain(cfg_for(cache, tmp_path / "cut", **opts), quiet=True)
    assert resumed.resumed and resumed.steps == whole.steps == 8
    a = load_last(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_last(tmp_path / "cut" / "checkpoints" / "last.pt")
    for key in ("student", "teacher", "objective"):
        assert same(a[key], b[key]), key
    assert same(load_best(tmp_path / "whole")[0], load_best(tmp_path / "cut")[0])

    def strip(run):
        return [
            {k: v for k, v in r.items() if k not in ("images_per_s", "time")}
            for r in read_log(run)
            if r["kind"] in ("step", "epoch")
        ]

    assert strip(tmp_path / "whole") == strip(tmp_path / "cut")
    assert whole.history == resumed.history


def test_a_mid_epoch_checkpoint_resumes_exactly(tmp_path, cache):
    opts = dict(epochs=1, checkpoint_every=1, deterministic=True, log_every=3)  # a log line spans the cut
    whole = pretrain(cfg_for(cache, tmp_path / "whole", **opts), quiet=True)

    def crash(step, epoch):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg_for(cache, tmp_path / "cut", **opts), quiet=True, on_step=crash)
    assert load_last(tmp_path / "cut" / "checkpoints" / "last.pt")["progress"]["micro"] == 2
    resumed = pretrain(cfg_for(cache, tmp_path / "cut", **opts), quiet=True)
    assert same(load_best(tmp_path / "whole")[0], load_best(tmp_path / "cut")[0])
    assert resumed.final_loss == pytest.approx(whole.final_loss, rel=1e-12)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, cache):
    run = tmp_path / "run"

    def poison(step, loss):
        return loss * float("nan") if step >= 5 else loss

    with pytest.raises(TrainingDiverged) as info:
        pretrain(
            cfg_for(cache, run, epochs=3, checkpoint_every=2, log_every=10), quiet=True, loss_hook=poison
        )
    assert "NaN/Inf" in info.value.one_line() and "last.pt" in info.value.one_line()
    state = load_last(run / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 4  # the epoch-1 checkpoint; the one at step 6 was refused
    assert all(torch.isfinite(v).all() for v in state["teacher"].values())
    weights, meta = load_best(run)
    assert meta["epoch"] == 1 and all(torch.isfinite(v).all() for v in weights.values())


def test_resume_refuses_other_settings_and_other_images(tmp_path, cache, tiny_cache_factory):
    from cxrbench.index.schema import read_index, write_index

    run = tmp_path / "run"
    pretrain(cfg_for(cache, run), quiet=True)
    with pytest.raises(InputError, match=r"lr: saved 0\.001, given 0\.002.*overwrite=True"):
        pretrain(cfg_for(cache, run, lr=2e-3), quiet=True)
    done = pretrain(cfg_for(cache, run, log_every=5), quiet=True)  # runtime keys may change
    assert done.resumed and done.epochs_done == 1
    df, findings = read_index(cache / "index.parquet")
    df.loc[df["split"] == "train", "split"] = "test"
    write_index(df.iloc[:10], tmp_path / "exclude.parquet", findings)
    with pytest.raises(InputError, match="selected images differ"):
        pretrain(cfg_for(cache, run, exclude=[str(tmp_path / "exclude.parquet")]), quiet=True)
    fresh = pretrain(
        cfg_for(cache, run, exclude=[str(tmp_path / "exclude.parquet")]), quiet=True, overwrite=True
    )
    assert not fresh.resumed and fresh.images == 26


def test_overwrite_deletes_only_the_run_own_files(tmp_path, cache):
    """The issue-10 rule holds for pretraining runs: --overwrite never deletes what it did not write."""
    mine = tmp_path / "mine"
    (mine / "checkpoints").mkdir(parents=True)
    (mine / "checkpoints" / "last.pt").write_bytes(b"my own model")
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not a cxrbench run .*overwrite=True would delete.*last.pt"):
        pretrain(cfg_for(cache, mine), quiet=True, overwrite=True)
    assert (mine / "checkpoints" / "last.pt").read_bytes() == b"my own model"
    run = tmp_path / "run"
    pretrain(cfg_for(cache, run), quiet=True)
    assert (run / "pretrain_images.parquet").is_file()
    (run / "figure.png").write_bytes(b"mine")
    with pytest.raises(InputError, match="not the run's own: figure.png"):
        pretrain(cfg_for(cache, run, lr=2e-3), quiet=True, overwrite=True)
    (run / "figure.png").unlink()
    fresh = pretrain(cfg_for(cache, run, lr=2e-3), quiet=True, overwrite=True)  # its own files only
    assert not fresh.resumed and (run / "pretrain_images.parquet").is_file()


def test_cli_pretrain_resume_and_errors(tmp_path, cache, cli_runner):
    run = tmp_path / "run"
    args = [
        "pretrain",
        "--cache",
        str(cache),
        "--init",
        "random-vit-test",
        "--out",
        str(run),
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--out-dim",
        "64",
        "--local-crops",
        "2",
        "--workers",
        "0",
        "--global-scale",
        "0.5,1.0",
        "--no-ibot",
    ]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "fine-tune with --init checkpoint:" in result.stderr
    doc = yaml.safe_load((run / "config.yaml").read_text())["pretrain"]
    assert doc["global_scale"] == [0.5, 1.0] and doc["ibot"] is False
    result = cli_runner.invoke(app, ["pretrain", "--out", str(run)])
    assert result.exit_code == 0 and "run already complete" in result.stderr
    result = cli_runner.invoke(app, ["pretrain", "--out", str(tmp_path / "new"), "--init", "random-vit-test"])
    assert (
        result.exit_code == 2 and "--cache is required" in result.stderr and "Traceback" not in result.output
    )
    result = cli_runner.invoke(app, [*args[:5], "--out", str(tmp_path / "x"), "--local-scale", "0.4"])
    assert result.exit_code == 2 and "MIN,MAX" in result.stderr
    result = cli_runner.invoke(
        app, [*args[:5], "--out", str(tmp_path / "cnn"), "--init", "random-convnext-test"]
    )
    assert result.exit_code == 2 and "--no-ibot" in result.stderr
    assert cli_runner.invoke(app, ["pretrain", "--help"]).exit_code == 0


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path.insert(0, sys.argv[4])
    from test_loop import cfg_for
    from cxrbench.pretrain.loop import pretrain

    cache, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)

    def kill(step, epoch):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    pretrain(cfg_for(cache, out, epochs=2, checkpoint_every=3, deterministic=True), quiet=True, on_step=kill)
""")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, cache, cli_runner):
    whole = tmp_path / "whole"
    pretrain(cfg_for(cache, whole, epochs=2, checkpoint_every=3, deterministic=True), quiet=True)
    cut = tmp_path / "cut"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", KILL_SCRIPT, str(cache), str(cut), "7", str(Path(__file__).parent)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == -9, proc.stderr
    state = load_last(cut / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 6 and state["progress"]["micro"] == 2
    result = cli_runner.invoke(app, ["pretrain", "--out", str(cut), "--quiet"])  # resume from config.yaml
    assert result.exit_code == 0, result.output
    a, b = load_last(whole / "checkpoints" / "last.pt"), load_last(cut / "checkpoints" / "last.pt")
    assert (
        same(a["teacher"], b["teacher"])
        and same(a["student"], b["student"])
        and a["progress"] == b["progress"]
    )
    assert same(load_best(whole)[0], load_best(cut)[0])


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    import torch
    sys.path.insert(0, sys.argv[3])
    from test_loop import cfg_for
    from cxrbench.pretrain.loop import pretrain
    from cxrbench.train.optim import unwrap

    torch.set_num_threads(1)
    seen = {}
    import cxrbench.pretrain.heads as heads
    original = heads.ema_update

    def spy(teacher, student, m):
        original(teacher, student, m)
        seen["teacher"] = torch.cat([p.detach().flatten() for p in teacher.parameters()])

    heads.ema_update = spy
    pretrain(cfg_for(sys.argv[1], sys.argv[2], epochs=2, batch_size=8, device="cpu"), quiet=True)
    torch.save(seen["teacher"], os.path.join(sys.argv[2], f"teacher-rank{os.environ['RANK']}.pt"))
""")


@pytest.mark.slow
def test_ddp_two_gloo_processes_keep_one_teacher(tmp_path, cache):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(tmp_path / "ddp.py"),
        str(cache),
        str(out),
        str(Path(__file__).parent),
    ]
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    t0, t1 = torch.load(out / "teacher-rank0.pt"), torch.load(out / "teacher-rank1.pt")
    assert torch.equal(t0, t1)  # every rank holds the same teacher
    doc = yaml.safe_load((out / "config.yaml").read_text())
    assert doc["derived"]["world_size"] == 2 and doc["derived"]["micro_batch"] == 4
    assert doc["derived"]["steps_per_epoch"] == 4  # 18 images per rank: 4 micro-batches of 4
    weights, meta = load_best(out)
    assert meta["epoch"] == 2 and all(torch.isfinite(v).all() for v in weights.values())

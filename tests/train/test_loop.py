import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import yaml

from cxrbench.cli import app
from cxrbench.common.errors import CxrbenchError, InputError, TrainingDiverged
from cxrbench.common.fileio import file_sha256
from cxrbench.index.schema import read_index, write_index
from cxrbench.train.checkpoint import load_best, load_last
from cxrbench.train.config import TrainConfig
from cxrbench.train.loop import train
from cxrbench.train.optim import LRSchedule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cfg_for(cache, out, **kw) -> TrainConfig:
    base = dict(cache=str(cache), init="random-vit-test", out=str(out), epochs=2, batch_size=8, lr=1e-3,
                workers=0, log_every=1, seed=0)
    return TrainConfig(**{**base, **kw})


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def weights_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------- learning, run folder

def test_learns_and_writes_the_run_folder(tiny_run):
    run, cache = tiny_run
    log = read_log(run)
    losses = [r["loss"] for r in log if r["kind"] == "step"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])  # loss falls
    epochs = [r for r in log if r["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2, 3, 4] and log[0]["kind"] == "start"
    assert max(r["val_mean_auroc"] for r in epochs) > 0.75  # well above chance on a learnable cache

    weights, meta = load_best(run)
    assert meta["findings"] == ["cardiomegaly", "pleural_effusion"] and meta["image_size"] == 32
    assert meta["recipe"] == {"size": 32, "resize": "stretch", "equalize": True, "resample": "area"}
    assert meta["arch"].startswith("test_vit") and meta["mean"] and meta["std"] and meta["head"]
    best_epoch = max(epochs, key=lambda r: r["val_mean_auroc"])
    assert meta["epoch"] == best_epoch["epoch"]
    assert meta["metric"]["value"] == pytest.approx(best_epoch["val_mean_auroc"])

    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["cache"]["manifest_sha256"] == file_sha256(cache / "manifest.json")
    assert doc["cache"]["path"] == str(cache.resolve()) and doc["train"]["lr"] == 1e-3
    assert {"versions", "git_commit", "seed"} <= set(doc["provenance"])
    df, _ = read_index(cache / "index.parquet")
    y = df.loc[df["split"] == "train", "cardiomegaly"]
    assert doc["derived"]["pos_weight"]["cardiomegaly"] == pytest.approx((y == 0).sum() / (y == 1).sum())
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))

    last = load_last(run / "checkpoints" / "last.pt")
    assert last["progress"]["finished"] and last["progress"]["epoch"] == 4
    assert {"model", "optimizer", "scaler", "schedule", "ranks", "progress", "best"} <= set(last)


def test_learns_on_a_phantom_dataset(tmp_path):
    """The full pipeline on phantoms: generate -> cache -> train; validation AUROC well above chance."""
    from cxrbench.cache.build import prepare_cache
    from cxrbench.phantom import generate

    generate(tmp_path / "ds", "csv", 200, size=64, seed=0, val_fraction=0.25, test_fraction=0.15, quiet=True,
             prevalence="cardiomegaly=0.5,pleural_effusion=0.5", views="PA=1")
    prepare_cache(tmp_path / "ds" / "_phantom" / "truth.parquet", tmp_path / "ds", tmp_path / "cache",
                  size=64, quiet=True, workers=1)
    result = train(cfg_for(tmp_path / "cache", tmp_path / "run", epochs=5, batch_size=16,
                           findings=["cardiomegaly", "pleural_effusion"]), quiet=True)
    aurocs = [h["val_mean_auroc"] for h in result.history]
    assert result.best_metric > 0.7 and result.best_metric == max(aurocs)
    losses = [r["loss"] for r in read_log(tmp_path / "run") if r["kind"] == "step"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_never_reads_the_test_split(tmp_path, tiny_cache_factory, monkeypatch):
    from cxrbench.data.dataset import CacheDataset

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    seen: set[str] = set()
    original = CacheDataset.batch

    def spy(self, indices):
        seen.update(self.splits[np.asarray(indices)].tolist())
        return original(self, indices)

    monkeypatch.setattr(CacheDataset, "batch", spy)
    train(cfg_for(cache, tmp_path / "run", epochs=1), quiet=True)
    assert seen == {"train", "val"}


def test_a_dataset_holding_test_images_is_refused_not_asserted(tmp_path, tiny_cache_factory, monkeypatch):
    """The guard holds under ``python -O`` too: a real check, not an assert."""
    from cxrbench.data import dataset as dataset_module

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)

    class Leaky(dataset_module.CacheDataset):
        def __init__(self, cache_dir, split=None, findings=None):
            super().__init__(cache_dir, split=None, findings=findings)  # every split, test included

    monkeypatch.setattr(dataset_module, "CacheDataset", Leaky)
    with pytest.raises(RuntimeError, match="must never read the test split"):
        train(cfg_for(cache, tmp_path / "run", epochs=1), quiet=True)


def test_schedule_options_and_bf16(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    cfg = cfg_for(cache, tmp_path / "run", schedule="cosine", warmup_epochs=1, min_lr=1e-5, layer_decay=0.7,
                  clip_grad=1.0, precision="bf16", weight_decay=0.05)
    train(cfg, quiet=True)
    steps = [r for r in read_log(tmp_path / "run") if r["kind"] == "step"]
    sched = LRSchedule(1e-3, total_steps=len(steps), warmup_steps=len(steps) // 2, kind="cosine", min_lr=1e-5)
    assert [r["lr"] for r in steps] == pytest.approx([sched.lr(r["step"] - 1) for r in steps])
    assert all(np.isfinite(r["loss"]) for r in steps)


def test_grad_accumulation_equals_the_full_batch(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40, nan_rate=0.0)
    train(cfg_for(cache, tmp_path / "a", epochs=1, augment=False), quiet=True)
    train(cfg_for(cache, tmp_path / "b", epochs=1, augment=False, grad_accum=4), quiet=True)
    # Adam turns float noise in (theoretically zero) key-bias gradients into lr-sized steps, so compare
    # what the weights compute: the per-step training losses and the validation results
    la, lb = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["loss"] for r in la if r["kind"] == "step"] == pytest.approx(
        [r["loss"] for r in lb if r["kind"] == "step"], rel=1e-5)
    ea, eb = la[-1], lb[-1]
    assert ea["kind"] == eb["kind"] == "epoch" and ea["step"] == eb["step"] == 3
    assert ea["val_loss"] == pytest.approx(eb["val_loss"], rel=1e-5)
    assert ea["val_mean_auroc"] == pytest.approx(eb["val_mean_auroc"], abs=1e-9)


def test_linear_probe_trains_the_head_only(tmp_path, tiny_cache_factory):
    from cxrbench.models.build import create_model

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    train(cfg_for(cache, tmp_path / "run", epochs=1, linear_probe=True), quiet=True)
    trained, meta = load_best(tmp_path / "run")
    start, _ = create_model("random-vit-test", 2, image_size=32, seed=0)
    for name, value in start.state_dict().items():
        if name in meta["head"]:
            assert not torch.equal(value, trained[name])
        else:
            assert torch.equal(value, trained[name]), name


# ------------------------------------------------------------------------------------------- resume

def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=60)
    opts = dict(epochs=3, grad_accum=2, checkpoint_every=3, deterministic=True, schedule="cosine",
                warmup_epochs=0.5, log_every=4)  # a log line spans the checkpoint: running loss is resumed
    whole = train(cfg_for(cache, tmp_path / "whole", **opts), quiet=True)

    class Crash(Exception):
        pass

    def crash(step, epoch):
        if step == 8:  # 36 images, 5 steps per epoch: epoch 2, 2 steps after the checkpoint at step 6
            raise Crash

    with pytest.raises(Crash):
        train(cfg_for(cache, tmp_path / "cut", **opts), quiet=True, on_step=crash)
    state = load_last(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 6 and state["progress"]["micro"] == 2  # a mid-epoch checkpoint
    resumed = train(cfg_for(cache, tmp_path / "cut", **opts), quiet=True)
    assert resumed.resumed and resumed.steps == whole.steps
    a = load_last(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_last(tmp_path / "cut" / "checkpoints" / "last.pt")
    assert weights_equal(a["model"], b["model"])
    assert weights_equal(load_best(tmp_path / "whole")[0], load_best(tmp_path / "cut")[0])
    def strip(run):  # the step and epoch records, without timing
        return [{k: v for k, v in r.items() if k not in ("images_per_s", "time")} for r in read_log(run)
                if r["kind"] in ("step", "epoch")]

    assert strip(tmp_path / "whole") == strip(tmp_path / "cut")
    starts = [r for r in read_log(tmp_path / "cut") if r["kind"] == "start"]
    assert [(r["step"], r["resumed"]) for r in starts] == [(0, False), (6, True)]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    cache, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    torch.set_num_threads(1)  # as the uninterrupted run: CPU float results depend on the thread count

    def kill(step, epoch):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    train(TrainConfig(cache=cache, init="random-vit-test", out=out, epochs=3, batch_size=8, lr=1e-3,
                      workers=0, log_every=1, checkpoint_every=2, deterministic=True, seed=0),
          quiet=True, on_step=kill)
""")


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path, tiny_cache_factory, cli_runner):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=60)  # 36 train images: 5 steps per epoch
    whole = tmp_path / "whole"
    train(cfg_for(cache, whole, epochs=3, checkpoint_every=2, deterministic=True), quiet=True)
    cut = tmp_path / "cut"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(cache), str(cut), "7"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # really SIGKILLed
    state = load_last(cut / "checkpoints" / "last.pt")
    assert state["progress"] == {"epoch": 1, "micro": 1, "step": 6, "finished": False, "stopped_early": False}
    result = cli_runner.invoke(app, ["train", "--out", str(cut), "--quiet"])  # resume from config.yaml alone
    assert result.exit_code == 0, result.output
    a = load_last(whole / "checkpoints" / "last.pt")
    b = load_last(cut / "checkpoints" / "last.pt")
    assert weights_equal(a["model"], b["model"]) and a["progress"] == b["progress"]
    assert weights_equal(load_best(whole)[0], load_best(cut)[0])
    assert [r["step"] for r in read_log(cut) if r["kind"] != "start"] == [
        r["step"] for r in read_log(whole) if r["kind"] != "start"]


def test_resume_refuses_other_settings_and_overwrite_restarts(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    run = tmp_path / "run"
    train(cfg_for(cache, run, epochs=1), quiet=True)
    with pytest.raises(InputError, match=r"lr: saved 0\.001, given 0\.002.*overwrite=True"):
        train(cfg_for(cache, run, epochs=1, lr=2e-3), quiet=True)
    done = train(cfg_for(cache, run, epochs=1, log_every=5), quiet=True)  # runtime keys may change
    assert done.resumed and done.epochs_done == 1
    fresh = train(cfg_for(cache, run, epochs=1, lr=2e-3), quiet=True, overwrite=True)
    assert not fresh.resumed
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["lr"] == 2e-3
    manifest = json.loads((cache / "manifest.json").read_text())
    (cache / "manifest.json").write_text(json.dumps({**manifest, "note": "rebuilt"}))
    with pytest.raises(InputError, match="the cache changed"):
        train(cfg_for(cache, run, epochs=1, lr=2e-3), quiet=True)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a cxrbench run"):
        train(cfg_for(cache, junk), quiet=True)


# ------------------------------------------------------------------------------- stopping, failures

def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    run = tmp_path / "run"

    def poison(step, loss_sum):
        return loss_sum * float("nan") if step >= 4 else loss_sum  # from the 5th optimizer step on

    with pytest.raises(TrainingDiverged) as info:
        train(cfg_for(cache, run, epochs=3, checkpoint_every=2, log_every=10), quiet=True, loss_hook=poison)
    msg = info.value.one_line()
    assert "NaN/Inf" in msg and "last.pt" in msg
    state = load_last(run / "checkpoints" / "last.pt")
    assert state["progress"]["step"] == 4  # the checkpoint at step 6 was refused
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    weights, meta = load_best(run)  # from epoch 1 (steps 1-3), before the poison
    assert meta["epoch"] == 1 and all(torch.isfinite(v).all() for v in weights.values())
    assert isinstance(info.value, CxrbenchError) and info.value.exit_code == 2  # the CLI: one line, exit 2


def test_early_stopping_and_a_finished_run_is_not_retrained(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    run = tmp_path / "run"
    result = train(cfg_for(cache, run, epochs=10, patience=2, lr=1e-12), quiet=True)
    assert result.stopped_early and result.epochs_done == 3 and result.best_epoch == 1
    n_lines = len(read_log(run))
    again = train(cfg_for(cache, run, epochs=10, patience=2, lr=1e-12), quiet=True)
    assert again.stopped_early and again.epochs_done == 3 and len(read_log(run)) == n_lines


def test_unlearnable_findings_are_refused(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    df, findings = read_index(cache / "index.parquet")
    df.loc[df["split"] == "train", "pleural_effusion"] = 0.0
    write_index(df, cache / "index.parquet", findings)
    with pytest.raises(InputError, match="'pleural_effusion' has no positive label in the train split"):
        train(cfg_for(cache, tmp_path / "run"), quiet=True)
    train(cfg_for(cache, tmp_path / "run", epochs=1, findings=["cardiomegaly"]), quiet=True)
    assert load_best(tmp_path / "run")[1]["findings"] == ["cardiomegaly"]


# ------------------------------------------------------------------------------- domain-supervised

def test_checkpoint_init_overlap_refusal_and_shared_head(tmp_path, tiny_cache_factory):
    cache_a = tiny_cache_factory(tmp_path / "a", n_patients=40)
    run_a = tmp_path / "run_a"
    train(cfg_for(cache_a, run_a, epochs=1), quiet=True)
    init = f"checkpoint:{run_a / 'best.safetensors'}"

    same_patients = tiny_cache_factory(tmp_path / "b", n_patients=40, seed=1)
    with pytest.raises(InputError, match=r"40 patient\(s\) of this cache are also in .*allow_overlap=True"):
        train(cfg_for(same_patients, tmp_path / "run_b", init=init), quiet=True)
    # every spelling that loads the checkpoint is guarded: timm's local-dir:, a run folder
    for spelling in (f"local-dir:{run_a / 'best.safetensors'}", f"checkpoint:{run_a}", f"local-dir:{run_a}"):
        with pytest.raises(InputError, match=r"40 patient\(s\) of this cache are also in"):
            train(cfg_for(same_patients, tmp_path / "run_b", init=spelling), quiet=True)
    train(cfg_for(same_patients, tmp_path / "run_b", init=init, epochs=1, allow_overlap=True), quiet=True)

    other = tiny_cache_factory(tmp_path / "c", n_patients=40, seed=2, patient_prefix="q",
                               findings=("pneumothorax", "pleural_effusion"))
    run_c = tmp_path / "run_c"
    train(cfg_for(other, run_c, init=init, epochs=1, lr=1e-12, keep_shared_head=True), quiet=True)
    a, meta_a = load_best(run_a)
    c, meta_c = load_best(run_c)
    assert meta_c["findings"] == ["pneumothorax", "pleural_effusion"]
    w_a, w_c = a["head.weight"], c["head.weight"]
    assert torch.allclose(w_c[1], w_a[1], atol=1e-6)  # pleural_effusion row kept
    assert not torch.allclose(w_c[0], w_a[0], atol=1e-3)  # pneumothorax row new
    assert torch.allclose(c["blocks.0.attn.qkv.weight"], a["blocks.0.attn.qkv.weight"], atol=1e-6)

    import shutil

    shutil.rmtree(cache_a)  # A's cache gone: the overlap cannot be checked any more
    with pytest.raises(InputError, match="is not available"):
        train(cfg_for(other, tmp_path / "run_d", init=init), quiet=True)


# ------------------------------------------------------------------------------------------- DDP

@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=80)  # 48 train, 16 val; some NaN labels
    opts = ["--init", "random-vit-test", "--epochs", "2", "--batch-size", "8", "--lr", "1e-3",
            "--workers", "0", "--no-augment", "--device", "cpu", "--quiet", "--log-every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "cxrbench", "train", "--cache", str(cache), "--out", str(tmp_path / "ddp"), *opts]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = train(cfg_for(cache, tmp_path / "one", epochs=2, augment=False, device="cpu"), quiet=True)
    ddp = [r for r in read_log(tmp_path / "ddp") if r["kind"] == "epoch"]
    assert [r["val_mean_auroc"] for r in ddp] == pytest.approx([h["val_mean_auroc"] for h in single.history],
                                                               abs=1e-6)
    d_steps = [r["loss"] for r in read_log(tmp_path / "ddp") if r["kind"] == "step"]
    s_steps = [r["loss"] for r in read_log(tmp_path / "one") if r["kind"] == "step"]
    assert d_steps == pytest.approx(s_steps, rel=1e-5)
    d_val = [r["val_loss"] for r in ddp]
    assert d_val == pytest.approx([h["val_loss"] for h in single.history], rel=1e-5)
    doc = yaml.safe_load((tmp_path / "ddp" / "config.yaml").read_text())
    assert doc["derived"]["world_size"] == 2 and doc["derived"]["micro_batch"] == 4


# ------------------------------------------------------------------------------------------- CLI

def test_cli_train_resume_and_errors(tmp_path, tiny_cache_factory, cli_runner):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    run = tmp_path / "run"
    args = ["train", "--cache", str(cache), "--init", "random-vit-test", "--out", str(run), "--epochs", "1",
            "--batch-size", "8", "--lr", "1e-3", "--workers", "0"]
    result = cli_runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (run / "best.safetensors").is_file() and "best val mean AUROC" in result.stderr
    # a random init names the bare architecture, not timm's pretrained tag (test_vit.r160_in1k)
    assert "random-vit-test (test_vit, random init: no weights loaded)" in result.stderr
    assert "r160_in1k" not in result.stderr

    result = cli_runner.invoke(app, ["train", "--out", str(run)])
    assert result.exit_code == 0 and "run already complete" in result.stderr

    result = cli_runner.invoke(app, ["train", "--out", str(run), "--lr", "0.5"])
    assert result.exit_code == 2 and "lr: saved 0.001, given 0.5" in result.stderr
    assert "Traceback" not in result.output + result.stderr

    result = cli_runner.invoke(app, ["train", "--out", str(tmp_path / "new"), "--init", "random-vit-test"])
    assert result.exit_code == 2 and "--cache is required" in result.stderr

    result = cli_runner.invoke(app, [*args[:7], "--out", str(tmp_path / "x"), "--schedule", "linear"])
    assert result.exit_code == 2 and "schedule" in result.stderr and "Traceback" not in result.stderr

    again = tmp_path / "again"  # rerun a recorded configuration elsewhere, changing one option
    result = cli_runner.invoke(app, ["train", "--config", str(run / "config.yaml"), "--out", str(again),
                                     "--seed", "1", "-q"])
    assert result.exit_code == 0, result.stderr
    saved = yaml.safe_load((again / "config.yaml").read_text())["train"]
    assert (saved["seed"], saved["lr"], saved["epochs"], saved["out"]) == (1, 1e-3, 1, str(again.resolve()))

    result = cli_runner.invoke(app, ["train", "--help"])
    assert result.exit_code == 0
    assert "--linear-probe" in result.output and "--checkpoint-every" in result.output

"""train.frozen / train.linear: linear and kNN runs on cached embeddings (Contract-4 run folders)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import file_sha256
from cxrbench.models.build import create_model
from cxrbench.train.checkpoint import load_best, load_last
from cxrbench.train.config import TrainConfig
from cxrbench.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cfg_for(cache, out, **kw) -> TrainConfig:
    base = dict(cache=str(cache), init="random-vit-test", out=str(out), epochs=3, batch_size=8, lr=1e-2,
                workers=0, log_every=1, seed=0)
    return TrainConfig(**{**base, **kw})


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_linear_on_embeddings_equals_the_linear_probe_through_the_backbone(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=60)
    opts = dict(augment=False, grad_accum=2, schedule="cosine", warmup_epochs=0.5, weight_decay=0.05)
    probe = train(cfg_for(cache, tmp_path / "probe", linear_probe=True, **opts), quiet=True)
    fast = train(cfg_for(cache, tmp_path / "fast", adaptation="linear", **opts), quiet=True)
    (wp, mp), (wf, mf) = load_best(tmp_path / "probe"), load_best(tmp_path / "fast")
    assert fast.best_epoch == probe.best_epoch and fast.steps == probe.steps
    assert fast.best_metric == pytest.approx(probe.best_metric, abs=1e-6)
    assert wp.keys() == wf.keys()
    for k in wp:
        assert torch.allclose(wp[k], wf[k], atol=2e-5), k  # the same head; the same frozen backbone
    def curve(run):
        return [r["val_mean_auroc"] for r in read_log(run) if r["kind"] == "epoch"]

    assert curve(tmp_path / "fast") == pytest.approx(curve(tmp_path / "probe"), abs=1e-6)
    assert mf["adaptation"] == "linear" and mf["trainable_params"] == 2 * 64 + 2 and mf["head"] == mp["head"]
    assert mf["linear"]["augment"] is False and mf["embeddings"]["dim"] == 64
    start, _ = create_model("random-vit-test", 2, image_size=32, seed=0)
    assert all(torch.equal(v, wf[k]) for k, v in start.state_dict().items() if k not in mf["head"])


def test_embeddings_are_computed_once_for_every_run_that_shares_them(tmp_path, tiny_cache_factory,
                                                                     monkeypatch):
    from cxrbench.adapt import features

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    calls = []
    original = features.extract_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("description"))
        return original(*args, **kwargs)

    monkeypatch.setattr(features, "extract_features", counting)
    train(cfg_for(cache, tmp_path / "linear", adaptation="linear"), quiet=True)
    assert calls == ["train embeddings", "val embeddings"]
    files = sorted((cache / "embeddings").rglob("*.safetensors"))
    mtimes = [f.stat().st_mtime_ns for f in files]
    train(cfg_for(cache, tmp_path / "knn", adaptation="knn"), quiet=True)  # same backbone: reused
    train(cfg_for(cache, tmp_path / "linear2", adaptation="linear", lr=1e-3), quiet=True)
    assert len(calls) == 2 and [f.stat().st_mtime_ns for f in files] == mtimes
    assert load_best(tmp_path / "knn")[1]["embeddings"]["train"] == "reused"
    train(cfg_for(cache, tmp_path / "seed1", adaptation="knn", seed=1), quiet=True)  # another random backbone
    assert len(calls) == 4 and len(list((cache / "embeddings").iterdir())) == 2


def test_a_label_budget_selects_rows_of_the_whole_splits_embeddings(tmp_path, tiny_cache_factory,
                                                                    monkeypatch):
    from safetensors.numpy import load_file

    from cxrbench.adapt import features
    from cxrbench.train.checkpoint import load_best as best_of

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=60)
    calls = []
    original = features.extract_features

    def counting(*args, **kwargs):
        calls.append(kwargs.get("description"))
        return original(*args, **kwargs)

    monkeypatch.setattr(features, "extract_features", counting)
    train(cfg_for(cache, tmp_path / "all", adaptation="knn"), quiet=True)
    half = train(cfg_for(cache, tmp_path / "half", adaptation="knn", label_fraction=0.5), quiet=True)
    assert calls == ["train embeddings", "val embeddings"]  # the budget reuses the full split's file
    bank_all = load_file(str(tmp_path / "all" / "knn_bank.safetensors"))
    bank_half = load_file(str(tmp_path / "half" / "knn_bank.safetensors"))
    n_all, n_half = (len(next(iter(b.values()))) for b in (bank_all, bank_half))
    assert n_half < n_all
    rows = {tuple(np.round(r, 5)) for r in next(v for k, v in bank_all.items() if v.ndim == 2)}
    assert all(tuple(np.round(r, 5)) in rows for r in next(v for k, v in bank_half.items() if v.ndim == 2))
    meta = best_of(tmp_path / "half")[1]
    assert meta["training_labels"]["budget"]["images"] == n_half
    cfg = yaml.safe_load((tmp_path / "half" / "config.yaml").read_text())
    assert cfg["derived"]["training_labels"]["budget"]["fraction"] == 0.5 and half.best_metric > 0


def test_knn_run_folder_rerun_and_restart(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=60)
    cfg = cfg_for(cache, tmp_path / "run", adaptation="knn", knn_k=(3, 5, 1000), knn_temperature=(0.05, 0.5))
    result = train(cfg, quiet=True)
    run = tmp_path / "run"
    weights, meta = load_best(run)
    assert meta["adaptation"] == "knn" and meta["head"] == [] and meta["trainable_params"] == 0
    assert not any(k.startswith("head.") for k in weights)
    knn = meta["knn"]
    assert len(knn["grid"]) == 6 and knn["n_bank"] == 36 and {g["k"] for g in knn["grid"]} == {3, 5, 36}
    best = max(knn["grid"], key=lambda g: g["val_mean_auroc"])
    assert (knn["k"], knn["temperature"]) == (best["k"], best["temperature"])
    assert result.best_metric == pytest.approx(best["val_mean_auroc"]) == meta["metric"]["value"]
    assert knn["bank_sha256"] == file_sha256(run / "knn_bank.safetensors")
    # the same backbone with another T (0.9 is not in this grid): best.safetensors differs, so evaluate
    # re-predicts instead of reusing the other kNN's predictions
    other = train(cfg_for(cache, tmp_path / "other", adaptation="knn", knn_temperature=(0.9,)), quiet=True)
    w_other, m_other = load_best(other.run_dir)
    assert all(torch.equal(w_other[k], weights[k]) for k in weights) and m_other["knn"]["temperature"] == 0.9
    assert file_sha256(other.run_dir / "best.safetensors") != file_sha256(run / "best.safetensors")
    kinds = [r["kind"] for r in read_log(run)]
    assert kinds == ["start"] + ["knn"] * 6 + ["epoch"]
    doc = yaml.safe_load((run / "config.yaml").read_text())
    assert doc["train"]["adaptation"] == "knn"
    assert doc["derived"]["embeddings"]["key"] == meta["embeddings"]["key"]
    assert load_last(run / "checkpoints" / "last.pt")["progress"]["finished"]
    assert train(cfg, quiet=True).resumed  # finished: nothing redone
    with pytest.raises(InputError, match="knn_k: saved"):
        train(cfg_for(cache, run, adaptation="knn"), quiet=True)
    (run / "checkpoints" / "last.pt").unlink()  # killed before the end: the fit starts again
    again = train(cfg, quiet=True)
    assert not again.resumed and again.best_metric == result.best_metric
    assert [r["kind"] for r in read_log(run)] == kinds


def test_config_keys_of_the_adaptations(tmp_path):
    base = dict(cache="c", init="random-vit-test", out="o")
    full = TrainConfig(**base)
    assert "adaptation" not in full.step_identity() and "lora_rank" not in full.step_identity()
    assert "lora_rank" not in full.identity() and "knn_k" not in full.identity()
    # the options of other methods change nothing
    assert full.identity() == TrainConfig(**base, lora_rank=64, knn_k="5").identity()
    lora = TrainConfig(**base, adaptation="lora", lora_rank=4, lora_targets="qkv, proj")
    assert lora.step_identity()["adaptation"] == "lora" and lora.step_identity()["lora_rank"] == 4
    assert lora.lora_targets == ("qkv", "proj") and "knn_k" not in lora.identity()
    knn = TrainConfig(**base, adaptation="knn", knn_k="50,10", knn_temperature=0.1, embed_batch_size=2)
    assert knn.knn_k == (10, 50) and knn.knn_temperature == (0.1,)
    assert "embed_batch_size" not in knn.identity()
    assert knn.unused_options(["knn_k", "lora_rank", "lr"]) == ["lora_rank"]
    for bad, match in [({"knn_k": "5,5"}, "twice"), ({"knn_temperature": "0"}, "temperature"),
                       ({"adaptation": "linear", "linear_probe": True}, "cannot be combined")]:
        with pytest.raises(InputError, match=match):
            TrainConfig.from_dict({**base, "adaptation": "knn", **bad})


@pytest.mark.slow
def test_knn_and_linear_under_torchrun_match_one_process(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=80)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.join(REPO, "src")}
    for adaptation in ("knn", "linear"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
               "cxrbench", "train", "--cache", str(cache), "--out", str(tmp_path / f"ddp-{adaptation}"),
               "--init", "random-vit-test", "--epochs", "3", "--batch-size", "8", "--lr", "1e-2", "--workers",
               "0", "--device", "cpu", "--quiet", "--adaptation", adaptation]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        single = train(cfg_for(cache, tmp_path / f"one-{adaptation}", adaptation=adaptation), quiet=True)
        wd, md = load_best(tmp_path / f"ddp-{adaptation}")
        ws, ms = load_best(single.run_dir)
        assert md["metric"]["value"] == pytest.approx(ms["metric"]["value"], abs=1e-6)
        assert all(np.allclose(wd[k].numpy(), ws[k].numpy(), atol=1e-5) for k in ws)

"""evaluate.inference on kNN and linear-embedding runs: the one prediction path scores them, and every
downstream step (evaluate_run, predict_files, external validation) works unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from cxrbench.common.errors import InputError
from cxrbench.data.augment import BatchTransform
from cxrbench.data.dataset import CacheDataset
from cxrbench.evaluate.inference import load_run_model, predict_split
from cxrbench.evaluate.predict import load_pixels, predict_files
from cxrbench.evaluate.run_eval import evaluate_run
from cxrbench.stats.metrics import auroc
from cxrbench.train.checkpoint import load_best
from cxrbench.train.config import TrainConfig
from cxrbench.train.loop import train

pytestmark = pytest.mark.usefixtures("torch_one_thread")
FINDINGS = ["cardiomegaly", "pleural_effusion"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_cache_factory):
    """A kNN run and a linear-embedding run on one tiny cache: (knn run, linear run, cache)."""
    root = tmp_path_factory.mktemp("knn_runs")
    cache = tiny_cache_factory(root / "cache", n_patients=80)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for adaptation in ("knn", "linear"):
            train(TrainConfig(cache=str(cache), init="random-vit-test", out=str(root / adaptation), epochs=3,
                              batch_size=8, lr=1e-2, workers=0, seed=0, adaptation=adaptation,
                              knn_k=(3, 10), knn_temperature=(0.05, 0.3)), quiet=True)
    finally:
        torch.set_num_threads(threads)
    return root / "knn", root / "linear", cache


def plain_features(run, pixels: torch.Tensor) -> np.ndarray:
    """Features of uint8 images through a plain timm backbone with the run's weights (no cxrbench path)."""
    weights, meta = load_best(run)
    model = timm.create_model("test_vit", pretrained=False, num_classes=0, img_size=32).eval()
    model.load_state_dict(weights, strict=True)
    tf = BatchTransform(meta["mean"], meta["std"], out_size=32).eval()
    with torch.no_grad():
        return model(tf(pixels)).numpy()


def brute_votes(query, bank, labels, k, t):
    qn = query / np.linalg.norm(query, axis=1, keepdims=True)
    bn = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = np.zeros((len(query), labels.shape[1]))
    for i, q in enumerate(qn.astype(np.float64)):
        sims = bn.astype(np.float64) @ q
        for f in range(labels.shape[1]):
            known = np.flatnonzero(~np.isnan(labels[:, f]))
            top = known[np.argsort(-sims[known])[:k]]
            w = np.exp(sims[top] / t)
            out[i, f] = (w * labels[top, f]).sum() / w.sum()
    return out


def test_knn_predictions_equal_a_brute_force_knn_from_plain_timm_features(runs):
    knn_run, _, cache = runs
    meta = load_best(knn_run)[1]
    train_ds, test_ds = CacheDataset(cache, split="train"), CacheDataset(cache, split="test")
    bank = plain_features(knn_run, train_ds.batch(np.arange(len(train_ds)))[0])
    query = plain_features(knn_run, test_ds.batch(np.arange(len(test_ds)))[0])
    ref = brute_votes(query, bank, train_ds.labels, meta["knn"]["k"], meta["knn"]["temperature"])
    df = predict_split(knn_run, "test", device="cpu")
    assert df["image_id"].tolist() == test_ds.image_ids.astype(str).tolist()
    np.testing.assert_allclose(df[[f"p_{f}" for f in FINDINGS]].to_numpy(), ref, rtol=1e-4, atol=1e-5)
    val = predict_split(knn_run, "val", device="cpu")  # the val scores are those k and T were chosen on
    mean = np.mean([auroc(val[f"y_{f}"].to_numpy(), val[f"p_{f}"].to_numpy()) for f in FINDINGS])
    assert mean == pytest.approx(meta["metric"]["value"], abs=1e-9)


def test_test_embeddings_are_stored_beside_the_cache_and_reused(runs, monkeypatch):
    from cxrbench.adapt import features

    knn_run, _, cache = runs
    key = load_best(knn_run)[1]["embeddings"]["key"]
    predict_split(knn_run, "test", device="cpu")
    assert (cache / "embeddings" / key / "test.safetensors").is_file()
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: pytest.fail("recomputed"))
    predict_split(knn_run, "test", device="cpu")


def test_evaluate_run_external_validation_and_predict_files_work_unchanged(runs, tmp_path,
                                                                          tiny_cache_factory):
    knn_run, linear_run, cache = runs
    for run in (knn_run, linear_run):
        metrics = evaluate_run(run, n_resamples=20)
        assert set(metrics["per_finding"]) == set(FINDINGS) and metrics["split"] == "test"
        assert 0.5 < metrics["per_finding"]["cardiomegaly"]["metrics"]["auroc"]["value"] <= 1
    other = tiny_cache_factory(tmp_path / "other", n_patients=30, seed=3, findings=("cardiomegaly",),
                               dataset="chexpert", patient_prefix="q")
    ext = predict_split(knn_run, "test", cache_dir=other, findings=["cardiomegaly"], device="cpu")
    assert list(ext.columns) == ["image_id", "patient_id", "p_cardiomegaly", "y_cardiomegaly"]
    assert (other / "embeddings").is_dir()  # another cache: its own embeddings, beside it

    test_ds = CacheDataset(cache, split="test")
    files = []
    for i in range(3):
        files.append(tmp_path / f"img{i}.png")
        Image.fromarray(test_ds.batch([i])[0][0].numpy()).save(files[-1])
    meta = load_best(knn_run)[1]
    pixels = torch.from_numpy(load_pixels(files, meta["recipe"]))
    train_ds = CacheDataset(cache, split="train")
    bank = plain_features(knn_run, train_ds.batch(np.arange(len(train_ds)))[0])
    ref = brute_votes(plain_features(knn_run, pixels), bank, train_ds.labels, meta["knn"]["k"],
                      meta["knn"]["temperature"])
    df = predict_files(knn_run, files, device="cpu")
    np.testing.assert_allclose(df[[f"p_{f}" for f in FINDINGS]].to_numpy(), ref, rtol=1e-4, atol=1e-5)
    assert "pred_cardiomegaly" in df  # evaluated: validation... or test thresholds, as for any run
    lin = predict_files(linear_run, files, device="cpu")
    model, _ = load_run_model(linear_run)
    tf = BatchTransform(meta["mean"], meta["std"], out_size=32).eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(tf(pixels))).numpy()
    np.testing.assert_allclose(lin[[f"p_{f}" for f in FINDINGS]].to_numpy(), expected, atol=1e-6)


def test_what_a_knn_run_cannot_do_is_one_line(runs, tmp_path):
    from cxrbench.export.hub import export_run

    knn_run, _, cache = runs
    with pytest.raises(InputError, match="a kNN run has no classifier model"):
        load_run_model(knn_run)
    with pytest.raises(InputError, match="a kNN run has no classifier model"):
        export_run(knn_run, tmp_path / "export")
    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(png)
    with pytest.raises(InputError, match="saliency maps need one"):
        predict_files(knn_run, [png], device="cpu", saliency_dir=tmp_path / "sal")

import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate.predict import predict_files, run_thresholds

FINDINGS = ["cardiomegaly", "pleural_effusion"]

pytestmark = pytest.mark.usefixtures("torch_one_thread")

def real_files(real_cxr_dir):
    files = sorted(p for p in real_cxr_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".dcm"))
    assert {p.suffix.lower() for p in files} == {".png", ".jpg", ".dcm"}
    return files


def copy_run(run, dest):
    dest.mkdir()
    for name in ("best.safetensors", "best.json", "config.yaml"):
        shutil.copy(run / name, dest / name)
    return dest


def write_metrics(run, split, source, thresholds):
    path = run / "eval" / split / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    per = {f: {"threshold": t, "threshold_source": source} for f, t in thresholds.items()}
    path.write_text(json.dumps({"threshold_policy": {"source": source}, "per_finding": per}))


def test_predicts_png_jpeg_dicom_through_the_cache_recipe(tiny_run, real_cxr_dir):
    from cxrbench.cache.decode import read_image
    from cxrbench.cache.preprocess import preprocess
    from cxrbench.data.augment import BatchTransform
    from cxrbench.evaluate.inference import load_run_model

    run, _ = tiny_run
    files = real_files(real_cxr_dir)
    df = predict_files(run, files + files[:1], batch_size=3, device="cpu")
    assert list(df.columns) == ["file", "p_cardiomegaly", "p_pleural_effusion"]  # not evaluated: no calls
    assert len(df) == len(files) + 1 and df["file"].iloc[0] == str(files[0])
    p = df[["p_cardiomegaly", "p_pleural_effusion"]].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    np.testing.assert_allclose(p[-1], p[0], rtol=1e-6)  # same file, same answer, whatever the batch
    # the same pixels as the cache: read_image + preprocess with the run's recipe (32 px, stretch, equalized)
    model, meta = load_run_model(run)
    x = torch.from_numpy(preprocess(read_image(files[2]), size=32, resize="stretch", equalize=True))[None]
    tf = BatchTransform(meta["mean"], meta["std"], out_size=32).eval()
    with torch.no_grad():
        expected = torch.sigmoid(model(tf(x))).numpy()[0]
    np.testing.assert_allclose(p[2], expected, rtol=1e-5)


def test_calls_use_validation_thresholds_only(tiny_run, tmp_path, real_cxr_dir):
    run = copy_run(tiny_run[0], tmp_path / "run")
    files = real_files(real_cxr_dir)[:2]
    write_metrics(run, "test", "test", {"cardiomegaly": 0.0, "pleural_effusion": 0.0})
    assert run_thresholds(run, FINDINGS) == (None, None)  # chosen on the test set: never deployed
    write_metrics(run, "test", "val", {"cardiomegaly": 0.0, "pleural_effusion": 2.0})
    df = predict_files(run, files, device="cpu")
    assert df["pred_cardiomegaly"].tolist() == ["positive"] * 2
    assert df["pred_pleural_effusion"].tolist() == ["negative"] * 2
    assert df["threshold_pleural_effusion"].tolist() == [2.0, 2.0]
    write_metrics(run, "val", "val", {"cardiomegaly": 2.0, "pleural_effusion": None})  # val file wins
    thresholds, source = run_thresholds(run, FINDINGS)
    assert thresholds == {"cardiomegaly": 2.0, "pleural_effusion": None} and "eval/val" in source
    df = predict_files(run, files, device="cpu")
    assert df["pred_cardiomegaly"].tolist() == ["negative"] * 2
    assert df["pred_pleural_effusion"].tolist() == ["", ""]
    (run / "eval" / "val" / "metrics.json").write_text(json.dumps({"per_finding": {}}))
    with pytest.raises(InputError, match="lacks per_finding thresholds"):
        run_thresholds(run, FINDINGS)


def test_thresholds_written_by_cxrbench_evaluate(tiny_run, tmp_path, real_cxr_dir):
    evaluate = pytest.importorskip("cxrbench.evaluate.run_eval")
    run = copy_run(tiny_run[0], tmp_path / "run")
    evaluate.evaluate_run(run, "val", n_resamples=0)
    thresholds, _ = run_thresholds(run, FINDINGS)
    assert set(thresholds) == set(FINDINGS) and all(isinstance(t, float) for t in thresholds.values())
    df = predict_files(run, real_files(real_cxr_dir)[:1], device="cpu")
    assert df["pred_cardiomegaly"].iloc[0] in ("positive", "negative")


def test_cli_predict(tiny_run, tmp_path, real_cxr_dir, cli_runner):
    run, _ = tiny_run
    files = [str(f) for f in real_files(real_cxr_dir)]
    out = tmp_path / "pred.csv"
    result = cli_runner.invoke(app, ["predict", str(run), *files, "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    df = pd.read_csv(out)
    assert df["file"].tolist() == files and "wrote" in result.stderr
    result = cli_runner.invoke(app, ["predict", str(run), files[0], "--device", "cpu"])
    assert result.exit_code == 0
    assert pd.read_csv(io.StringIO(result.stdout))["p_cardiomegaly"].iloc[0] == pytest.approx(
        df["p_cardiomegaly"].iloc[0], rel=1e-5)


def test_cli_predict_errors(tiny_run, tmp_path, cli_runner):
    run, _ = tiny_run
    result = cli_runner.invoke(app, ["predict", str(run), str(tmp_path / "missing.png")])
    assert result.exit_code == 2 and "image file not found" in result.stderr
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = cli_runner.invoke(app, ["predict", str(run), str(bad)])
    assert result.exit_code == 2 and str(bad) in result.stderr
    result = cli_runner.invoke(app, ["predict", str(tmp_path), str(bad)])
    assert result.exit_code == 2 and "best.json" in result.stderr
    result = cli_runner.invoke(app, ["predict", str(run), str(bad), "--device", "tpu"])
    assert result.exit_code == 2 and "unknown device" in result.stderr
    assert all("Traceback" not in r for r in (result.stdout, result.stderr))


def test_folders_and_globs_expand_to_sorted_image_files(tmp_path, real_cxr_dir):
    from cxrbench.evaluate.predict import expand_inputs

    files = real_files(real_cxr_dir)
    scans = tmp_path / "scans"
    (scans / "sub").mkdir(parents=True)
    for f in files:
        shutil.copy(f, scans / "sub" / f.name.upper().replace(".DCM", ".dcm"))
    (scans / "notes.txt").write_text("not an image")
    found = expand_inputs([scans])
    assert [p.name for p in found] == sorted(p.name for p in (scans / "sub").iterdir())
    assert expand_inputs([str(scans / "**" / "*.dcm")]) == [p for p in found if p.suffix == ".dcm"]
    assert expand_inputs([files[0], scans / "sub" / found[0].name]) == [files[0], found[0]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image file"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(InputError, match="matches no file.*quote"):
        expand_inputs([str(tmp_path / "*.png")])


def test_skip_bad_leaves_unreadable_files_out_and_names_them(tiny_run, tmp_path, real_cxr_dir, cli_runner):
    run, _ = tiny_run
    good = real_files(real_cxr_dir)[:2]
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(InputError, match="pass skip_bad=True"):
        predict_files(run, [good[0], bad, good[1]], device="cpu")
    df = predict_files(run, [good[0], bad, good[1]], device="cpu", skip_bad=True)
    assert df["file"].tolist() == [str(good[0]), str(good[1])]
    assert [name for name, _ in df.attrs["skipped"]] == [str(bad)]
    with pytest.raises(InputError, match="none of the 1 file"):
        predict_files(run, [bad], device="cpu", skip_bad=True)
    result = cli_runner.invoke(app, ["predict", str(run), str(good[0]), str(bad), "--skip-bad",
                                     "--device", "cpu"])
    assert result.exit_code == 0 and f"skipped: {bad}" in result.stderr
    assert len(pd.read_csv(io.StringIO(result.stdout))) == 1


def test_predict_and_evaluate_score_through_one_path_in_the_runs_precision(tiny_run, real_cxr_dir,
                                                                          monkeypatch):
    """Files given to predict are scored by the run's scorer, the one evaluate uses, in the run's precision
    and float32 rounding: images already decoded score exactly as the evaluation's predictions."""
    from cxrbench.cache.read import open_cache
    from cxrbench.data.dataset import ArrayDataset
    from cxrbench.evaluate import inference
    from cxrbench.train.methods import base

    run, cache = tiny_run
    split = inference.predict_split(run, "test", device="cpu")
    c = open_cache(cache)
    test = c.index[c.index["split"] == "test"]
    images = np.stack([c.images[r] for r in test["cache_row"]])
    scores = inference.run_scorer(run, "cpu").score(ArrayDataset(images)).astype(np.float32)
    want = split.set_index("image_id").loc[test["image_id"].astype(str)]
    for k, f in enumerate(c.findings):
        np.testing.assert_array_equal(scores[:, k], want[f"p_{f}"].to_numpy())  # bit-identical
    seen = []
    real_scorer, real_autocast = inference.run_scorer, base.run_autocast
    monkeypatch.setattr(inference, "run_scorer",
                        lambda *a, **k: seen.append("scorer") or real_scorer(*a, **k))
    monkeypatch.setattr(base, "run_autocast", lambda precision, device: seen.append(precision) or
                        real_autocast(precision, device))
    predict_files(run, [real_cxr_dir / "00000001_000.png"], device="cpu")
    assert seen == ["scorer", "fp32"]  # the run's scorer, asking the run's precision (best.json)
    assert base.run_autocast("bf16", torch.device("cpu")) is None  # autocast only where it trained: CUDA

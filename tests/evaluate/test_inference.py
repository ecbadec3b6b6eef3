import json

import numpy as np
import pytest
import torch

from cxrbench.common.distributed import resolve_device
from cxrbench.common.errors import InputError
from cxrbench.evaluate.inference import load_run_model, predict_split, run_cache_dir
from cxrbench.index.schema import read_index
from cxrbench.stats.metrics import auroc
from cxrbench.train.checkpoint import load_best

pytestmark = pytest.mark.usefixtures("torch_one_thread")

def test_load_run_model_rebuilds_the_best_weights(tiny_run):
    run, _ = tiny_run
    model, meta = load_run_model(run)
    weights, _ = load_best(run)
    assert not model.training
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    assert meta["findings"] == ["cardiomegaly", "pleural_effusion"]


def test_predict_split_reproduces_the_validation_metric(tiny_run):
    run, cache = tiny_run
    df = predict_split(run, "val", device="cpu")
    index, _ = read_index(cache / "index.parquet")
    val = index[index["split"] == "val"]
    assert list(df.columns) == ["image_id", "patient_id", "p_cardiomegaly", "p_pleural_effusion",
                                "y_cardiomegaly", "y_pleural_effusion"]
    assert df["image_id"].tolist() == val["image_id"].tolist()
    assert df["patient_id"].tolist() == val["patient_id"].tolist()
    np.testing.assert_array_equal(df["y_cardiomegaly"].to_numpy(), val["cardiomegaly"].to_numpy(np.float32))
    p = df[["p_cardiomegaly", "p_pleural_effusion"]].to_numpy()
    assert ((p > 0) & (p < 1)).all()
    # the AUROC of these predictions is the one that selected the checkpoint
    mean = np.mean([auroc(df[f"y_{f}"].to_numpy(), df[f"p_{f}"].to_numpy())
                    for f in ("cardiomegaly", "pleural_effusion")])
    assert mean == pytest.approx(load_best(run)[1]["metric"]["value"], abs=1e-9)
    test = predict_split(run, "test", cache_dir=cache, batch_size=3, device="cpu")
    assert len(test) == (index["split"] == "test").sum()


def test_predict_split_refuses_mismatched_caches(tiny_run, tmp_path, tiny_cache_factory):
    run, _ = tiny_run
    other = tiny_cache_factory(tmp_path / "c", n_patients=20, findings=("cardiomegaly", "pneumothorax"))
    with pytest.raises(InputError, match="finding 'pleural_effusion' is not in the cache"):
        predict_split(run, "val", cache_dir=other, device="cpu")
    size64 = tiny_cache_factory(tmp_path / "d", n_patients=20, size=64)
    with pytest.raises(InputError, match="prepared with size=64 but the model was trained on size=32"):
        predict_split(run, "val", cache_dir=size64, device="cpu")


def test_missing_pieces_are_clear_errors(tmp_path, tiny_run):
    with pytest.raises(InputError, match="no best.json"):
        predict_split(tmp_path, "val", device="cpu")
    with pytest.raises(InputError, match="no config.yaml"):
        run_cache_dir(tmp_path)
    run, _ = tiny_run
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("best.safetensors", "best.json"):
        (copy / name).write_bytes((run / name).read_bytes())
    (copy / "config.yaml").write_text(json.dumps({"cache": {"path": str(tmp_path / "gone")}}))
    with pytest.raises(InputError, match="is not available"):
        predict_split(copy, "val", device="cpu")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("gpu0")


def test_one_prediction_path_serves_a_subset_of_findings(tiny_run, tmp_path, tiny_cache_factory):
    """External validation scores another cache over some of the run's findings, through predict_split."""
    run, cache = tiny_run
    full = predict_split(run, "test", device="cpu")
    part = predict_split(run, "test", cache_dir=cache, device="cpu", findings=["pleural_effusion"])
    assert list(part.columns) == ["image_id", "patient_id", "p_pleural_effusion", "y_pleural_effusion"]
    np.testing.assert_array_equal(part["p_pleural_effusion"], full["p_pleural_effusion"])
    other = tiny_cache_factory(tmp_path / "other", n_patients=20, seed=5, findings=("pleural_effusion",))
    ext = predict_split(run, "test", cache_dir=other, device="cpu", findings=["pleural_effusion"])
    assert len(ext) == 4 and ext["p_pleural_effusion"].between(0, 1).all()
    with pytest.raises(InputError, match="does not predict pneumothorax"):
        predict_split(run, "test", device="cpu", findings=["pneumothorax"])


def test_study_external_validation_uses_the_one_prediction_path(tiny_run, tmp_path, monkeypatch):
    from cxrbench.evaluate import inference
    from cxrbench.evaluate.run_eval import evaluate_run
    from cxrbench.study.executors import run_external
    from cxrbench.study.sections import EvaluationSpec
    from cxrbench.study.steps import ExternalParams, Step

    run, cache = tiny_run
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(run, copy)
    evaluate_run(copy, "val", n_resamples=0)
    calls = []
    real = inference.predict_split

    def spy(*args, **kwargs):
        calls.append(kwargs.get("findings"))
        return real(*args, **kwargs)

    monkeypatch.setattr(inference, "predict_split", spy)
    config = {"split": "test", "bootstrap": 0, "seed": 0, "cluster": "patient", "ci": 0.95,
              "threshold": "val", "fixed_threshold": 0.5, "batch_size": 8, "findings": ["cardiomegaly"]}
    step = Step("external/x", "external", tmp_path / "ext", config,
                params=ExternalParams(run=str(copy), cache=str(cache), train_dataset="a", test_dataset="b",
                                      recipe="r", label="l", seed=0, findings=["cardiomegaly"],
                                      evaluation=EvaluationSpec(bootstrap=0, batch_size=8)))
    run_external(step, type("Ctx", (), {"device": "cpu"})())
    assert calls == [["cardiomegaly"]]
    written = json.loads((tmp_path / "ext" / "metrics.json").read_text())
    assert written["findings"] == ["cardiomegaly"] and written["test_dataset"] == "b"

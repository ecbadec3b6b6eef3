"""export.onnx: dynamic batch, verified by onnxruntime against PyTorch (tolerance 1e-4)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate.inference import load_run_model
from cxrbench.export.hub import export_run

pytest.importorskip("onnxruntime")


def test_onnx_matches_pytorch_on_the_same_inputs(evaluated_run, tmp_path, torch_one_thread):
    import onnx
    import onnxruntime as ort

    run, _ = evaluated_run
    out = tmp_path / "onnx"
    result = export_run(run, out, "onnx")
    assert result.max_abs_diff is not None and result.max_abs_diff <= 1e-4
    assert sorted(result.files) == ["README.md", "config.json", "model.onnx", "thresholds.json"]
    model, meta = load_run_model(run)
    s = meta["image_size"]
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).standard_normal((5, 3, s, s)).astype(np.float32)  # a batch never traced
    logits, probs = session.run(["logits", "probabilities"], {"image": x})
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert logits.shape == (5, 2) and np.max(np.abs(logits - ref)) <= 1e-4
    assert np.allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert json.loads(props["label_names"]) == meta["findings"] and json.loads(props["mean"]) == meta["mean"]


def test_cli_prints_the_difference(evaluated_run, tmp_path, cli_runner):
    result = cli_runner.invoke(
        app, ["export", str(evaluated_run[0]), str(tmp_path / "o"), "--format", "onnx"]
    )
    assert result.exit_code == 0 and "max abs difference" in result.output, result.output
    bad = cli_runner.invoke(app, ["export", str(evaluated_run[0]), str(tmp_path / "o"), "--format", "tflite"])
    assert bad.exit_code == 2 and "--format" in bad.output


def test_missing_onnxruntime_names_the_extra(evaluated_run, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(InputError, match=r"pip install 'cxrbench\[export\]'"):
        export_run(evaluated_run[0], tmp_path / "o", "onnx")
    assert not (tmp_path / "o" / "model.onnx").exists()


@pytest.mark.parametrize(("options", "match"), [
    ({"atol": -1.0}, r"--atol: got -1, expected a number >= 0"),
    ({"atol": float("nan")}, r"--atol: got nan"),
    ({"opset": 2}, r"--opset: got 2, expected an opset from 7 to 20"),
    ({"opset": 99}, r"--opset: got 99"),
])
def test_out_of_range_options_are_refused_before_anything_is_written(evaluated_run, tmp_path, options, match):
    with pytest.raises(InputError, match=match):
        export_run(evaluated_run[0], tmp_path / "o", "onnx", **options)
    assert not (tmp_path / "o").exists()


def test_an_opset_too_old_for_the_model_is_one_line_and_leaves_no_folder(evaluated_run, tmp_path, cli_runner,
                                                                         torch_one_thread, capfd):
    result = cli_runner.invoke(app, ["export", str(evaluated_run[0]), str(tmp_path / "o"), "--format", "onnx",
                                     "--opset", "9"])
    assert result.exit_code == 2, result.output
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "--opset 9" in err[0], err
    assert "Torch IR graph" not in capfd.readouterr().out  # the exporter's C++ dump is kept off stdout
    assert not (tmp_path / "o").exists()  # the folder the failed export made is gone (it was empty)

"""export.hub (+ export.card): a folder timm loads as is, the model card, --push."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate.inference import load_run_model
from cxrbench.evaluate.predict import run_thresholds
from cxrbench.export.hub import export_run


def test_timm_loads_the_folder_as_is(evaluated_run, tmp_path, torch_one_thread):
    import timm

    run, _ = evaluated_run
    out = tmp_path / "hub"
    result = export_run(run, out)
    assert sorted(result.files) == ["README.md", "config.json", "model.safetensors", "thresholds.json"]
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ref, meta = load_run_model(run)
    x = torch.randn(3, 3, meta["image_size"], meta["image_size"], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == meta["findings"] and model.num_classes == len(meta["findings"])
    assert tuple(cfg["input_size"]) == (3, meta["image_size"], meta["image_size"])
    assert list(cfg["mean"]) == meta["mean"] and list(cfg["std"]) == meta["std"]
    doc = json.loads((out / "config.json").read_text())
    assert (
        doc["architecture"] == "test_vit" and doc["num_classes"] == 2 and "tag" not in doc["pretrained_cfg"]
    )
    assert doc["cxrbench"]["recipe"] == meta["recipe"]
    thresholds, _ = run_thresholds(run, meta["findings"])
    assert json.loads((out / "thresholds.json").read_text())["thresholds"] == thresholds


def test_the_model_card(evaluated_run, tmp_path):
    run, _ = evaluated_run
    out = tmp_path / "hub"
    export_run(run, out)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: other\nlibrary_name: timm\n")
    for section in (
        "## Intended use",
        "## Model",
        "## Training data",
        "## Evaluation",
        "## Decision thresholds",
        "## Limitations",
        "## Licence",
    ):
        assert section in card
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    auc = metrics["per_finding"]["cardiomegaly"]["metrics"]["auroc"]
    assert f"{auc['value']:.3f} ({auc['ci_low']:.3f}-{auc['ci_high']:.3f})" in card
    assert (
        "| cardiomegaly | nih: 'Cardiomegaly' |" in card and "| pleural_effusion | nih: 'Effusion' |" in card
    )
    assert f'timm.create_model("local-dir:{out.resolve()}"' in card
    # the analyses of the evaluation, read from subgroups.json and calibration.json beside metrics.json
    subgroups = json.loads((run / "eval/test/subgroups.json").read_text())
    assert "Subgroups (" + ", ".join(subgroups["settings"]["variables"]) in card
    assert "Largest AUROC gap per variable" in card and "| finding | probabilities | ECE (CI)" in card
    # a tiny test split: every finding has fewer than 10 positives or negatives, and the card says so
    assert "| **mean** | | " in card and "\u2020 fewer than 10 positive or negative test images" in card
    # a random initialization is not named by a pretrained tag
    assert "test_vit.r160_in1k" not in card and "# test_vit from `random-vit-test`" in card


def test_subgroups_and_calibration_appear_when_evaluated_and_absence_is_fine(evaluated_run, tmp_path):
    run, _ = evaluated_run
    bare = tmp_path / "bare"
    shutil.copytree(run, bare, ignore=shutil.ignore_patterns("eval"))
    result = export_run(bare, tmp_path / "out1")
    card = (tmp_path / "out1" / "README.md").read_text()
    assert "was not evaluated" in card and result.notes and "evaluate" in result.notes[0]
    assert json.loads((tmp_path / "out1" / "thresholds.json").read_text())["thresholds"] is None
    rich = tmp_path / "rich"
    shutil.copytree(run, rich)
    path = rich / "eval/test/metrics.json"
    metrics = json.loads(path.read_text())
    metrics["subgroups"] = {"sex": {"F": {"n": 8, "auroc": {"value": 0.81, "ci_low": 0.7, "ci_high": 0.9}}}}
    metrics["calibration"] = {"ece": 0.042, "brier": 0.19}
    path.write_text(json.dumps(metrics))
    export_run(rich, tmp_path / "out2")
    card = (tmp_path / "out2" / "README.md").read_text()
    assert "Subgroups (`test`)" in card and "- auroc: 0.810 (0.700-0.900)" in card
    assert "Calibration (`test`)" in card and "- ece: 0.042" in card


def test_a_foreign_file_survives_and_blocks_only_its_own_name(evaluated_run, tmp_path, cli_runner):
    run, _ = evaluated_run
    out = tmp_path / "hub"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "README.md").write_text("my own readme")
    result = cli_runner.invoke(app, ["export", str(run), str(out)])
    assert (
        result.exit_code == 2 and "README.md exists and was not written by cxrbench export" in result.output
    )
    assert "Traceback" not in result.output and sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "notes.txt",
    ]
    (out / "README.md").unlink()
    result = cli_runner.invoke(app, ["export", str(run), str(out)])
    assert result.exit_code == 0, result.output
    again = cli_runner.invoke(app, ["export", str(run), str(out)])  # our own files: replaced
    assert again.exit_code == 0 and (out / "notes.txt").read_text() == "keep me"


def test_push_offline_is_a_clear_error(evaluated_run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputError, match="--push needs the network") as err:
        export_run(evaluated_run[0], tmp_path / "hub", push="lab/cxr")
    assert "hf upload lab/cxr" in err.value.one_line()
    assert (tmp_path / "hub" / "model.safetensors").is_file()  # the export itself is complete


def test_push_uploads_only_what_the_export_wrote(evaluated_run, tmp_path, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants

    calls = {}

    class FakeApi:
        def create_repo(self, repo_id, **kw):
            calls["create"] = (repo_id, kw)
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            calls["upload"] = kw

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "hub"
    out.mkdir()
    (out / "private-notes.txt").write_text("not for the hub")
    result = export_run(evaluated_run[0], out, push="lab/cxr")
    assert result.url == "https://huggingface.co/lab/cxr" and calls["create"][0] == "lab/cxr"
    assert sorted(calls["upload"]["allow_patterns"]) == sorted(result.files)
    assert 'timm.create_model("hf-hub:lab/cxr"' in (out / "README.md").read_text()


def test_exported_weights_are_the_best_weights(evaluated_run, tmp_path):
    from safetensors.numpy import load_file

    from cxrbench.models.safeload import load_state_dict

    run, _ = evaluated_run
    export_run(run, tmp_path / "hub")
    exported = load_file(str(tmp_path / "hub" / "model.safetensors"))
    best = load_state_dict(run / "best.safetensors")
    assert exported.keys() == best.keys()
    assert all(np.array_equal(exported[k], best[k].numpy()) for k in best)

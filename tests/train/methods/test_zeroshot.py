"""train.methods.zeroshot: a zero-shot run scores with the init's own text tower and prompts (the library's
logits, pairwise softmax), reads no training image, flags inverted prompts (dropped by default), and its
run folder is self-contained: evaluate, predict and export --format onnx work on it."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.layout import RUN_ZEROSHOT
from cxrbench.train.config import TrainConfig
from cxrbench.train.loop import train
from cxrbench.train.methods import METHODS

pytest.importorskip("open_clip", reason="open_clip_torch (dev dependency, extra vlm)")
pytest.importorskip("transformers", reason="transformers (dev dependency, extra vlm)")

INIT = "random-siglip-test"
FINDINGS = ["cardiomegaly", "pleural_effusion"]


def zeroshot(cache, out, init=INIT, **options):
    cfg = TrainConfig(cache=str(cache), init=init, out=str(out), adaptation="zeroshot", workers=0, **options)
    return train(cfg, quiet=True)


@pytest.fixture(scope="module")
def cache(tiny_cache_factory, tmp_path_factory):
    return tiny_cache_factory(tmp_path_factory.mktemp("zs") / "cache", n_patients=100, seed=3)


@pytest.fixture(scope="module")
def kept_run(cache, tmp_path_factory):
    """A zero-shot run that keeps every finding (its val AUROCs tell which prompts point which way)."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("zs") / "keep"
    zeroshot(cache, run, zeroshot_inverted="keep")
    return run


def _expected(cache, split, init=INIT, seed=0, pairs=None):
    """Scores computed independently of the method: the tiny model's tower, its text tower's prompt
    embeddings, the library's logits (cosine x scale + bias), a softmax over each finding's pair."""
    import torch.nn.functional as F

    from cxrbench.adapt.prompts import load_prompts
    from cxrbench.data.augment import BatchTransform
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.models.build import create_model
    from cxrbench.models.vlm import load_vision_language

    model, info = create_model(init, 0, seed=seed)
    vl = load_vision_language(init, seed=seed)
    ds = CacheDataset(cache, split=split, findings=FINDINGS)
    tf = BatchTransform(info.mean, info.std, out_size=info.image_size).eval()
    x = tf(ds.batch(list(range(len(ds))))[0])
    pairs = pairs or [(p.positive, p.negative) for p in load_prompts().pairs(FINDINGS)]
    with torch.no_grad():
        img = vl.image_embeddings(model.eval(), x)
        out = []
        for pos, neg in pairs:
            text = torch.stack([F.normalize(vl.encode_text(list(side)).mean(0), dim=0)
                                for side in (pos, neg)])
            out.append(torch.softmax(vl.logits(img, text).double(), dim=-1)[:, 0])
    return torch.stack(out, 1).numpy(), ds.labels


def test_a_zero_shot_run_scores_with_the_text_tower_and_reads_no_training_image(kept_run, cache):
    from cxrbench.adapt.prompts import load_prompts
    from cxrbench.evaluate.inference import predict_split
    from cxrbench.stats.metrics import auroc

    meta = json.loads((kept_run / "best.json").read_text())
    assert meta["adaptation"] == "zeroshot" and meta["findings"] == FINDINGS and meta["head"] == []
    assert meta["trainable_params"] == 0 and meta["embeddings"]["train"] == "not needed"
    zs = meta["zeroshot"]
    assert zs["prompt_set"]["sha256"] == load_prompts().sha256 and zs["prompt_set"]["name"] == "cxrbench"
    assert zs["prompts"]["cardiomegaly"]["negative"][0] == "no cardiomegaly"
    assert (kept_run / RUN_ZEROSHOT).is_file() and zs["head_sha256"]
    folder = Path(meta["embeddings"]["folder"])
    assert (folder / "val.safetensors").is_file() and not (folder / "train.safetensors").exists()
    logged = [json.loads(line) for line in (kept_run / "log.jsonl").read_text().splitlines()]
    assert {r["finding"] for r in logged if r["kind"] == "zeroshot"} == set(FINDINGS)
    # the run's scores are the library's pairwise softmax, on every split
    for split in ("val", "test"):
        expected, labels = _expected(cache, split)
        got = predict_split(kept_run, split)
        assert np.allclose(got[[f"p_{f}" for f in FINDINGS]].to_numpy(), expected, atol=1e-5)
    expected, labels = _expected(cache, "val")
    for k, f in enumerate(FINDINGS):
        assert zs["val_auroc"][f] == pytest.approx(auroc(labels[:, k], expected[:, k]), abs=1e-9)
    assert np.isfinite(list(zs["val_auroc"].values())).all()


def _prompt_file(path: Path, flip: dict[str, bool]) -> Path:
    """The shipped prompts of FINDINGS, positive and negative swapped where ``flip`` says."""
    from cxrbench.adapt.prompts import load_prompts

    findings = {}
    for p in load_prompts().pairs(FINDINGS):
        pos, neg = (p.negative, p.positive) if flip[p.finding] else (p.positive, p.negative)
        findings[p.finding] = {"positive": list(pos), "negative": list(neg)}
    path.write_text(yaml.safe_dump({"format": 1, "name": "test", "version": "1", "findings": findings}))
    return path


def test_inverted_prompts_are_flagged_and_dropped_unless_kept(kept_run, cache, tmp_path):
    from cxrbench.evaluate.inference import predict_split

    val = json.loads((kept_run / "best.json").read_text())["zeroshot"]["val_auroc"]
    bad, good = FINDINGS  # turn the prompts so that `bad` points the wrong way and `good` the right way
    prompts = _prompt_file(tmp_path / "p.yaml", {bad: val[bad] > 0.5, good: val[good] < 0.5})
    zeroshot(cache, tmp_path / "drop", zeroshot_prompts=str(prompts))
    meta = json.loads((tmp_path / "drop" / "best.json").read_text())
    zs = meta["zeroshot"]
    assert meta["findings"] == [good] and zs["dropped"] == [bad] and zs["on_inverted"] == "drop"
    assert zs["inverted"] == {bad: pytest.approx(min(val[bad], 1 - val[bad]), abs=1e-9)}
    assert meta["metric"]["value"] == pytest.approx(max(val[good], 1 - val[good]), abs=1e-9)
    assert list(predict_split(tmp_path / "drop", "test").filter(like="p_").columns) == [f"p_{good}"]
    assert zs["prompt_set"]["source"] == str(prompts.resolve()) and zs["prompt_set"]["name"] == "test"
    # keep: scored, still flagged; the Methods text quotes the prompts and names the inverted finding
    zeroshot(cache, tmp_path / "keep", zeroshot_prompts=str(prompts), zeroshot_inverted="keep")
    kept = json.loads((tmp_path / "keep" / "best.json").read_text())
    assert kept["findings"] == FINDINGS and set(kept["zeroshot"]["inverted"]) == {bad}
    method = METHODS["zeroshot"]
    text = method.sentence([method.facts({}, meta), method.facts({}, kept)])
    assert "softmax over the finding's own positive/negative prompt pair" in text
    assert "prompt set test 1" in text and f'"{kept["zeroshot"]["prompts"][bad]["positive"][0]}"' in text
    assert f"{bad} (val AUROC" in text and "inverted" in text and "dropped unless a run kept them" in text
    # every finding inverted: nothing valid to report
    both = _prompt_file(tmp_path / "both.yaml", {bad: val[bad] > 0.5, good: val[good] > 0.5})
    with pytest.raises(InputError, match="every finding score below chance") as e:
        zeroshot(cache, tmp_path / "none", zeroshot_prompts=str(both))
    assert "zeroshot_inverted: keep" in e.value.fix


def test_predict_evaluate_and_onnx_export_of_a_zero_shot_run(kept_run, cache, tmp_path, cli_runner):
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from PIL import Image

    from cxrbench.data.augment import BatchTransform
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.evaluate.inference import predict_split
    from cxrbench.evaluate.run_eval import evaluate_run

    run = tmp_path / "run"
    shutil.copytree(kept_run, run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate_run(run, "val", n_resamples=20)
    images = tmp_path / "images"
    images.mkdir()
    ds = CacheDataset(cache, split="test", findings=FINDINGS)
    for i in range(3):
        Image.fromarray(ds.batch([i])[0][0].numpy()).save(images / f"{i}.png")
    import importlib.util

    saliency = importlib.util.find_spec("pytorch_grad_cam") is not None  # extra saliency: the maps too
    result = cli_runner.invoke(app, ["predict", str(run), str(images), "--out", str(tmp_path / "p.csv")]
                               + (["--saliency", str(tmp_path / "maps")] if saliency else []))
    assert result.exit_code == 0, result.output + result.stderr
    assert not saliency or len(list((tmp_path / "maps").glob("*.png"))) == 3 * len(FINDINGS)
    import pandas as pd

    pred = pd.read_csv(tmp_path / "p.csv")
    assert len(pred) == 3 and {f"pred_{f}" for f in FINDINGS} <= set(pred.columns)
    assert pred[[f"p_{f}" for f in FINDINGS]].apply(lambda c: c.between(0, 1)).all().all()
    # the ONNX file carries the text embeddings: onnxruntime reproduces the run's own scores
    out = tmp_path / "onnx"
    result = cli_runner.invoke(app, ["export", str(run), str(out), "--format", "onnx"])
    assert result.exit_code == 0, result.output + result.stderr
    meta = json.loads((run / "best.json").read_text())
    x = BatchTransform(meta["mean"], meta["std"], out_size=meta["image_size"]).eval()(
        ds.batch(list(range(len(ds))))[0]).numpy()
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"image": x})[0]
    ref = predict_split(run, "test")[[f"p_{f}" for f in FINDINGS]].to_numpy()
    assert np.allclose(probs, ref, atol=1e-5)
    card = (out / "README.md").read_text()
    assert "zeroshot (no training labels)" in card and "onnxruntime.InferenceSession" in card
    assert "prompt set cxrbench" in card and "no training: the training split was not read" in card
    # the hub format is a plain timm classifier: refused with one line naming the format that works
    result = cli_runner.invoke(app, ["export", str(run), str(tmp_path / "hub")])
    assert result.exit_code == 2 and "--format onnx" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "hub").exists()


def test_a_non_vision_language_init_is_refused_before_anything_runs(cache, tmp_path, cli_runner):
    out = tmp_path / "run"
    result = cli_runner.invoke(app, ["train", "--cache", str(cache), "--init", "random-vit-test", "--out",
                                     str(out), "--adaptation", "zeroshot"])
    assert result.exit_code == 2 and not out.exists()
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "adaptation zeroshot needs a vision-language init" in line
    assert "random-clip-test" in line and "Traceback" not in result.output


def test_missing_prompts_and_the_registry_entry(cache, tmp_path):
    prompts = tmp_path / "one.yaml"
    prompts.write_text("format: 1\nname: one\nversion: '1'\nfindings:\n"
                       "  cardiomegaly: {positive: [big heart], negative: [normal heart]}\n")
    with pytest.raises(InputError, match="no prompts for pleural_effusion") as e:
        zeroshot(cache, tmp_path / "r", zeroshot_prompts=str(prompts))
    assert e.value.where == str(prompts.resolve())
    m = METHODS["zeroshot"]
    assert not m.stochastic and not m.uses_training_data and m.export_formats == ("onnx",)
    assert m.regime == "embeddings" and m.has_classifier
    with pytest.raises(InputError, match="zeroshot_prompts: must name a prompt file"):
        TrainConfig.from_dict({"cache": "c", "init": "i", "out": "o", "adaptation": "zeroshot",
                               "zeroshot_prompts": " "})
    with pytest.raises(InputError, match="zeroshot_inverted"):
        TrainConfig.from_dict({"cache": "c", "init": "i", "out": "o", "zeroshot_inverted": "flip"})

"""cxrbench.evaluate.saliency, examples and `predict --saliency`: maps peak on a phantom lesion drawn at
a known place, overlays are written safely, and the report's top true/false positives come with maps."""

import io
import json
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.layout import SALIENCY_MANIFEST
from cxrbench.evaluate import saliency as sal

pytestmark = pytest.mark.usefixtures("torch_one_thread")
pytest.importorskip("pytorch_grad_cam")


def tiny_model(arch: str, size: int = 32, classes: int = 2, **kwargs):
    from cxrbench.models.build import create_model

    model, info = create_model(f"random-{arch}", classes, image_size=size, **kwargs)
    return model.eval(), info


def test_maps_have_the_input_size_are_class_specific_and_in_unit_range():
    torch.manual_seed(0)
    x = torch.randn(3, 3, 64, 64)
    for arch, kwargs in (("vit-test", {"patch_size": 8}), ("vit-test", {"patch_size": 8, "reg_tokens": 2}),
                         ("convnext-test", {})):  # ConvNeXt: stride 32, a 2 x 2 map at 64 px
        model, _ = tiny_model(arch, size=64, **kwargs)
        maps = sal.saliency_maps(model, x, [0, 1], "gradcam")
        assert maps.shape == (3, 2, 64, 64) and maps.dtype == np.float32
        assert maps.min() >= 0 and maps.max() <= 1 and np.isfinite(maps).all()
        assert not np.allclose(maps[:, 0], maps[:, 1])  # one map per finding
        assert not any(p.grad is not None for p in model.parameters())  # gradients cleaned up
    model, _ = tiny_model("vit-test", size=64, patch_size=8, reg_tokens=2)
    rollout = sal.saliency_maps(model, x, [0, 1], "rollout")
    assert rollout.shape == (3, 2, 64, 64) and np.array_equal(rollout[:, 0], rollout[:, 1])
    assert all(b.attn.fused_attn == model.blocks[0].attn.fused_attn for b in model.blocks)  # restored
    with pytest.raises(InputError, match="needs a ViT"):
        sal.saliency_maps(tiny_model("convnext-test", size=64)[0], x, [0], "rollout")
    with pytest.raises(InputError, match="did you mean 'rollout'"):
        sal.saliency_maps(model, x, [0], "rolout")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)
    with pytest.raises(InputError, match=r"cxrbench\[saliency\]"):
        sal.require_gradcam()


def lung_crops(n: int, seed: int):
    """Phantom radiographs (varied anatomy) cropped to the right lung; half carry a mass at a random
    place. Returns uint8 images (n, 64, 64), labels and the renderer's mass masks."""
    from cxrbench.phantom import render, sample_params
    from cxrbench.phantom.anatomy import SEVERITY_COLUMNS

    rng = np.random.default_rng(seed)
    pos = rng.random(n) < 0.5
    images = pd.DataFrame({"patient": np.arange(n), "view": "PA", "female": (rng.random(n) < 0.45) * 1.0,
                           "age": rng.uniform(20, 90, n), **{c: np.zeros(n) for c in SEVERITY_COLUMNS}})
    images["mass"] = pos * 1.0
    params = sample_params(images, rng)
    params["mass_r"] = rng.uniform(0.1, 0.15, n).astype(np.float32)
    params["mass_u"] = -rng.uniform(0.3, 0.55, n).astype(np.float32)  # the patient's right lung
    params["mass_v"] = rng.uniform(-0.4, 0.2, n).astype(np.float32)
    img, masks = render(params, size=128, return_masks=True)
    crop = (slice(None), slice(26, 90), slice(4, 68))
    return (np.clip(img[crop], 0, 1) * 255).astype(np.uint8), pos.astype(np.float32), masks["mass"][crop]


def pointing_game(maps: np.ndarray, masks: np.ndarray, tolerance: int = 4) -> tuple[float, float]:
    """Share of maps whose peak lies in the lesion's box grown by ``tolerance`` px, and that box's mean
    share of the image (the hit rate of a peak placed at random)."""
    hits, chance = [], []
    for m, mask in zip(maps, masks, strict=True):
        ys, xs = np.nonzero(mask > 0.3)
        box = np.zeros(mask.shape, dtype=bool)
        box[max(ys.min() - tolerance, 0):ys.max() + tolerance + 1,
            max(xs.min() - tolerance, 0):xs.max() + tolerance + 1] = True
        hits.append(box[np.unravel_index(np.argmax(m), m.shape)])
        chance.append(box.mean())
    return float(np.mean(hits)), float(np.mean(chance))


@pytest.mark.slow
def test_maps_of_a_briefly_trained_vit_peak_on_the_phantom_lesion():
    from cxrbench.data.augment import BatchTransform

    x_train, y_train, _ = lung_crops(512, seed=1)
    x_test, y_test, m_test = lung_crops(64, seed=2)
    torch.manual_seed(0)
    model, info = tiny_model("vit-test", size=64, classes=1, patch_size=8)
    model.train()
    tf = BatchTransform(info.mean, info.std, out_size=64)
    # lr 3e-4: at 1e-3 without warmup this tiny ViT stays at chance under torch 2.14 / timm 1.0.31 (it
    # learned with the libraries of an earlier CI), which says nothing about the saliency maps
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    gen = torch.Generator().manual_seed(0)
    X, Y = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(300):
        idx = torch.randint(0, len(X), (32,), generator=gen)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(tf(X[idx]))[:, 0], Y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    pos = np.flatnonzero(y_test == 1)
    x = tf(torch.from_numpy(x_test[pos]))
    with torch.no_grad():
        assert torch.sigmoid(model(x)).mean() > 0.8  # it learned the lesion
    hit, chance = pointing_game(sal.saliency_maps(model, x, [0], "rollout")[:, 0], m_test[pos])
    assert chance < 0.2 and hit >= 0.6 and hit > 3 * chance, (hit, chance)
    # Grad-CAM is not asserted to localize: on this model (torch 2.14, timm 1.0.31, grad-cam 1.5.7) its
    # peak hits the lesion no more often than chance at any block (0.03-0.29 vs 0.15) while rollout hits
    # it every time and the input gradient 9 times in 10; with earlier libraries (and lr 1e-3) it hit.
    # Grad-CAM on a ViT is no localization guarantee, which is why studies score every map against
    # chance (evaluate.localization) instead of trusting the gallery.


def write_pngs(folder, n=3, size=40):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"scan{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_predict_writes_one_overlay_per_file_and_finding_and_replaces_only_its_own(tiny_run, tmp_path):
    from cxrbench.evaluate.predict import predict_files

    run, _ = tiny_run
    files = write_pngs(tmp_path / "in")
    twin = tmp_path / "other" / "scan0.png"  # the same stem twice
    twin.parent.mkdir()
    twin.write_bytes(files[0].read_bytes())
    out = tmp_path / "maps"
    df = predict_files(run, [*files, twin], batch_size=2, device="cpu", saliency_dir=out)
    manifest = json.loads((out / SALIENCY_MANIFEST).read_text())
    names = sorted(e["overlay"] for e in manifest["files"])
    assert len(names) == 8 and "scan0-2_cardiomegaly.png" in names and manifest["method"] == "gradcam"
    img = Image.open(io.BytesIO((out / "scan1_pleural_effusion.png").read_bytes()))
    assert img.mode == "RGB" and img.size == (32, 32)  # the model's input size
    row = next(e for e in manifest["files"] if e["overlay"] == "scan1_cardiomegaly.png")
    assert row["p"] == pytest.approx(float(df.loc[1, "p_cardiomegaly"]), rel=1e-5)
    predict_files(run, files[:1], device="cpu", saliency_dir=out, saliency_method="rollout")
    assert sorted(p.name for p in out.iterdir()) == sorted([SALIENCY_MANIFEST, "scan0_cardiomegaly.png",
                                                            "scan0_pleural_effusion.png"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "scan0_cardiomegaly.png").write_bytes(b"not ours")
    with pytest.raises(InputError, match="cxrbench did not write"):
        predict_files(run, files[:1], device="cpu", saliency_dir=foreign)
    assert (foreign / "scan0_cardiomegaly.png").read_bytes() == b"not ours"


def test_cli_predict_saliency(tiny_run, tmp_path, cli_runner):
    run, _ = tiny_run
    files = write_pngs(tmp_path / "in", n=2)
    out = tmp_path / "maps"
    result = cli_runner.invoke(app, ["predict", str(run), *map(str, files), "--saliency", str(out),
                                     "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "wrote 4 saliency overlay(s)" in result.stderr and (out / "scan1_cardiomegaly.png").is_file()
    result = cli_runner.invoke(app, ["predict", str(run), str(files[0]), "--saliency", str(out),
                                     "--saliency-method", "gradcams"])
    assert result.exit_code == 2 and "did you mean 'gradcam'" in result.stderr


def test_top_examples_are_the_highest_scoring_true_and_false_positives(tiny_run, tmp_path):
    import shutil
    import warnings

    from cxrbench.evaluate.examples import EXAMPLE_COLUMNS, top_examples
    from cxrbench.evaluate.predictions import read_predictions
    from cxrbench.evaluate.run_eval import evaluate_run

    source, cache = tiny_run
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "best.json", "config.yaml"):
        shutil.copy(source / name, run / name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metrics = evaluate_run(run, "test", n_resamples=0, subgroups=False, calibration=False,
                               predict_kwargs={"cache_dir": cache, "device": "cpu"})
    out = top_examples(run, k=2, cache_dir=cache, device="cpu", thumb_size=48)
    assert list(out.columns) == list(EXAMPLE_COLUMNS)
    assert set(out["kind"]) <= {"true_positive", "false_positive"} and len(out) > 0
    preds = read_predictions(run / "eval" / "test" / "predictions.parquet").set_index("image_id")
    for (f, kind), rows in out.groupby(["finding", "kind"]):
        t = metrics["per_finding"][f]["threshold"]
        y = preds[f"y_{f}"]
        cands = preds[(y == (1.0 if kind == "true_positive" else 0.0)) & (preds[f"p_{f}"] >= t)]
        assert list(rows["image_id"]) == list(cands[f"p_{f}"].sort_values(ascending=False).index[:2])
        assert (rows["threshold"] == t).all()
    thumb = Image.open(io.BytesIO(out["png"].iloc[0]))
    assert thumb.size == (48, 48) and len(out["png"].iloc[0]) < 20_000
    with pytest.raises(InputError, match="not predicted"):
        top_examples(run, findings=["edema"], cache_dir=cache)


def test_example_overlays_are_drawn_over_the_original_at_a_readable_size(tmp_path, image_dataset_factory,
                                                                        torch_one_thread):
    """A 32-px model's maps are drawn over the original image (read again, preprocessed as the cache
    was) at 128 px, not over the 32-px cache pixels; without the original, over the cache upsampled."""
    import shutil
    import warnings

    import numpy as np

    from cxrbench.cache.build import prepare_cache
    from cxrbench.evaluate.examples import top_examples
    from cxrbench.evaluate.run_eval import evaluate_run
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    root = tmp_path / "data"
    index = image_dataset_factory(root, n=48, shape=(96, 80))
    cache = tmp_path / "cache"
    prepare_cache(index, root, cache, size=32, workers=1, quiet=True)
    run = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(cache=str(cache), init="random-vit-test", out=str(run), epochs=1, batch_size=8,
                          lr=1e-3, workers=0, augment=False), quiet=True)
        evaluate_run(run, "test", n_resamples=0, subgroups=False, calibration=False,
                     predict_kwargs={"cache_dir": cache, "device": "cpu"})
    first = top_examples(run, k=1, cache_dir=cache, device="cpu", thumb_size=128)
    shown = np.asarray(Image.open(io.BytesIO(first["png"].iloc[0])))
    assert shown.shape == (128, 128, 3)
    shutil.move(root, tmp_path / "moved")  # the original is gone: the cache pixels, upsampled
    fallback = top_examples(run, k=1, cache_dir=cache, device="cpu", thumb_size=128)
    again = np.asarray(Image.open(io.BytesIO(fallback["png"].iloc[0])))
    assert again.shape == (128, 128, 3)
    # the original holds detail the 32-px cache cannot: neighbouring pixels differ more
    detail = np.abs(np.diff(shown.astype(float), axis=1)).mean()
    assert detail > 1.5 * np.abs(np.diff(again.astype(float), axis=1)).mean()

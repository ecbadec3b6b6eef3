"""cxrbench.evaluate.localization and localization_stats: saliency maps of a run scored against the
regions of a cache. A constructed case with a known answer (maps whose maximum lies inside one
finding's boxes and outside the other's), the real Grad-CAM and rollout paths on a trained run, the
statistics against chance and between models, the files, the kNN refusal and the CLI door."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.layout import LOCALIZATION_FILE, LOCALIZATION_ROWS
from cxrbench.evaluate import localization as L
from cxrbench.evaluate.localization_stats import (
    PAIR_COLUMNS,
    ROW_COLUMNS,
    SUMMARY_COLUMNS,
    compare_localization,
    summarize_localization,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")
pytest.importorskip("pytorch_grad_cam")

BAND = 16  # write_tiny_cache: finding k brightens rows k*16:(k+1)*16, columns 0:16 of a 32-px image


@pytest.fixture(scope="module")
def regions_cache(tiny_run, tmp_path_factory):
    """The tiny run's cache again, with a box per positive image on the band its finding brightens."""
    from cxrbench.cache.build import write_cache
    from cxrbench.cache.read import open_cache
    from cxrbench.index.regions import make_regions

    _, source = tiny_run
    cache = open_cache(source)
    index = cache.index.drop(columns=["cache_row"])
    ids, findings, y0 = [], [], []
    for k, f in enumerate(cache.findings):
        pos = index[index[f] == 1]["image_id"].tolist()
        ids += pos
        findings += [f] * len(pos)
        y0 += [float(k * BAND)] * len(pos)
    n = len(ids)
    regions = make_regions(image_id=ids, finding=findings, label=findings, kind=["box"] * n, x0=[0.0] * n,
                           y0=y0, x1=[float(BAND)] * n, y1=[v + BAND for v in y0])
    out = tmp_path_factory.mktemp("regions") / "cache"
    write_cache(out, np.asarray(cache.images), index, list(cache.findings), regions=regions,
                source_shapes=np.array([[32, 32]] * len(index)))
    return out


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("best.safetensors", "best.json", "config.yaml"):
        shutil.copy(tiny_run[0] / name, run / name)
    return run


def fixed_peak_maps(model, x, classes, method="gradcam"):
    """A 'model' whose map peaks at (8, 8) of a 64-px grid, the top-left quarter: inside the
    cardiomegaly band of every image, outside the pleural effusion band."""
    rr, cc = np.mgrid[:64, :64]
    one = np.exp(-((rr - 15.5) ** 2 + (cc - 15.5) ** 2) / (2 * 6.0**2)).astype(np.float32)
    return np.broadcast_to(one, (x.shape[0], len(classes), 64, 64)).copy()


def test_a_map_whose_maximum_lies_in_the_region_scores_one_and_outside_zero(run_copy, regions_cache,
                                                                           monkeypatch):
    from cxrbench.evaluate import saliency

    monkeypatch.setattr(saliency, "saliency_maps", fixed_peak_maps)
    rows = L.localization_rows(run_copy, "test", cache_dir=regions_cache, device="cpu")
    assert list(rows.columns) == list(ROW_COLUMNS)
    wide = rows.pivot_table(index=["finding", "image_id"], columns="metric", values="value")
    inside, outside = wide.loc["cardiomegaly"], wide.loc["pleural_effusion"]
    assert (inside["pointing"] == 1).all() and (outside["pointing"] == 0).all()
    assert (inside["energy"] > 0.5).all() and (outside["energy"] < 0.25).all()
    assert (inside["hit@0.5"] == 1).all() and (outside["iou@0.5"] < 0.1).all()
    assert np.allclose(rows.loc[rows["metric"].isin(["pointing", "energy"]), "chance"], 0.25)
    assert np.allclose(rows["area"], 0.25)
    table = summarize_localization(rows, n_resamples=200, seed=0)
    point = table.set_index(["finding", "metric"])
    assert point.loc[("cardiomegaly", "pointing"), "value"] == 1.0
    assert point.loc[("cardiomegaly", "pointing"), "diff_lo"] > 0  # above chance
    assert point.loc[("pleural_effusion", "pointing"), "diff_hi"] < 0  # below chance
    assert point.loc[("mean", "pointing"), "value"] == pytest.approx(0.5)


def test_real_gradcam_and_rollout_maps_of_the_run_are_scored_and_written(run_copy, regions_cache):
    doc = L.evaluate_localization(run_copy, "test", cache_dir=regions_cache, device="cpu", n_resamples=50)
    folder = run_copy / "eval" / "test"
    assert (folder / LOCALIZATION_FILE).is_file() and (folder / LOCALIZATION_ROWS).is_file()
    back, rows = L.read_localization(folder)
    assert back["table"] == json.loads(json.dumps(doc["table"])) and back["scored"]
    table = pd.DataFrame(back["table"], columns=list(SUMMARY_COLUMNS))
    assert set(table["metric"]) == {"pointing", "energy", "iou@0.5", "hit@0.5"}
    assert ((rows["value"] >= 0) & (rows["value"] <= 1)).all() and (rows["chance"] <= 1).all()
    from cxrbench.cache.read import open_cache

    index = open_cache(regions_cache).columns(["image_id", "split"])
    ds_ids = set(index.loc[index["split"] == "test", "image_id"])
    regions = open_cache(regions_cache).regions()
    want = regions[regions["image_id"].isin(ds_ids)].groupby("finding")["image_id"].nunique().to_dict()
    assert doc["coverage"]["images"] == want  # every test image with a box, once per finding
    assert (rows.groupby(["finding", "image_id"]).size() == 4).all()
    rollout = L.localization_rows(run_copy, "test", cache_dir=regions_cache, device="cpu",
                                  options=L.LocalizationOptions(method="rollout", levels=(0.3, 0.6)))
    assert set(rollout["metric"]) == {"pointing", "energy", "iou@0.3", "hit@0.3", "iou@0.6", "hit@0.6"}
    (folder / LOCALIZATION_ROWS).write_bytes(b"edited")
    with pytest.raises(InputError, match="another scoring"):
        L.read_localization(folder)


def test_a_cache_without_regions_is_refused_or_recorded(run_copy, tiny_run, tmp_path):
    _, plain = tiny_run
    with pytest.raises(L.NothingToScore, match="no localization ground truth"):
        L.evaluate_localization(run_copy, "test", cache_dir=plain, device="cpu", n_resamples=10)
    doc = L.evaluate_localization(run_copy, "test", cache_dir=plain, device="cpu", n_resamples=10,
                                  out_dir=tmp_path / "out", missing_ok=True)
    assert doc["scored"] is False and "ground truth" in doc["reason"]
    back, rows = L.read_localization(tmp_path / "out")
    assert back["scored"] is False and rows.empty


def test_options_are_checked():
    with pytest.raises(InputError, match="did you mean 'rollout'"):
        L.LocalizationOptions(method="rolout")
    with pytest.raises(InputError, match="localization-level"):
        L.LocalizationOptions(levels=(0.0,))
    with pytest.raises(InputError, match="hit-iou"):
        L.LocalizationOptions(hit_iou=1.5)


def rows_of(hits: dict[str, list[float]], patients=None) -> pd.DataFrame:
    """Pointing rows of images i0..: finding -> per-image values (chance 0.2)."""
    out = []
    for f, values in hits.items():
        for i, v in enumerate(values):
            out.append((f"i{i}", patients[i] if patients else f"p{i}", f, "pointing", v, 0.2, 0.2))
    return pd.DataFrame(out, columns=list(ROW_COLUMNS))


def test_paired_tests_between_models_on_the_same_images():
    a = rows_of({"mass": [1.0] * 30, "nodule": [1.0, 0.0] * 15})
    b = rows_of({"mass": [0.0] * 30, "nodule": [1.0, 0.0] * 15})
    table = compare_localization({"a": a, "b": b}, n_resamples=200, seed=1)
    assert list(table.columns) == list(PAIR_COLUMNS)
    t = table.set_index("finding")
    assert t.loc["mass", "diff"] == 1.0 and t.loc["mass", "p"] == 0.0 and t.loc["mass", "diff_lo"] == 1.0
    assert t.loc["nodule", "diff"] == 0.0 and t.loc["nodule", "p"] == 1.0
    assert t.loc["mean", "diff"] == 0.5
    assert t.loc["nodule", "p_adjusted"] >= t.loc["nodule", "p"]
    with pytest.raises(InputError, match="different images"):
        compare_localization({"a": a, "b": rows_of({"mass": [0.0] * 29, "nodule": [1.0, 0.0] * 15})},
                             n_resamples=20)
    with pytest.raises(InputError, match="two or more"):
        compare_localization({"a": a}, n_resamples=20)


def test_the_summary_against_chance_and_its_patient_resamples():
    rows = rows_of({"mass": [1.0] * 10 + [0.0] * 10}, patients=[f"p{i // 4}" for i in range(20)])
    t = summarize_localization(rows, n_resamples=300, seed=0).set_index("finding")
    assert list(summarize_localization(rows, n_resamples=0).columns) == list(SUMMARY_COLUMNS)
    assert t.loc["mass", "value"] == 0.5 and t.loc["mass", "chance"] == pytest.approx(0.2)
    assert t.loc["mass", "n_images"] == 20 and t.loc["mass", "n_patients"] == 5
    assert t.loc["mass", "lo"] < 0.5 < t.loc["mass", "hi"] and t.loc["mass", "diff"] == pytest.approx(0.3)
    assert "mean" not in t.index  # one finding: no mean row
    image = summarize_localization(rows, n_resamples=300, seed=0, cluster="image").set_index("finding")
    # patients hold 4 identical images each: patient resamples are wider than image resamples
    assert (t.loc["mass", "hi"] - t.loc["mass", "lo"]) > (image.loc["mass", "hi"] - image.loc["mass", "lo"])


def test_cli_localization_and_the_knn_refusal(run_copy, regions_cache, cli_runner, tmp_path):
    result = cli_runner.invoke(app, ["evaluate", str(run_copy), "--cache", str(regions_cache), "--bootstrap",
                                     "20", "--device", "cpu", "--localization", "--localization-level", "0.4",
                                     "--no-subgroups", "--no-calibration"])
    assert result.exit_code == 0, result.output
    assert "pointing" in result.output and "iou@0.4" in result.output
    doc = json.loads((run_copy / "eval" / "test" / LOCALIZATION_FILE).read_text())
    assert doc["levels"] == [0.4] and doc["bootstrap"]["n_resamples"] == 20
    knn = tmp_path / "knn"
    knn.mkdir()
    meta = json.loads((run_copy / "best.json").read_text())
    (knn / "best.json").write_text(json.dumps({**meta, "adaptation": "knn"}))
    result = cli_runner.invoke(app, ["evaluate", str(knn), "--localization"])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "kNN run has no classifier" in lines[0]
    result = cli_runner.invoke(app, ["evaluate", str(run_copy), "--localization", "--hit-iou", "2"])
    assert result.exit_code == 2 and "--hit-iou" in result.stderr

"""Regions carried into a cache: boxes and masks follow the pixels exactly through stretch, pad and
crop; a cache built from an index with regions holds them in cache pixels (phantoms with known regions)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.cache.build import prepare_cache, write_cache
from cxrbench.cache.preprocess import preprocess
from cxrbench.cache.read import open_cache
from cxrbench.cache.regions import box_to_cache, mask_to_cache, read_cache_regions
from cxrbench.common.errors import InputError
from cxrbench.common.layout import CACHE_MANIFEST, CACHE_REGIONS, regions_path
from cxrbench.index.build import build_index
from cxrbench.index.regions import make_regions, read_regions, region_mask
from cxrbench.phantom import generate

H, W, S = 300, 500, 100
BOX = (130.0, 60.0, 280.0, 210.0)  # edges that land on whole cache pixels in every mode (see below)
EXPECTED = {"stretch": (26, 20, 56, 70), "crop": (10, 20, 60, 70), "pad": (26, 32, 56, 62)}


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_a_drawn_box_lands_where_the_mapped_box_says(mode):
    img = np.zeros((H, W), dtype=np.float32)
    x0, y0, x1, y1 = (int(v) for v in BOX)
    img[y0:y1, x0:x1] = 1.0
    out = preprocess(img, S, mode, equalize=False)
    mapped, keep = box_to_cache(np.array([BOX]), (H, W), S, mode)
    assert keep[0] and tuple(mapped[0]) == EXPECTED[mode]
    c0, r0, c1, r1 = EXPECTED[mode]
    inside = np.zeros((S, S), dtype=bool)
    inside[r0:r1, c0:c1] = True
    assert (out[inside] == 255).all() and (out[~inside] == 0).all()


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("shape, size", [((300, 500), 100), ((170, 90), 64), ((40, 60), 96)])  # shrink, grow
def test_any_box_keeps_its_mass_and_place(mode, shape, size):
    rng = np.random.default_rng(3)
    for _ in range(5):
        h, w = shape
        x0, x1 = np.sort(rng.uniform(0, w, 2))
        y0, y1 = np.sort(rng.uniform(0, h, 2))
        if x1 - x0 < 6 or y1 - y0 < 6:
            continue
        mask = np.zeros(shape, dtype=bool)
        mask[int(np.ceil(y0)) : int(y1), int(np.ceil(x0)) : int(x1)] = True  # the whole pixels inside
        edges = (float(np.ceil(x0)), float(np.ceil(y0)), float(int(x1)), float(int(y1)))
        mapped, keep = box_to_cache(np.array([edges]), shape, size, mode)
        pixels = preprocess(mask.astype(np.float32), size, mode, equalize=False).astype(np.float64) / 255
        if not keep[0]:
            assert pixels.sum() < 1e-6
            continue
        bx0, by0, bx1, by1 = mapped[0]
        assert pixels.sum() == pytest.approx((bx1 - bx0) * (by1 - by0), rel=0.02, abs=1.0)
        ys, xs = np.nonzero(pixels > 0.5)
        assert xs.min() >= np.floor(bx0) - 1 and xs.max() <= np.ceil(bx1) and ys.min() >= np.floor(by0) - 1
        cached = mask_to_cache(mask, size, mode, "area")
        assert (cached == (preprocess(mask.astype(np.float32), size, mode, equalize=False) >= 128)).all()


def test_a_box_outside_the_crop_window_is_dropped():
    _, keep = box_to_cache(np.array([[0.0, 0.0, 50.0, 50.0], [200, 10, 300, 20]]), (H, W), S, "crop")
    assert keep.tolist() == [False, True]


@pytest.fixture(scope="module")
def siim(tmp_path_factory):
    root = tmp_path_factory.mktemp("siim") / "data"
    truth = generate(root, "siim", 24, size=64, seed=2, quiet=True, prevalence={"pneumothorax": 0.6})
    index = root.parent / "siim.parquet"
    build_index("siim", root, out=index, carve="hash", split_fractions="1,0,0")
    return root, index, truth


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_siim_masks_on_the_1024_grid_land_on_the_phantoms_truth(siim, tmp_path, mode):
    root, index, truth = siim
    prepare_cache(index, root, tmp_path / "c", size=32, resize=mode, workers=1, quiet=True)
    cache = open_cache(tmp_path / "c")
    got, meta = read_cache_regions(tmp_path / "c")
    assert meta["space"] == "cache" and meta["resize"] == mode and (got["width"] == 32).all()
    assert got.equals(cache.regions())
    want, _ = read_regions(regions_path(root / "_phantom" / "truth.parquet"))
    want = want[want["finding"] == "pneumothorax"]
    assert len(want) and set(got["image_id"]) <= set(want["image_id"])
    for image_id, rows in got.groupby("image_id"):
        ours = np.logical_or.reduce([region_mask(r, 32, 32) for _, r in rows.iterrows()])
        truth_mask = region_mask(want[want["image_id"] == image_id].iloc[0], 64, 64)
        assert (ours == mask_to_cache(truth_mask, 32, mode)).all(), image_id


def test_nih_boxes_in_the_1024_space_land_on_the_truth(tmp_path):
    root = tmp_path / "nih"
    generate(
        root,
        "nih",
        30,
        size=64,
        seed=4,
        quiet=True,
        prevalence={"cardiomegaly": 0.5, "pleural_effusion": 0.5, "nodule": 0.3},
    )
    build_index("nih", root, out=tmp_path / "nih.parquet", views="all")
    index_regions, _ = read_regions(regions_path(tmp_path / "nih.parquet"))
    assert (index_regions["width"] == 1024).all() and len(index_regions)
    prepare_cache(
        tmp_path / "nih.parquet", root, tmp_path / "c", size=32, resize="pad", workers=2, quiet=True
    )
    got, _ = read_cache_regions(tmp_path / "c")
    truth, _ = read_regions(regions_path(root / "_phantom" / "truth.parquet"))
    truth = truth.set_index(["image_id", "finding"])
    assert len(got) == len(index_regions)
    for r in got.itertuples(index=False):
        t = truth.loc[(r.image_id, r.finding)]
        want, _ = box_to_cache(np.array([[t.x0, t.y0, t.x1, t.y1]]), (64, 64), 32, "pad")
        np.testing.assert_allclose([r.x0, r.y0, r.x1, r.y1], want[0], atol=1e-3)


def test_an_up_to_date_cache_gets_new_regions_without_a_rebuild(siim, tmp_path):
    root, index, _ = siim
    plain = tmp_path / "plain.parquet"
    plain.write_bytes(index.read_bytes())  # the same index, without its regions beside it
    prepare_cache(plain, root, tmp_path / "c", size=32, workers=1, quiet=True)
    assert not (tmp_path / "c" / CACHE_REGIONS).exists()
    manifest = (tmp_path / "c" / CACHE_MANIFEST).read_bytes()
    with pytest.raises(InputError, match="no localization ground truth"):
        open_cache(tmp_path / "c").regions()
    regions_path(plain).write_bytes(regions_path(index).read_bytes())
    prepare_cache(plain, root, tmp_path / "c", size=32, workers=1, quiet=True)
    assert (
        len(open_cache(tmp_path / "c").regions())
        and (tmp_path / "c" / CACHE_MANIFEST).read_bytes() == manifest
    )


def test_write_cache_takes_regions_with_the_original_shapes(tmp_path):
    index = pd.DataFrame(
        {
            "image_id": ["a", "b"],
            "patient_id": ["1", "2"],
            "path": ["a.png", "b.png"],
            "view": "PA",
            "split": "train",
            "dataset": "x",
            "cardiomegaly": [1.0, 0.0],
        }
    )
    regions = make_regions(
        image_id=["a"],
        finding=["cardiomegaly"],
        label=["Cardiomegaly"],
        kind=["box"],
        x0=[130.0],
        y0=[60.0],
        x1=[280.0],
        y1=[210.0],
    )
    images = np.zeros((2, S, S), dtype=np.uint8)
    with pytest.raises(InputError, match="original"):
        write_cache(tmp_path / "c0", images, index, regions=regions)
    write_cache(
        tmp_path / "c", images, index, resize="crop", regions=regions, source_shapes=np.array([[H, W]] * 2)
    )
    got = open_cache(tmp_path / "c").regions()
    assert tuple(got.iloc[0][["x0", "y0", "x1", "y1"]]) == EXPECTED["crop"]

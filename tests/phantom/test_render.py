"""Phantom drawing: range, determinism, visible findings, site styles, learnability."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from cxrbench.common.errors import InputError
from cxrbench.phantom import neutral_params, render, sample_cohort, sample_params, site_style
from cxrbench.phantom.anatomy import AP_MAGNIFICATION, CTR_NORMAL
from cxrbench.phantom.style import SiteStyle

CLEAN = SiteStyle("clean", noise=0.0, blur=0.0, sharpen=0.0, marker="")
SIZE = 128


def _cohort_params(n_patients: int, seed: int, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    cohort = sample_cohort(n_patients, np.random.default_rng(seed), **kwargs)
    return cohort, sample_params(cohort, np.random.default_rng(seed + 1))


def _ctr(masks: dict[str, np.ndarray], i: int = 0) -> float:
    """Cardiothoracic ratio measured on the masks: widest heart row / widest lung row."""

    def width(m: np.ndarray) -> int:
        cols = np.flatnonzero((m > 0.5).any(axis=0))
        return int(cols[-1] - cols[0] + 1) if len(cols) else 0

    return width(masks["heart"][i]) / width(masks["lung"][i])


def test_render_shape_range_and_dtype():
    _, params = _cohort_params(6, 0)
    img = render(params, 64, style="B")
    assert img.shape == (len(params), 64, 64) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert img.std(axis=(1, 2)).min() > 0.1  # not blank


def test_render_is_deterministic_and_batch_independent():
    cohort = sample_cohort(
        12, np.random.default_rng(3), prevalence={"pneumothorax": 0.3, "pleural_effusion": 0.4}
    )
    params = sample_params(cohort, np.random.default_rng(4))
    a = render(params, 48, batch_size=32)
    b = render(params, 48, batch_size=5)
    c = render(params.iloc[7:8], 48)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[7], c[0])
    np.testing.assert_array_equal(render(sample_params(cohort, np.random.default_rng(4)), 48), a)
    other = render(sample_params(cohort, np.random.default_rng(99)), 48)
    assert np.abs(other - a).mean() > 0.01


@pytest.mark.parametrize("view", ["PA", "AP"])
def test_cardiothoracic_ratio_measured_on_masks(view):
    normal = neutral_params(1, view=view, ctr=CTR_NORMAL[1])
    enlarged = neutral_params(1, view=view, cm=0.5)
    _, m_norm = render(normal, 256, CLEAN, return_masks=True)
    _, m_big = render(enlarged, 256, CLEAN, return_masks=True)
    mag = AP_MAGNIFICATION if view == "AP" else 1.0
    assert _ctr(m_norm) < 0.5
    assert _ctr(m_big) > 0.5
    assert abs(_ctr(m_norm) - CTR_NORMAL[1] * mag) < 0.02


def test_cardiomegaly_cohort_ctr_separates():
    cohort, params = _cohort_params(60, 5, prevalence={"cardiomegaly": 0.5}, views={"PA": 0.5, "AP": 0.5})
    _, masks = render(params, 128, CLEAN, return_masks=True)
    ctr = np.array([_ctr(masks, i) for i in range(len(params))])
    lab = cohort["label_cardiomegaly"].to_numpy() == 1
    assert lab.any() and (~lab).any()
    assert ctr[lab].min() > 0.5 > ctr[~lab].max()


@pytest.mark.parametrize(
    "finding, mask",
    [
        ({"eff_r": 0.8}, "effusion"),
        ({"eff_l": 0.6}, "effusion"),
        ({"cons_r": 0.8}, "consolidation"),
        ({"atel_l": 0.8}, "atelectasis"),
        ({"edema": 0.9}, "edema"),
        ({"nodule": 1.0}, "nodule"),
        ({"mass": 1.0}, "mass"),
    ],
)
def test_findings_raise_intensity_in_their_region(finding, mask):
    base = neutral_params(1, seed=4)
    sick = neutral_params(1, seed=4, **finding)
    img0 = render(base, SIZE, CLEAN)[0]
    img1, masks = render(sick, SIZE, CLEAN, return_masks=True)
    region = masks[mask][0] > 0.5
    assert region.sum() > 3
    assert img1[0][region].mean() - img0[region].mean() > 0.05
    if mask != "atelectasis":  # atelectasis also moves the diaphragm and mediastinum (volume loss)
        near = ndimage.binary_dilation(masks[mask][0] > 0.02, iterations=4)
        outside = (masks["body"][0] > 0.5) & ~near
        assert np.abs(img1[0] - img0)[outside].mean() < 0.01  # the rest of the image is unchanged


def test_atelectasis_causes_volume_loss():
    _, m0 = render(neutral_params(1), SIZE, CLEAN, return_masks=True)
    _, m1 = render(neutral_params(1, atel_l=0.9), SIZE, CLEAN, return_masks=True)
    left0, left1 = m0["lung_left"][0].sum(), m1["lung_left"][0].sum()
    right0, right1 = m0["lung_right"][0].sum(), m1["lung_right"][0].sum()
    assert left1 < 0.95 * left0  # the left lung loses volume
    assert right1 > 0.98 * right0  # the right does not


def test_effusion_is_basal_and_on_its_side():
    _, masks = render(neutral_params(1, eff_r=0.6), SIZE, CLEAN, return_masks=True)
    eff = masks["effusion"][0] > 0.5
    rows, cols = np.nonzero(eff)
    lung_rows = np.nonzero(masks["lung"][0] > 0.5)[0]
    assert rows.mean() > np.median(lung_rows)  # lower half of the lungs
    assert cols.max() < SIZE // 2  # the patient's right is the image left


def test_pneumothorax_space_is_dark_and_without_vessel_markings():
    base = neutral_params(1, seed=2)
    ptx = neutral_params(1, seed=2, ptx_l=0.9)
    img0 = render(base, 256, CLEAN)[0]
    img1, masks = render(ptx, 256, CLEAN, return_masks=True)
    space = ndimage.binary_erosion(masks["pneumothorax"][0] > 0.9, iterations=3)
    assert space.sum() > 50
    assert img1[0][space].mean() < img0[space].mean()
    # Vessel markings = what vessel_amp adds: present in the normal lung there, absent in the space.
    markings0 = np.abs(img0 - render(base.assign(vessel_amp=0.0), 256, CLEAN)[0])[space].mean()
    markings1 = np.abs(img1[0] - render(ptx.assign(vessel_amp=0.0), 256, CLEAN)[0])[space].mean()
    assert markings0 > 0.003 and markings1 < 0.1 * markings0
    # ... while the collapsed lung keeps its markings.
    inner = ndimage.binary_erosion(
        (masks["lung_left"][0] > 0.9) & (masks["pneumothorax"][0] < 0.1), iterations=3
    )
    assert np.abs(img1[0] - render(ptx.assign(vessel_amp=0.0), 256, CLEAN)[0])[inner].mean() > 0.003


def test_lateral_and_supine_views_render():
    views = ["LATERAL", "AP_SUPINE", "PA"]
    params = pd.concat([neutral_params(1, view=v, eff_r=0.7, eff_l=0.7) for v in views], ignore_index=True)
    img, masks = render(params, 96, CLEAN, return_masks=True)
    assert not np.allclose(img[0], img[2])
    assert masks["heart"][0].sum() > 0 and masks["lung"][0].sum() > 0
    # A supine effusion layers as a haze over the whole lung; upright it collects basally under a meniscus.
    cover = [
        ((masks["effusion"][i] > 0.05) & (masks["lung"][i] > 0.5)).sum() / (masks["lung"][i] > 0.5).sum()
        for i in (1, 2)
    ]
    assert cover[0] > 0.9 and cover[1] < 0.8


def _noise_level(img: np.ndarray) -> float:
    return float(np.median(np.abs(img - ndimage.gaussian_filter(img, (0, 1.5, 1.5)))))


def test_sites_differ_measurably():
    _, params = _cohort_params(8, 7, views={"PA": 1.0})
    imgs = {s: render(params, 128, style=s) for s in ("A", "B", "C")}
    assert _noise_level(imgs["B"]) > 1.5 * _noise_level(imgs["A"])
    means = {s: float(imgs[s][:, 30:100, 30:100].mean()) for s in imgs}
    assert max(means.values()) - min(means.values()) > 0.05
    left_b = int(site_style("B").border[0] * 128)
    assert np.all(imgs["B"][:, 40:90, : left_b - 1] < 0.15)  # black collimation mask
    assert np.all(imgs["C"][:, 40:90, :3] > 0.9)  # white unexposed border


def test_hashed_site_styles_are_stable_and_distinct():
    a, b = site_style("Hospital-X"), site_style("Hospital-X")
    assert a == b and a != site_style("Hospital-Y") and a.name == "Hospital-X"
    with pytest.raises(InputError):
        site_style("  ")


def test_render_rejects_bad_input():
    params = neutral_params(1)
    with pytest.raises(InputError, match="size"):
        render(params, 8)
    with pytest.raises(InputError, match="view"):
        render(params.assign(view="OBLIQUE"), 32)
    with pytest.raises(InputError, match="lack column"):
        render(params.drop(columns=["cm"]), 32)


def test_findings_are_learnable_by_a_linear_model():
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    cohort, params = _cohort_params(
        300,
        11,
        prevalence={"cardiomegaly": 0.4, "pleural_effusion": 0.4},
        views={"PA": 0.6, "AP": 0.4},
        images_per_patient=1.0,
    )
    img = render(params, 64, style="B")
    x = img.reshape(len(img), 32, 2, 32, 2).mean(axis=(2, 4)).reshape(len(img), -1)
    train = cohort["patient"].to_numpy() % 4 != 0
    for finding in ("cardiomegaly", "pleural_effusion"):
        y = cohort[f"label_{finding}"].to_numpy()
        model = LogisticRegression(C=0.05, max_iter=2000).fit(x[train], y[train])
        auc = roc_auc_score(y[~train], model.predict_proba(x[~train])[:, 1])
        assert auc > 0.85, (finding, auc)

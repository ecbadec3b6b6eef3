"""cxrbench.stats.localization: maps whose maximum is known to fall inside or outside a region, the
chance levels (exact for the pointing game and the energy, brute force over every shift for IoU and
hit), and means over resamples restricted to a finding's images."""

import numpy as np
import pytest

from cxrbench.stats import bootstrap as bs
from cxrbench.stats import localization as loc


def box(shape, r0, r1, c0, c1):
    m = np.zeros(shape, dtype=bool)
    m[r0:r1, c0:c1] = True
    return m


def peak(shape, r, c, width=2.0):
    """A smooth map with its unique maximum (1) at (r, c)."""
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * width**2))


def test_pointing_game_is_one_inside_and_zero_outside():
    region = box((20, 30), 5, 10, 4, 12)
    assert loc.pointing(peak((20, 30), 7, 6), region) == 1.0
    assert loc.pointing(peak((20, 30), 15, 25), region) == 0.0
    assert loc.pointing(peak((20, 30), 9, 11), region) == 1.0  # the last pixel inside
    assert loc.pointing(peak((20, 30), 10, 11), region) == 0.0  # one row below
    flat = np.zeros((20, 30))  # no information: every pixel is the maximum -> the region's share
    assert loc.pointing(flat, region) == pytest.approx(region.mean())


def test_energy_and_iou_known_values():
    region = box((10, 10), 0, 5, 0, 10)  # the top half
    saliency = np.zeros((10, 10))
    saliency[:5] = 1.0
    saliency[5:, :] = 1 / 3  # a third of the mass per pixel in the bottom half
    assert loc.energy(saliency, region) == pytest.approx(50 / (50 + 50 / 3))
    assert loc.energy(np.zeros((10, 10)), region) == 0.5  # a map of zeros counts as uniform
    assert loc.iou(saliency >= 0.5, region) == 1.0
    assert loc.iou(box((10, 10), 0, 10, 0, 5), region) == pytest.approx(25 / 75)
    assert loc.iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 0.0


def brute_shift_chance(binary, region, hit_iou):
    ious = []
    for dr in range(binary.shape[0]):
        for dc in range(binary.shape[1]):
            moved = np.roll(binary, (dr, dc), axis=(0, 1))
            ious.append(loc.iou(moved, region))
    ious = np.array(ious)
    return ious.mean(), np.mean(ious >= hit_iou)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shift_chance_equals_every_shift_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    binary = rng.random((12, 17)) < rng.uniform(0.05, 0.5)
    region = box((12, 17), *sorted(rng.integers(0, 12, 2) + [0, 1]), *sorted(rng.integers(0, 17, 2) + [0, 1]))
    want = brute_shift_chance(binary, region, 0.1)
    got = loc.shift_chance(binary, region, 0.1)
    assert got == pytest.approx(want, abs=1e-12)
    assert loc.shift_chance(np.zeros((12, 17), bool), region, 0.1) == (0.0, 0.0)


def test_image_scores_names_values_and_chance_of_the_pointing_game_and_energy():
    region = box((16, 16), 2, 6, 2, 6)
    out = loc.image_scores(peak((16, 16), 3, 3), region, levels=(0.5, 0.9), hit_iou=0.1)
    names = [m for m, _, _ in out]
    assert names == loc.metric_names((0.5, 0.9)) == ["pointing", "energy", "iou@0.5", "hit@0.5", "iou@0.9",
                                                     "hit@0.9"]
    scores = {m: (v, c) for m, v, c in out}
    assert scores["pointing"] == (1.0, region.mean()) and scores["energy"][1] == region.mean()
    assert scores["hit@0.5"][0] == 1.0 and 0 < scores["iou@0.5"][1] < scores["iou@0.5"][0]
    away = dict((m, v) for m, v, _ in loc.image_scores(peak((16, 16), 13, 13), region, (0.5,), 0.1))
    assert away["pointing"] == 0.0 and away["iou@0.5"] == 0.0 and away["hit@0.5"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        loc.image_scores(np.ones((4, 4)), np.zeros((4, 4), bool), (0.5,), 0.1)


def test_resampled_means_equal_the_mean_over_the_explicit_resample():
    rng = np.random.default_rng(3)
    ids = [f"i{k:02d}" for k in range(12)]
    pats = [f"p{k // 2}" for k in range(12)]
    res = bs.make_resamples(ids, pats, 40, seed=5, cluster="patient")
    counts = res.counts(0, 40)
    members = np.array([1, 4, 5, 9])
    values = rng.random(4)
    got = loc.resampled_means(values, members, counts)
    for b in range(40):
        drawn = np.repeat(np.arange(12), counts[b])
        mine = [values[list(members).index(i)] for i in drawn if i in members]
        assert (np.isnan(got[b]) and not mine) or got[b] == pytest.approx(np.mean(mine))

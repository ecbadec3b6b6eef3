"""Scores of a saliency map against a region (box or mask) of one image, their chance levels, and their
means over bootstrap resamples restricted to the images of a finding. Pure functions on arrays.

A map is float ``(H, W)`` in [0, 1] (larger = more salient), a region a boolean ``(H, W)`` mask on the
same grid (boxes filled, several regions of one finding united). Per image:

* **pointing game** (Zhang et al., ECCV 2016): the map's maximum lies inside the region. Where the
  maximum is reached at several pixels (a flat map), the share of them inside: the hit rate of a peak
  picked among them at random, so a map that says nothing scores the chance level.
* **energy inside** (the energy-based pointing game of Score-CAM, Wang et al., CVPRW 2020): the share of
  the map's sum that falls inside the region (a map of zeros counts as uniform).
* **IoU at level t**: the map binarized at ``map >= t`` against the region, intersection over union
  (0 when both are empty is impossible: a region is never empty).
* **hit at level t**: that IoU is at least ``hit_iou``.

**Chance levels**: the expected score of the same map placed at a uniformly random position, every
cyclic shift of the image equally likely (so the map keeps its shape and spread, and only its
position is random). For the pointing game and the energy this is exactly the region's share of the
image, ``area``; for the IoU and the hit it depends on the area and on how much of the image the
binarized map covers, and is computed over every shift at once with FFT cross-correlation (the
intersection at shift ``s`` is the cross-correlation of the two masks at ``s``).

**Resamples**: the bootstrap resamples of the scored images (patient clusters by default,
:mod:`cxrbench.stats.bootstrap`) restricted to the images of each finding, as the subgroups do
(:mod:`cxrbench.stats.subgroups`): the mean of finding ``f`` on resample ``b`` is the count-weighted
mean over its images. Every finding, metric and model scored on the same images therefore sees the
same resamples, so differences against chance and between models are paired.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS_FIXED: tuple[str, ...] = ("pointing", "energy")


def level_name(kind: str, level: float) -> str:
    """``iou@0.5``, ``hit@0.5``: the metric name of a thresholded score."""
    return f"{kind}@{float(level):g}"


def metric_names(levels: Sequence[float]) -> list[str]:
    """Every metric scored at these map levels, in report order."""
    return [*METRICS_FIXED, *(level_name(k, t) for t in levels for k in ("iou", "hit"))]


def pointing(saliency: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's maximal pixels that lie inside the region (1 or 0 for a unique maximum)."""
    peak = saliency >= saliency.max()
    return float(np.count_nonzero(peak & region) / np.count_nonzero(peak))


def energy(saliency: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's sum inside the region (a map of zeros: the region's area)."""
    total = float(saliency.sum(dtype=np.float64))
    if total <= 0:
        return float(region.mean())
    return float(saliency[region].sum(dtype=np.float64) / total)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 0.0


def shifted_intersections(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``|shift(a, s) & b|`` for every cyclic shift ``s`` of ``a``: int64 ``(H * W,)`` (FFT
    cross-correlation, rounded: exact for masks of fewer than 2**40 pixels)."""
    fa = np.fft.rfft2(a.astype(np.float64))
    fb = np.fft.rfft2(b.astype(np.float64))
    corr = np.fft.irfft2(fb * np.conj(fa), s=a.shape)
    return np.rint(corr).astype(np.int64).ravel()


def shift_chance(binary: np.ndarray, region: np.ndarray, hit_iou: float) -> tuple[float, float]:
    """(expected IoU, probability of IoU >= ``hit_iou``) of ``binary`` placed at a uniformly random cyclic
    shift against ``region``."""
    n_map, n_region = int(np.count_nonzero(binary)), int(np.count_nonzero(region))
    if n_map == 0:
        return 0.0, float(hit_iou <= 0)
    inter = shifted_intersections(binary, region)
    ious = inter / (n_map + n_region - inter)
    return float(ious.mean()), float(np.mean(ious >= hit_iou))


def image_scores(saliency: np.ndarray, region: np.ndarray, levels: Sequence[float],
                 hit_iou: float) -> list[tuple[str, float, float]]:
    """``(metric, value, chance)`` of one map against one region, in :func:`metric_names` order."""
    saliency = np.asarray(saliency, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if saliency.shape != region.shape:
        raise ValueError(f"map {saliency.shape} and region {region.shape} differ in shape")
    if not region.any():
        raise ValueError("the region is empty")
    area = float(region.mean())
    out = [("pointing", pointing(saliency, region), area), ("energy", energy(saliency, region), area)]
    for t in levels:
        binary = saliency >= float(t)
        chance_iou, chance_hit = shift_chance(binary, region, hit_iou)
        value = iou(binary, region)
        out += [(level_name("iou", t), value, chance_iou),
                (level_name("hit", t), float(value >= hit_iou), chance_hit)]
    return out


def resampled_means(values: np.ndarray, members: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean of ``values`` (one per member image) on each resample: ``counts`` (B, n_images) are the
    resamples of every scored image, ``members`` the positions of this finding's images among them.
    NaN where a resample drew none of them."""
    c = counts[:, members].astype(np.float64)
    weight = c.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, c @ np.asarray(values, dtype=np.float64) / weight, np.nan)

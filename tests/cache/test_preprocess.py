"""Preprocessing: OpenCV-exact equalization, resize modes, antialiasing, quantization, argument errors."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.cache.preprocess import equalize_hist, preprocess, resize_to
from cxrbench.common.errors import InputError


def _noise(shape, seed=0, lo=0, hi=256) -> np.ndarray:
    return np.random.default_rng(seed).integers(lo, hi, shape).astype(np.uint8)


@pytest.mark.parametrize("seed,lo,hi", [(0, 0, 256), (1, 40, 200), (2, 100, 103), (3, 7, 8)])
def test_equalization_matches_opencv_on_8bit_levels(seed: int, lo: int, hi: int):
    cv2 = pytest.importorskip("cv2")
    img = _noise((61, 47), seed, lo, hi)
    np.testing.assert_array_equal(equalize_hist(img.astype(np.float32) / 255), cv2.equalizeHist(img))


def test_no_resample_when_already_square_at_size():
    cv2 = pytest.importorskip("cv2")
    img = _noise((50, 50), 5, 30, 220)
    np.testing.assert_array_equal(preprocess(img, 50, "stretch", equalize=True), cv2.equalizeHist(img))
    np.testing.assert_array_equal(preprocess(img, 50, "stretch", equalize=False), img)


def test_16bit_levels_are_equalized_before_quantizing():
    cv2 = pytest.importorskip("cv2")
    # a 12-bit image whose values all fall in a narrow band: 8 bits keep only a handful of levels
    x = np.linspace(1000, 1100, 64 * 64).reshape(64, 64) / 4095
    ours = equalize_hist(x)
    opencv = cv2.equalizeHist(np.rint(x * 255).astype(np.uint8))
    assert len(np.unique(opencv)) <= 8
    assert len(np.unique(ours)) > 200
    counts = np.bincount(ours.ravel(), minlength=256)
    assert counts.max() <= 2 * counts[counts > 0].mean()  # nearly flat histogram


def test_constant_image_stays_constant():
    for equalize in (True, False):
        out = preprocess(np.full((30, 20), 0.5, np.float32), 16, "stretch", equalize)
        assert out.dtype == np.uint8 and out.shape == (16, 16)
        assert len(np.unique(out)) == 1 and abs(int(out[0, 0]) - 128) <= 1


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
@pytest.mark.parametrize("shape", [(300, 200), (120, 340), (17, 17)])
def test_modes_give_uint8_squares(mode: str, shape):
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = preprocess(img, 64, mode, equalize=True)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert out.max() == 255


def test_quantization_without_equalization_is_linear():
    x = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    np.testing.assert_array_equal(preprocess(x, 32, equalize=False), np.rint(x * 255).astype(np.uint8))


def test_pad_keeps_aspect_with_black_border_and_equalizes_content_only():
    img = np.random.default_rng(1).random((40, 80), dtype=np.float32) * 0.5 + 0.25  # wide, mid-gray
    out = preprocess(img, 64, "pad", equalize=True)
    assert (out[:16] == 0).all() and (out[48:] == 0).all()  # 32 content rows, centred
    content = out[16:48]
    np.testing.assert_array_equal(content, equalize_hist(resize_to(img, 32, 64)))
    assert content.max() == 255 and content.min() == 0
    plain = preprocess(img, 64, "pad", equalize=False)
    np.testing.assert_array_equal(plain[16:48], np.rint(resize_to(img, 32, 64) * 255).astype(np.uint8))


def test_crop_takes_the_centre_square():
    img = np.zeros((50, 150), np.float32)
    img[:, 50:100] = 1.0  # only the centre square is white
    assert (preprocess(img, 25, "crop", equalize=False) == 255).all()
    stretched = preprocess(img, 25, "stretch", equalize=False)
    assert (stretched[:, :6] == 0).all() and (stretched[:, 12] == 255).all()


def test_downscaling_is_antialiased_and_upscaling_smooth():
    checker = (np.indices((64, 64)).sum(0) % 2).astype(np.float32)  # the worst case for aliasing
    small = resize_to(checker, 16, 16)
    np.testing.assert_allclose(small, 0.5, atol=1e-6)  # area averaging, no moire
    ramp = np.linspace(0, 1, 8, dtype=np.float32)[None, :].repeat(8, 0)
    big = resize_to(ramp, 32, 32)
    assert big.min() >= 0 and big.max() <= 1
    assert (np.diff(big[16]) >= -1e-6).all()  # monotone: no ringing beyond the clip


def test_bad_arguments():
    img = np.zeros((10, 10), np.float32)
    with pytest.raises(InputError, match="did you mean 'stretch'"):
        preprocess(img, 8, "strech")
    for size in (0, 3, 224.0, True, 10**5):
        with pytest.raises(InputError, match="size"):
            preprocess(img, size)
    with pytest.raises(InputError, match="2-D"):
        preprocess(np.zeros((4, 4, 3), np.float32), 8)
    with pytest.raises(InputError, match="NaN"):
        preprocess(np.full((4, 4), np.nan, np.float32), 8)
    with pytest.raises(InputError, match="uint8"):
        preprocess(np.zeros((4, 4), np.int32), 8)

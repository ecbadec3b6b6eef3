"""Batched augmentation: geometry (flip, rotation sign and angle, crop), identity, normalization, RNG."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from cxrbench.common.errors import InputError
from cxrbench.data.augment import AugmentConfig, AugmentParams, BatchTransform

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _asymmetric(batch: int = 2, size: int = 48) -> torch.Tensor:
    x = torch.zeros(batch, size, size, dtype=torch.uint8)
    x[:, 10:16, 6:40] = 255  # a horizontal bar in the upper left
    x[:, 16:36, 30:36] = 180  # and a leg going down on the right
    if batch > 1:
        x[1] = x[1].flip(0)
    return x


def _params(n: int = 1, **values) -> AugmentParams:
    full = {"flip": False, "angle": 0.0, "scale_x": 1.0, "scale_y": 1.0, "center_x": 0.0, "center_y": 0.0,
            "brightness": 1.0, "contrast": 1.0, **values}
    return AugmentParams(**{k: torch.tensor([v] * n, dtype=torch.bool if k == "flip" else torch.float64)
                            for k, v in full.items()})


def _unnormalize(y: torch.Tensor) -> torch.Tensor:
    return y[:, 0] * STD[0] + MEAN[0]


def test_eval_is_scale_repeat_normalize():
    x = _asymmetric()
    y = BatchTransform(MEAN, STD).eval()(x)
    assert y.shape == (2, 3, 48, 48) and y.dtype == torch.float32
    for c in range(3):
        torch.testing.assert_close(y[:, c], (x.float() / 255 - MEAN[c]) / STD[c])


def test_disabled_augmentation_is_the_identity():
    x = _asymmetric()
    reference = BatchTransform(MEAN, STD).eval()(x)
    for tf in (BatchTransform(MEAN, STD, augment=None).train(),
               BatchTransform(MEAN, STD, augment=AugmentConfig.none()).train()):
        torch.testing.assert_close(tf(x, generator=torch.Generator().manual_seed(0)), reference,
                                   atol=1e-5, rtol=0)


def test_flip_mirrors_an_asymmetric_image():
    x = _asymmetric()
    tf = BatchTransform(MEAN, STD, augment=AugmentConfig(hflip=1.0, rotate=0.0)).train()
    y = _unnormalize(tf(x, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(y, x.flip(-1).float() / 255, atol=1e-5, rtol=0)


@pytest.mark.parametrize("angle,flip", [(7.0, False), (-5.0, False), (30.0, False), (12.0, True)])
def test_rotation_matches_torchvision_convention(angle: float, flip: bool):
    tvf = pytest.importorskip("torchvision.transforms.functional")
    from torchvision.transforms import InterpolationMode

    x = _asymmetric(1)
    tf = BatchTransform((0, 0, 0), (1, 1, 1), augment=AugmentConfig(hflip=0.5, rotate=45)).train()
    y = tf(x, params=_params(angle=angle, flip=flip))[:, 0]
    flipped = x.flip(-1) if flip else x  # the reference study's order: flip, then rotate
    ref = tvf.rotate(flipped.float() / 255, angle, interpolation=InterpolationMode.BILINEAR)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=0)


def _principal_angle(img: torch.Tensor) -> float:
    """Orientation (degrees, counter-clockwise on screen) of the bright pixels' main axis."""
    ys, xs = torch.nonzero(img > 0.5, as_tuple=True)
    xs, ys = xs.double() - xs.double().mean(), -(ys.double() - ys.double().mean())  # y up
    cov = torch.stack([torch.stack([(xs * xs).mean(), (xs * ys).mean()]),
                       torch.stack([(xs * ys).mean(), (ys * ys).mean()])])
    vals, vecs = torch.linalg.eigh(cov)
    v = vecs[:, -1]
    return math.degrees(math.atan2(v[1].item(), v[0].item()))


def test_rotation_angle_is_recovered_from_a_line_pattern():
    size = 96
    x = torch.zeros(4, size, size, dtype=torch.uint8)
    x[:, 46:50, 8:88] = 255  # a thick horizontal line through the centre
    tf = BatchTransform((0, 0, 0), (1, 1, 1), augment=AugmentConfig(hflip=0.5, rotate=20)).train()
    params = tf.sample(4, torch.Generator().manual_seed(3))
    y = tf(x, generator=torch.Generator().manual_seed(3))[:, 0]
    torch.testing.assert_close(y, tf(x, params=params)[:, 0])  # forward draws exactly sample()'s values
    for i in range(4):
        drawn = params.angle[i].item()
        assert -20 <= drawn <= 20
        recovered = _principal_angle(y[i])
        # flip before rotation: a flipped horizontal line stays horizontal, then turns by the angle
        assert abs(((recovered - drawn) + 90) % 180 - 90) < 1.0, (recovered, drawn)


def test_random_resized_crop_is_a_zoom_of_the_region():
    x = torch.arange(64, dtype=torch.float32).mul(4).clamp(max=255).to(torch.uint8).expand(1, 64, 64).clone()
    x = x + x.transpose(1, 2) // 4
    cfg = AugmentConfig(hflip=0, rotate=0, crop_scale=(0.25, 0.25), crop_ratio=(1, 1))
    tf = BatchTransform((0, 0, 0), (1, 1, 1), augment=cfg).train()
    y = tf(x, params=_params(scale_x=0.5, scale_y=0.5))[:, 0]
    centre = x[:, 16:48, 16:48].float().div(255).unsqueeze(1)
    ref = F.interpolate(centre, scale_factor=2, mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(y[:, 1:-1, 1:-1], ref[:, 1:-1, 1:-1], atol=1e-5, rtol=0)
    params = tf.sample(256, torch.Generator().manual_seed(0))
    area = params.scale_x * params.scale_y
    torch.testing.assert_close(area, torch.full_like(area, 0.25))
    assert (params.center_x.abs() <= 1 - params.scale_x + 1e-9).all()  # crops stay inside the image


def test_brightness_and_contrast():
    x = torch.full((1, 8, 8), 100, dtype=torch.uint8)
    x[:, :, :4] = 50
    tf = BatchTransform((0, 0, 0), (1, 1, 1), augment=AugmentConfig(hflip=0, rotate=0, brightness=0.5,
                                                                     contrast=0.5)).train()
    y = tf(x, params=_params(brightness=1.2, contrast=0.5))[0, 0]
    b = x[0].float() / 255 * 1.2
    torch.testing.assert_close(y, (b - b.mean()) * 0.5 + b.mean(), atol=1e-6, rtol=0)


def test_resize_to_out_size_is_antialiased():
    checker = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2 * 255
    tf = BatchTransform((0, 0, 0), (1, 1, 1), out_size=16).eval()
    y = tf(checker.to(torch.uint8)[None])
    assert y.shape == (1, 3, 16, 16)
    torch.testing.assert_close(y, torch.full_like(y, 0.5), atol=0.02, rtol=0)


def test_generator_makes_augmentation_reproducible():
    x = _asymmetric(8)
    cfg = AugmentConfig(crop_scale=(0.6, 1.0), brightness=0.2, contrast=0.2)
    tf = BatchTransform(MEAN, STD, out_size=32, augment=cfg).train()
    a = tf(x, generator=torch.Generator().manual_seed(7))
    b = tf(x, generator=torch.Generator().manual_seed(7))
    c = tf(x, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, c)
    # every batch consumes the same draws whatever is enabled, so the streams stay aligned
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    tf(x, generator=g1)
    BatchTransform(MEAN, STD, augment=AugmentConfig.none()).train()(x, generator=g2)
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_config_validation_and_round_trip():
    cfg = AugmentConfig.from_dict({"hflip": 0.5, "rotate": 7, "crop_scale": [0.8, 1.0]})
    assert cfg.crop_scale == (0.8, 1.0)
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    assert AugmentConfig() == AugmentConfig(hflip=0.5, rotate=7.0)  # the reference study's
    with pytest.raises(InputError, match="did you mean 'rotate'"):
        AugmentConfig.from_dict({"rotation": 7})
    for bad in ({"hflip": 1.5}, {"rotate": -1}, {"crop_scale": (0.9, 0.5)}, {"crop_ratio": (0, 1)},
                {"brightness": 1.0}):
        with pytest.raises(InputError):
            AugmentConfig(**bad)


def test_input_validation():
    tf = BatchTransform(MEAN, STD)
    with pytest.raises(InputError, match="uint8"):
        tf(torch.zeros(2, 8, 8))
    with pytest.raises(InputError, match="shape"):
        tf(torch.zeros(8, 8, dtype=torch.uint8))
    with pytest.raises(InputError, match="square"):
        tf(torch.zeros(1, 8, 6, dtype=torch.uint8))
    assert tf(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)).shape == (2, 3, 8, 8)
    with pytest.raises(InputError, match="std"):
        BatchTransform(MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(InputError, match="values"):
        BatchTransform((0.5, 0.5), STD)
    assert BatchTransform(0.5, 0.5)(torch.full((1, 4, 4), 255, dtype=torch.uint8)).eq(1).all()

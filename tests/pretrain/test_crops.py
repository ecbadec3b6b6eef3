"""pretrain.crops: multi-crop views made on the device, consistent with the fine-tuning transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrbench.common.errors import InputError
from cxrbench.data.augment import AugmentConfig, BatchTransform
from cxrbench.pretrain.crops import MultiCrop, crop_grid, gaussian_blur, sample_masks


def _images(b=4, s=48, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (b, s, s), dtype=np.uint8))


def test_crop_grid_is_the_fine_tuning_transform_at_equal_size():
    aug = AugmentConfig(hflip=0.5, rotate=20, crop_scale=(0.3, 1.0))
    bt = BatchTransform((0.5,), (0.25,), augment=aug).train()
    x = _images()
    p = bt.sample(4, torch.Generator().manual_seed(1))
    expected = bt(x, params=p)
    src = x.unsqueeze(1).float() / 255
    ours = torch.nn.functional.grid_sample(
        src, crop_grid(p, 48, 48, torch.float32), mode="bilinear", padding_mode="zeros", align_corners=False
    )
    assert torch.allclose((ours - 0.5) / 0.25, expected[:, :1], atol=1e-5)


def test_views_have_the_sizes_the_order_and_the_normalization():
    mc = MultiCrop((0.5,), (0.25,), global_size=32, local_size=16, n_local=3)
    x = _images()
    g, loc = mc(x, torch.Generator().manual_seed(0))
    assert g.shape == (2 * 4, 3, 32, 32) and loc.shape == (3 * 4, 3, 16, 16) and g.dtype == torch.float32
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 0], g[:, 2])  # grey repeated
    assert float(g.min()) >= (0 - 0.5) / 0.25 - 1e-5 and float(g.max()) <= (1 - 0.5) / 0.25 + 1e-5
    # same generator state -> the same views (resume); another seed -> others
    again = mc(x, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], g) and torch.equal(again[1], loc)
    other = mc(x, torch.Generator().manual_seed(1))
    assert not torch.equal(other[0], g)
    # the two global views of an image differ (independent crops)
    assert not torch.allclose(g[0], g[4])
    none, empty = MultiCrop((0.5,), (0.25,), 32, 16, n_local=0)(x, torch.Generator().manual_seed(0))
    assert none.shape[0] == 8 and empty is None


def test_without_random_augmentation_a_view_is_the_resized_image():
    x = _images(2, 32)
    mc = MultiCrop(
        (0.0,),
        (1.0,),
        global_size=32,
        local_size=32,
        n_local=1,
        global_scale=(1.0, 1.0),
        local_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        hflip=0.0,
        rotate=0.0,
        brightness=0.0,
        contrast=0.0,
        blur=0.0,
    )
    g, loc = mc(x, torch.Generator().manual_seed(0))
    ref = x.float() / 255
    assert torch.allclose(g[:2, 0], ref, atol=1e-5) and torch.allclose(g[2:, 0], ref, atol=1e-5)
    assert torch.allclose(loc[:, 0], ref, atol=1e-5)


def test_flip_probability_one_mirrors():
    x = _images(2, 32)
    mc = MultiCrop(
        (0.0,),
        (1.0,),
        32,
        32,
        n_local=0,
        global_scale=(1.0, 1.0),
        ratio=(1.0, 1.0),
        hflip=1.0,
        rotate=0.0,
        brightness=0.0,
        contrast=0.0,
        blur=0.0,
    )
    g, _ = mc(x, torch.Generator().manual_seed(0))
    assert torch.allclose(g[:2, 0], torch.flip(x.float() / 255, dims=[-1]), atol=1e-5)


def test_gaussian_blur_matches_scipy_and_leaves_sigma_zero_alone():
    from scipy.ndimage import gaussian_filter

    x = torch.rand(3, 1, 20, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigma = torch.tensor([0.0, 0.8, 1.5], dtype=torch.float64)
    out = gaussian_blur(x, sigma, radius=5)
    assert torch.equal(out[0], x[0])
    for i in (1, 2):
        ref = gaussian_filter(x[i, 0].numpy(), float(sigma[i]), mode="mirror", radius=5)
        assert np.allclose(out[i, 0].numpy(), ref, atol=1e-10)


def test_masks_count_and_probability():
    masks = sample_masks(
        400, (4, 5), torch.Generator().manual_seed(3), "cpu", probability=0.5, ratio=(0.2, 0.4)
    )
    assert masks.shape == (400, 20) and masks.dtype == torch.bool
    counts = masks.sum(dim=1)
    masked = counts > 0
    assert 0.4 < float(masked.float().mean()) < 0.6
    assert int(counts[masked].min()) >= 4 and int(counts.max()) <= 8  # round(0.2*20)..round(0.4*20)
    assert torch.equal(
        masks, sample_masks(400, (4, 5), torch.Generator().manual_seed(3), "cpu", 0.5, (0.2, 0.4))
    )
    assert not sample_masks(10, (2, 2), torch.Generator().manual_seed(0), "cpu", probability=0.0).any()


def test_bad_options_are_input_errors():
    with pytest.raises(InputError, match="global views"):
        MultiCrop((0.5,), (0.25,), 32, 16, n_global=1)
    with pytest.raises(InputError, match="crop_scale"):
        MultiCrop((0.5,), (0.25,), 32, 16, global_scale=(0.0, 1.0))
    with pytest.raises(InputError, match="uint8"):
        MultiCrop((0.5,), (0.25,), 32, 16)(torch.zeros(2, 32, 32))

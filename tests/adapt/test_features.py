"""adapt.features: the pooled features are what the head sees; out-of-memory halves the batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cxrbench.adapt.features import check_linear_head, extract_features, feature_dim, pooled_features
from cxrbench.common.errors import InputError
from cxrbench.data.augment import BatchTransform
from cxrbench.data.dataset import CacheDataset
from cxrbench.models.build import create_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.mark.parametrize("init", ["random-vit-test", "random-convnext-test"])
def test_the_head_on_pooled_features_is_the_model(init):
    model, _ = create_model(init, 3, image_size=32, seed=0)
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    feats = pooled_features(model, x)
    assert feats.shape == (2, feature_dim(model))
    with torch.no_grad():
        assert torch.allclose(model.get_classifier()(feats), model(x), atol=1e-6)
    check_linear_head(model, x)


def test_a_head_that_is_not_linear_on_the_features_is_refused():
    model, _ = create_model("random-vit-test", 2, image_size=32, seed=0)

    class Squashed(nn.Module):  # a model whose output is not its classifier on the pooled features
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return torch.tanh(self.inner(x)) * 3

        def forward_features(self, x):
            return self.inner.forward_features(x)

        def forward_head(self, x, pre_logits=False):
            return self.inner.forward_head(x, pre_logits=pre_logits)

        def get_classifier(self):
            return self.inner.get_classifier()

    with pytest.raises(InputError, match="not a linear layer on its pooled features"):
        check_linear_head(Squashed(model), torch.randn(2, 3, 32, 32))


def test_out_of_memory_halves_the_batch_and_gives_the_same_features(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    ds = CacheDataset(cache, split="train")
    model, info = create_model("random-vit-test", 2, image_size=32, seed=0)
    tf = BatchTransform(info.mean, info.std, out_size=32).eval()
    ref, batch = extract_features(model, ds, tf, torch.device("cpu"), batch_size=64)
    assert ref.shape == (len(ds), 64) and ref.dtype == np.float32 and batch == 64

    original = model.forward_features
    tried = []

    def tight(x):  # a device that fits 5 images at most
        tried.append(x.shape[0])
        if x.shape[0] > 5:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return original(x)

    model.forward_features = tight
    got, batch = extract_features(model, ds, tf, torch.device("cpu"), batch_size=32)
    assert batch == 4 and tried[:4] == [24, 16, 8, 4]  # 24 images: the first batch is the whole split
    np.testing.assert_allclose(got, ref, atol=1e-5)

    def never(x):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    model.forward_features = never
    with pytest.raises(InputError, match="does not fit in device memory even for one image"):
        extract_features(model, ds, tf, torch.device("cpu"), batch_size=4)

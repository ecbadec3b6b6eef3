"""adapt.embeddings: stored beside the cache, reused, keyed by weights and cache, cache files untouched."""

from __future__ import annotations

import numpy as np
import pytest

from cxrbench.adapt import embeddings as emb
from cxrbench.common.fileio import file_sha256
from cxrbench.common.layout import CACHE_FILES, CACHE_MANIFEST
from cxrbench.data.dataset import CacheDataset


def spec(**kw):
    base = dict(weights="random:seed=0", arch="test_vit", model_kwargs=(), image_size=32, mean=(0.5,) * 3,
                std=(0.5,) * 3, precision="fp32")
    return emb.EmbeddingSpec(**{**base, **kw})


def test_computed_once_then_reused_and_the_cache_files_stay_untouched(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=30)
    before = {name: file_sha256(cache / name) for name in CACHE_FILES}
    ds = CacheDataset(cache, split="train")
    calls = []

    def compute():
        calls.append(1)
        return np.arange(len(ds) * 4, dtype=np.float32).reshape(len(ds), 4), 8

    store = emb.EmbeddingStore(cache, spec())
    first = emb.split_embeddings(store, "train", ds, compute)
    again = emb.split_embeddings(emb.EmbeddingStore(cache, spec()), "train", ds, compute)
    assert len(calls) == 1 and not first.reused and again.reused
    np.testing.assert_array_equal(first.values, again.values)
    assert first.path == cache / "embeddings" / store.key / "train.safetensors"
    doc = emb.read_json(store.folder / "embeddings.json")
    assert doc["splits"]["train"]["n"] == len(ds) and doc["spec"]["weights"] == "random:seed=0"
    assert {name: file_sha256(cache / name) for name in CACHE_FILES} == before
    assert not list(store.folder.glob(".*.tmp"))


def test_another_weight_precision_size_or_cache_is_another_key(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=30)
    sha = file_sha256(cache / CACHE_MANIFEST)
    keys = {spec().key(sha), spec(weights="random:seed=1").key(sha), spec(precision="bf16").key(sha),
            spec(image_size=64).key(sha), spec().key("0" * 64),
            spec(model_kwargs=(("global_pool", "avg"),)).key(sha)}
    assert len(keys) == 6
    other = tiny_cache_factory(tmp_path / "cache2", n_patients=30, seed=1)  # a different cache content
    assert emb.EmbeddingStore(cache, spec()).key != emb.EmbeddingStore(other, spec()).key
    with_kwargs = spec(model_kwargs=(("a", 1),))
    assert emb.EmbeddingSpec.from_dict(with_kwargs.to_dict()) == with_kwargs


def test_a_changed_weights_file_changes_its_fingerprint(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 100)
    a = emb.weights_fingerprint(f, seed=0)
    assert a == file_sha256(f) and emb.weights_fingerprint(None, 3) == "random:seed=3"
    f.write_bytes(b"b" * 101)
    assert emb.weights_fingerprint(f, seed=0) != a


def test_stored_rows_must_match_and_a_damaged_file_is_recomputed(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=30)
    ds = CacheDataset(cache, split="train")
    store = emb.EmbeddingStore(cache, spec())
    values = np.ones((len(ds), 3), np.float32)
    store.save("train", ds.image_ids, values, 8)
    assert store.load("train", ds.image_ids[::-1]) is None  # other rows: never read as these
    store.path("train").write_bytes(b"broken")
    calls = []
    out = emb.split_embeddings(store, "train", ds, lambda: (calls.append(1), (values * 2, 8))[1])
    assert calls and not out.reused and store.load("train", ds.image_ids)[0, 0] == 2


def test_an_unwritable_cache_computes_in_memory(tmp_path, tiny_cache_factory, monkeypatch):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=30)
    ds = CacheDataset(cache, split="train")
    store = emb.EmbeddingStore(cache, spec())
    monkeypatch.setattr(emb.EmbeddingStore, "writable", lambda self: False)
    out = emb.split_embeddings(store, "train", ds, lambda: (np.zeros((len(ds), 2), np.float32), 4))
    assert out.path is None and not out.reused and not (cache / "embeddings" / store.key).exists()
    with pytest.raises(RuntimeError, match="embeddings for"):
        emb.split_embeddings(store, "train", ds, lambda: (np.zeros((1, 2), np.float32), 4))

"""Loader: the image and label for item i are the ones that went in; splits, findings, pickling,
batched reads, DataLoader workers, and the resumable/DDP sampler."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cxrbench.cache.build import prepare_cache
from cxrbench.cache.decode import read_image
from cxrbench.cache.preprocess import preprocess
from cxrbench.common.errors import InputError
from cxrbench.data.dataset import CacheDataset
from cxrbench.data.loader import ResumableSampler, make_loader
from cxrbench.index.schema import read_index


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, image_dataset_factory) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("data")
    index = image_dataset_factory(base / "root", n=18, shape=(40, 52))
    prepare_cache(index, base / "root", base / "cache", size=20, workers=1, quiet=True)
    return index, base / "root", base / "cache"


def test_items_are_the_images_and_labels_that_went_in(prepared):
    index, root, cache = prepared
    src, findings = read_index(index)
    ds = CacheDataset(cache)
    assert len(ds) == 18 and ds.findings == findings and ds.size == 20
    for i in range(len(ds)):
        image, label = ds[i]
        assert image.dtype == torch.uint8 and image.shape == (20, 20)
        assert label.dtype == torch.float32 and label.shape == (len(findings),)
        np.testing.assert_array_equal(image.numpy(), preprocess(read_image(root / src["path"][i]), 20))
        np.testing.assert_array_equal(label.numpy(), src[findings].to_numpy(np.float32)[i])  # NaN == NaN
        assert ds.image_ids[i] == src["image_id"][i] and ds.patient_ids[i] == src["patient_id"][i]
    assert np.isnan(ds.labels).any()
    assert ds[-1][0].equal(ds[len(ds) - 1][0])
    assert ds[torch.tensor(3)][0].equal(ds[3][0]) and ds[np.int64(3)][0].equal(ds[3][0])
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_split_and_findings_selection(prepared):
    index, _, cache = prepared
    src, findings = read_index(index)
    ds = CacheDataset(cache, split="val", findings=list(reversed(findings)))
    keep = np.flatnonzero(src["split"].to_numpy(dtype=object) == "val")
    assert list(ds.image_ids) == list(src["image_id"].to_numpy(dtype=object)[keep])
    np.testing.assert_array_equal(ds.labels, src[list(reversed(findings))].to_numpy(np.float32)[keep])
    both = CacheDataset(cache, split=["train", "test"])
    assert len(both) + len(ds) == len(src) and set(both.splits) == {"train", "test"}
    assert list(ds.metadata()["image_id"]) == list(ds.image_ids)
    with pytest.raises(InputError, match="did you mean 'edema'"):
        CacheDataset(cache, findings=["edemaa"])
    with pytest.raises(InputError, match="did you mean 'val'"):
        CacheDataset(cache, split="vall")
    with pytest.raises(InputError, match="twice"):
        CacheDataset(cache, findings=["edema", "edema"])


def test_empty_split_and_incomplete_cache(tmp_path: Path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "c", n_patients=10)
    (tmp_path / "c" / "manifest.json").unlink()
    with pytest.raises(InputError, match="not a cxrbench cache"):
        CacheDataset(cache)
    other = tiny_cache_factory(tmp_path / "d", n_patients=2)  # 60/20/20 of 2: one train, one test
    assert set(CacheDataset(other).splits) == {"train", "test"}
    with pytest.raises(InputError, match="split 'val' has no images .*splits present: test, train"):
        CacheDataset(other, split="val")


def test_batched_read_equals_items_in_requested_order(prepared):
    ds = CacheDataset(prepared[2])
    order = [5, 0, 17, 3, 3, 9]
    images, labels = ds[order]
    assert images.shape == (6, 20, 20) and labels.shape == (6, len(ds.findings))
    for k, i in enumerate(order):
        assert images[k].equal(ds[i][0])
        np.testing.assert_array_equal(labels[k].numpy(), ds[i][1].numpy())
    assert ds[np.array(order)][0].equal(images) and ds[2:5][0].equal(ds[[2, 3, 4]][0])
    # torch's fetcher uses __getitems__ with the default collate: same batch
    batch = next(iter(DataLoader(ds, batch_size=6, sampler=order)))
    assert batch[0].equal(images) and torch.equal(batch[1].isnan(), labels.isnan())


def test_pickles_small_without_the_memmap(tmp_path: Path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "c", n_patients=400, size=64)  # 1.6 MB of pixels
    ds = CacheDataset(cache, split="train")
    _ = ds[0]  # opens the memmap in this process
    blob = pickle.dumps(ds)
    assert len(blob) < 30_000
    clone = pickle.loads(blob)
    assert clone._images is None
    assert clone[3][0].equal(ds[3][0])


@pytest.mark.parametrize("batched", [True, False])
def test_loader_with_workers_delivers_every_item_once(prepared, batched: bool):
    ds = CacheDataset(prepared[2])
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=3, num_workers=2, batched=batched,
                         pin_memory=False)
    seen = []
    for images, labels in loader:
        assert images.dtype == torch.uint8 and labels.dtype == torch.float32
        for image in images:
            matches = [i for i in range(len(ds)) if ds[i][0].equal(image)]
            seen.extend(matches[:1])
    assert sorted(seen) == list(range(len(ds)))
    assert len(loader) == 5


def test_loader_resumes_mid_epoch_exactly(prepared):
    ds = CacheDataset(prepared[2])
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=11, num_workers=0)
    loader.sampler.set_epoch(2)
    full = [b[0] for b in loader]
    loader.sampler.set_start(2 * 4)  # two batches were consumed before the interruption
    rest = [b[0] for b in loader]
    assert len(rest) == len(full) - 2 and all(a.equal(b) for a, b in zip(rest, full[2:], strict=True))
    loader.sampler.set_epoch(3)  # a new epoch starts from its beginning with a new order
    nxt = [b[0] for b in loader]
    assert len(nxt) == len(full) and not all(a.equal(b) for a, b in zip(nxt, full, strict=True))


@pytest.mark.parametrize("n,world,drop_last", [(10, 1, False), (10, 3, False), (10, 3, True), (2, 4, False),
                                               (7, 2, True)])
def test_sampler_matches_distributed_sampler(n: int, world: int, drop_last: bool):
    data = list(range(n))
    for shuffle in (True, False):
        for rank in range(world):
            ours = ResumableSampler(n, shuffle=shuffle, seed=5, rank=rank, world_size=world,
                                    drop_last=drop_last)
            ref = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=5,
                                     drop_last=drop_last)
            for epoch in (0, 4):
                ours.set_epoch(epoch)
                ref.set_epoch(epoch)
                assert list(ours) == list(ref) and len(ours) == len(ref)
    covered = set()
    for rank in range(world):
        covered |= set(ResumableSampler(n, seed=1, rank=rank, world_size=world, drop_last=drop_last))
    assert covered == set(data) if not drop_last else len(covered) == world * (n // world)


def test_sampler_start_and_state():
    s = ResumableSampler(20, shuffle=True, seed=0)
    s.set_epoch(1)
    order = list(s)
    s.set_start(7)
    assert list(s) == order[7:] and len(s) == 13
    s.set_epoch(1)  # the same epoch keeps the resume point
    assert len(s) == 13
    state = s.state_dict()
    t = ResumableSampler(20, shuffle=True, seed=0)
    t.load_state_dict(state)
    assert list(t) == order[7:]
    s.set_epoch(2)
    assert len(s) == 20
    with pytest.raises(InputError, match="seed"):
        ResumableSampler(20, seed=1).load_state_dict(state)
    with pytest.raises(InputError, match="start"):
        s.set_start(21)
    with pytest.raises(InputError, match="shard"):
        ResumableSampler(5, rank=2, world_size=2)


def test_pos_weight(tmp_path: Path, tiny_cache_factory):
    ds = CacheDataset(tiny_cache_factory(tmp_path / "c", n_patients=50))
    y = ds.labels
    pos = np.nansum(y, 0)
    neg = (~np.isnan(y)).sum(0) - pos
    np.testing.assert_allclose(ds.pos_weight(), neg / pos, rtol=1e-6)


def test_read_slots_merges_runs_and_matches_the_memmap(tmp_path: Path, tiny_cache_factory, monkeypatch):
    ds = CacheDataset(tiny_cache_factory(tmp_path / "c", n_patients=40, size=16))
    slots = np.array([5, 6, 7, 2, 3, 3, 39, 0, 1, 20, 19, 18])  # runs, a duplicate, descending runs
    expected = np.asarray(ds.images)[slots]
    np.testing.assert_array_equal(ds.read_slots(slots), expected)
    np.testing.assert_array_equal(ds.read_slots(np.arange(40)), np.asarray(ds.images))
    assert ds.read_slots(np.array([], dtype=np.int64)).shape == (0, 16, 16)
    monkeypatch.delattr("os.preadv")  # platforms without preadv read through the memmap
    np.testing.assert_array_equal(ds.read_slots(slots), expected)

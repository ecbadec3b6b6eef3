"""pretrain.selection: train splits only, val/test patients of every given dataset left out, recorded."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.schema import read_index, write_index
from cxrbench.pretrain.selection import PretrainImages, read_selection, select_images, write_selection


def test_only_train_images_and_no_held_out_patient(tmp_path, tiny_cache_factory):
    a = tiny_cache_factory(tmp_path / "a", n_patients=50)  # 30 train, 10 val, 10 test
    sel = select_images([a])
    df, _ = read_index(a / "index.parquet")
    train = df[df["split"] == "train"]
    assert sel.n_images == 30 and list(sel.table["image_id"]) == list(train["image_id"])
    assert list(sel.table["position"]) == list(range(30)) and sel.datasets == ["nih"]

    # another index of the same dataset puts 5 of a's train patients in its test split: they go
    other, findings = read_index(a / "index.parquet")
    moved = other["patient_id"].isin(train["patient_id"].iloc[:5])
    other.loc[moved, "split"] = "test"
    other.loc[~moved & (other["split"] != "train"), "split"] = "train"
    write_index(other, tmp_path / "other.parquet", findings)
    sel = select_images([a], exclude=[tmp_path / "other.parquet"])
    assert sel.n_images == 25 and not set(sel.table["patient_id"]) & set(train["patient_id"].iloc[:5])
    assert sel.dropped["held_out_images"] == 5
    # the same patient ids under another dataset name are other people
    other["dataset"] = "chexpert"
    write_index(other, tmp_path / "other2.parquet", findings)
    assert select_images([a], exclude=[tmp_path / "other2.parquet"]).n_images == 30


def test_two_caches_hold_out_each_others_patients_and_images_count_once(tmp_path, tiny_cache_factory):
    a = tiny_cache_factory(tmp_path / "a", n_patients=50)
    b = tiny_cache_factory(tmp_path / "b", n_patients=50, seed=1, patient_prefix="q")
    both = select_images([a, b])
    assert both.n_images == 60 and list(both.table["source"].unique()) == [0, 1]
    twice = tiny_cache_factory(tmp_path / "a2", n_patients=50, seed=3)  # a's images prepared again
    sel = select_images([a, twice])
    assert sel.n_images == 30 and sel.dropped["duplicate_images"] == 30
    assert select_images([a, b]).held_out_patients == 40  # every val/test patient of either cache


def test_hash_is_of_the_sorted_ids_and_the_record_round_trips(tmp_path, tiny_cache_factory):
    a = tiny_cache_factory(tmp_path / "a", n_patients=40)
    b = tiny_cache_factory(tmp_path / "b", n_patients=40, patient_prefix="q")
    ab, ba = select_images([a, b]), select_images([b, a])
    assert ab.sha256 == ba.sha256  # which images, not their order
    keys = sorted(f"nih/{i}" for i in ab.table["image_id"])
    assert ab.sha256 == hashlib.sha256("".join(k + "\n" for k in keys).encode()).hexdigest()
    write_selection(ab, tmp_path / "images.parquet")
    rec = read_selection(tmp_path / "images.parquet")
    assert list(rec.columns) == ["dataset", "image_id", "patient_id", "cache"] and len(rec) == ab.n_images
    assert set(rec["cache"]) == {str(a.resolve()), str(b.resolve())}
    assert ab.summary()["images_sha256"] == ab.sha256 and ab.summary()["per_dataset"] == {"nih": 48}


def test_the_dataset_reads_the_selected_pixels(tmp_path, tiny_cache_factory):
    from cxrbench.cache.read import open_cache

    a = tiny_cache_factory(tmp_path / "a", n_patients=30)
    b = tiny_cache_factory(tmp_path / "b", n_patients=30, seed=2, patient_prefix="q")
    sel = select_images([a, b])
    ds = PretrainImages(sel)
    assert len(ds) == 36 and ds.size == 32
    idx = [35, 0, 20, 3]
    batch = ds[idx]
    assert batch.shape == (4, 32, 32) and batch.dtype.is_floating_point is False
    for j, i in enumerate(idx):
        row = sel.table.iloc[i]
        cache = open_cache([a, b][row["source"]])
        slot = cache.index.set_index("image_id").loc[row["image_id"], "cache_row"]
        assert np.array_equal(batch[j].numpy(), cache.images[slot])
    assert np.array_equal(ds[5].numpy(), ds[[5]][0].numpy())


def test_refusals(tmp_path, tiny_cache_factory):
    a = tiny_cache_factory(tmp_path / "a", n_patients=30)
    big = tiny_cache_factory(tmp_path / "big", n_patients=30, size=48, patient_prefix="q")
    with pytest.raises(InputError, match="different image sizes"):
        PretrainImages(select_images([a, big]))
    with pytest.raises(InputError, match="no cache"):
        select_images([])
    with pytest.raises(InputError, match="no index here"):
        select_images([a], exclude=[tmp_path / "nothing"])
    df, findings = read_index(a / "index.parquet")
    df["split"] = "test"
    write_index(df, tmp_path / "all-test.parquet", findings)
    with pytest.raises(InputError, match="every train patient is held out"):
        select_images([a], exclude=[tmp_path / "all-test.parquet"])


def test_unlabeled_caches_are_read_whole_minus_the_others_held_out_patients(tmp_path, tiny_cache_factory):
    target = tiny_cache_factory(tmp_path / "target", n_patients=50)  # p0000.., 30 train
    source = tiny_cache_factory(tmp_path / "source", n_patients=40, seed=4, patient_prefix="s")
    sel = select_images([target], unlabeled=[source])
    assert sel.n_images == 30 + 40 and sel.whole == (False, True) and sel.split_of(1) is None
    assert sel.summary()["unlabeled"] == [str(source.resolve())]
    ds = PretrainImages(sel)
    assert len(ds) == 70 and ds[69].shape == (32, 32)
    # the source holds one of the target's test patients: that image goes
    df, findings = read_index(source / "index.parquet")
    tdf, _ = read_index(target / "index.parquet")
    df.loc[0, "patient_id"] = tdf.loc[tdf["split"] == "test", "patient_id"].iloc[0]
    write_index(df, source / "index.parquet", findings)
    assert select_images([target], unlabeled=[source]).n_images == 69


def test_images_of_other_dataset_folders_are_never_duplicates(tmp_path, tiny_cache_factory):
    import json

    def from_folder(cache, root):
        path = cache / "manifest.json"
        doc = json.loads(path.read_text())
        doc["source"] = {"index": str(cache / "index.parquet"), "root": str(root)}
        path.write_text(json.dumps(doc))
        return cache

    # two phantom-like datasets of one format: the same image ids and patient ids, other folders
    a = from_folder(tiny_cache_factory(tmp_path / "a", n_patients=50), tmp_path / "site-a")
    b = from_folder(tiny_cache_factory(tmp_path / "b", n_patients=50, seed=3), tmp_path / "site-b")
    sel = select_images([a], unlabeled=[b])
    assert sel.dropped["duplicate_images"] == 0
    # patients: the same ids under the same adapter count as possibly the same people (the safe side)
    assert sel.n_images == 30 + 30 and sel.dropped["held_out_images"] == 20
    again = from_folder(tiny_cache_factory(tmp_path / "a2", n_patients=50, seed=3), tmp_path / "site-a")
    assert select_images([a, again]).dropped["duplicate_images"] == 30  # one release prepared twice

import hashlib

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError, command_line
from cxrbench.index.splits import (
    assign_splits,
    check_leakage,
    hash_split,
    leaking_patients,
    parse_fractions,
    unit_hash,
)


def patients(n=20_000):
    return pd.Series([f"patient{i:05d}" for i in range(n)])


def test_unit_hash_is_blake2b_of_seed_and_id():
    # independent reference: top 53 bits of blake2b-64 over "seed:id"
    for seed, key in ((0, "p1"), (7, "patient00042"), (123, "ü-id")):
        digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
        want = (int.from_bytes(digest, "big") >> 11) / 2**53
        assert unit_hash([key], seed)[0] == want
    u = unit_hash(patients(5000).tolist(), 0)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.02


def test_hash_split_fractions_determinism_and_seed():
    p = patients()
    a = hash_split(p, 0)
    assert (a == hash_split(p, 0)).all()
    shares = pd.Series(a).value_counts(normalize=True)
    assert (
        abs(shares["train"] - 0.7) < 0.015
        and abs(shares["val"] - 0.1) < 0.01
        and abs(shares["test"] - 0.2) < 0.015
    )
    assert (a != hash_split(p, 1)).mean() > 0.3
    # order and the other patients do not matter: a patient's split depends only on (seed, id)
    rev = hash_split(p[::-1].reset_index(drop=True), 0)[::-1]
    assert (rev == a).all()
    assert (hash_split(p[:100], 0) == a[:100]).all()


def test_rows_of_a_patient_share_a_split():
    p = pd.Series(np.repeat([f"p{i}" for i in range(500)], 3))
    s = hash_split(p, 5)
    assert pd.DataFrame({"p": p, "s": s}).groupby("p")["s"].nunique().max() == 1


def test_official_split_with_carved_val():
    p = patients(10_000)
    official = pd.Series(np.where(np.arange(10_000) % 5 == 0, "test", "train"), dtype=object)
    split, info = assign_splits(p, official, "official", seed=0, carve="hash")
    assert (split[official == "test"] == "test").all()
    carved = split[official == "train"]
    assert set(carved) == {"train", "val"} and abs((carved == "val").mean() - 0.125) < 0.015
    assert info["carved"] == ["val"] and "val carved (hash)" in info["method"]
    # the same hash as the hash split, rescaled: val = the top 0.1/0.8 of train patients by u
    u = unit_hash(p[official == "train"].tolist(), 0)
    assert ((u >= 0.875) == (carved == "val")).all()


def test_official_complete_and_hash_mode_and_missing_rows():
    p = pd.Series(["a", "b", "c"])
    off = pd.Series(["train", "val", "test"], dtype=object)
    split, info = assign_splits(p, off)
    assert list(split) == ["train", "val", "test"] and info["method"] == "official"
    split, info = assign_splits(p, off, "hash", seed=2)
    assert info["method"] == "hash" and list(split) == list(hash_split(p, 2))
    split, info = assign_splits(p, None)
    assert info["method"].startswith("stratified (the release has no official split)")
    split, info = assign_splits(p, None, carve="hash")
    assert info["method"].startswith("hash (the release has no official split)")
    with pytest.raises(InputError, match="no official split"):
        assign_splits(p, pd.Series(["train", None, "test"], dtype=object))


@pytest.mark.parametrize(
    "text,want",
    [("0.7,0.1,0.2", (0.7, 0.1, 0.2)), ("80,0,20", (0.8, 0.0, 0.2)), ([1, 1, 2], (0.25, 0.25, 0.5))],
)
def test_parse_fractions(text, want):
    assert parse_fractions(text) == pytest.approx(want)


@pytest.mark.parametrize("text", ["0.7,0.3", "a,b,c", "-1,1,1", "0,0.5,0.5"])
def test_parse_fractions_errors(text):
    with pytest.raises(InputError, match="^split_fractions got"):  # from Python: the parameter
        parse_fractions(text)
    with command_line(), pytest.raises(InputError, match="^--split-fractions got"):  # from the CLI: the flag
        parse_fractions(text)


def test_leakage_count_and_error_names_the_patient():
    df = pd.DataFrame(
        {"patient_id": ["a", "a", "b", "c", "c"], "split": ["train", "test", "val", "val", "val"]}
    )
    assert leaking_patients(df["patient_id"], df["split"]) == 1
    with pytest.raises(InputError, match=r"patient 'a' is in splits test\+train"):
        check_leakage(df)
    check_leakage(df[df["patient_id"] != "a"])


def _brute_force_demand(split, labels, fractions):
    """Per split and finding: positive patients minus the share the split should hold."""
    out = {}
    for k in range(labels.shape[1]):
        total = labels[:, k].sum()
        for s, f in zip(("train", "val", "test"), fractions, strict=True):
            out[(s, k)] = labels[split == s, k].sum() - f * total
    return out


def test_stratified_split_balances_every_finding_and_is_deterministic():
    from cxrbench.index.splits import stratified_split

    rng = np.random.default_rng(4)
    n = 3000
    p = pd.Series([f"p{i // 2}" for i in range(n)])  # two images per patient
    labels = (rng.random((n, 6)) < [0.02, 0.05, 0.1, 0.2, 0.4, 0.01]).astype(np.float32)
    labels[rng.random(labels.shape) < 0.1] = np.nan
    fractions = (0.7, 0.1, 0.2)
    split = stratified_split(p, labels, seed=7, fractions=fractions)
    assert pd.DataFrame({"p": p, "s": split}).groupby("p")["s"].nunique().max() == 1  # by patient
    patient = pd.DataFrame(np.nan_to_num(labels) == 1).groupby(p.to_numpy()).max().to_numpy()
    psplit = pd.Series(split).groupby(p.to_numpy()).first().to_numpy()
    worst = max(abs(v) for v in _brute_force_demand(psplit, patient, fractions).values())
    assert worst <= 2  # every finding's positive patients within 2 of its share in every split
    sizes = pd.Series(psplit).value_counts()
    assert abs(sizes["val"] - 150) <= 3 and abs(sizes["test"] - 300) <= 3
    hashed = pd.Series(hash_split(p, 7, fractions)).groupby(p.to_numpy()).first().to_numpy()
    assert max(abs(v) for v in _brute_force_demand(hashed, patient, fractions).values()) > worst
    again = stratified_split(p[::-1].reset_index(drop=True), labels[::-1], seed=7, fractions=fractions)
    np.testing.assert_array_equal(again[::-1], split)  # row order does not matter
    assert not np.array_equal(stratified_split(p, labels, seed=8, fractions=fractions), split)


def test_small_data_gets_every_wanted_split_and_warnings():
    from cxrbench.index.sources.base import split_counts, split_warnings
    from cxrbench.index.splits import stratified_split

    p = pd.Series([f"p{i}" for i in range(6)])
    labels = np.array([[1], [0], [0], [1], [0], [0]], dtype=np.float32)
    split = stratified_split(p, labels, seed=0)
    assert set(split) == {"train", "val", "test"}
    df = pd.DataFrame({"patient_id": p, "split": split, "edema": labels[:, 0]})
    lines = split_warnings(split_counts(df, ["edema"]))
    assert len(lines) == 1 and "finding 'edema'" in lines[0] and "fewer than 10" in lines[0]


def test_a_finding_with_as_many_positive_patients_as_splits_reaches_every_split():
    from cxrbench.index.splits import stratified_split

    for n_pos in (3, 4, 5):
        for seed in range(10):
            p = pd.Series([f"p{i}" for i in range(60)])
            labels = np.zeros((60, 1), np.float32)
            labels[:n_pos] = 1  # 70/10/20 of 3-5 positives: val wants well under one
            split = stratified_split(p, labels, seed=seed)
            assert set(split[:n_pos]) == {"train", "val", "test"}, (n_pos, seed)
            assert (split[:n_pos] == "train").sum() >= 1
    labels = np.zeros((60, 1), np.float32)
    labels[:2] = 1  # fewer positives than splits: placed by demand, as before (train and test)
    split = stratified_split(pd.Series([f"p{i}" for i in range(60)]), labels, seed=0)
    assert set(split[:2]) == {"train", "test"}

"""The regions table: its run-length code, bounded decoding of hostile codes, checks, Parquet I/O."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.regions import (
    attach_regions,
    check_regions,
    decode_rle,
    encode_rle,
    make_regions,
    mask_box,
    read_regions,
    region_mask,
    regions_meta,
    write_regions,
)


def test_code_round_trips_and_is_row_major():
    rng = np.random.default_rng(0)
    for shape in ((1, 1), (5, 7), (33, 17)):
        mask = rng.random(shape) > 0.6
        assert (decode_rle(encode_rle(mask), *shape, "t") == mask).all()
    m = np.zeros((3, 4), dtype=bool)
    m[1, 1:3] = True
    assert encode_rle(m) == "5 2"  # row 1, columns 1-2: flat pixels 5 and 6
    assert encode_rle(np.asfortranarray(m)) == "5 2"  # memory layout does not matter
    assert encode_rle(np.zeros((2, 2), dtype=bool)) == ""


def test_official_encodings_relative_one_based_column_major():
    m = np.zeros((4, 3), dtype=bool)  # height 4, width 3
    m[1:3, 0] = True  # column 0, rows 1-2: column-major pixels 1, 2
    m[0, 2] = True  # column 2, row 0: column-major pixel 8
    assert (decode_rle("1 2 8 1", 4, 3, "t", order="F") == m).all()
    assert (decode_rle("1 2 5 1", 4, 3, "t", order="F", relative=True) == m).all()  # 8 = 1 + 2 + 5
    assert (decode_rle("2 2 9 1", 4, 3, "t", order="F", one_based=True) == m).all()


@pytest.mark.parametrize(
    "code, match",
    [
        ("1 2 3", "pairs of start and length"),
        ("1 x", "not a non-negative integer"),
        ("1 -2", "not a non-negative integer"),
        ("0 5 3 1", "overlapping"),
        ("10 3", "past the last pixel"),
        ("3 0", "empty"),
        ("1 1 " * 50, "at most"),
        ("9" * 5000, "longer than any mask"),
    ],
)
def test_hostile_codes_are_one_clear_error_naming_the_place(code, match):
    with pytest.raises(InputError, match=match) as err:
        decode_rle(code, 3, 4, lambda: "f.csv, line 7")
    assert err.value.where == "f.csv, line 7"


def regions(**over):
    base = dict(
        image_id=["a", "a", "b"],
        finding=["cardiomegaly", "pneumothorax", "nodule_mass"],
        label=["Cardiomegaly", "Pneumothorax", "Nodule/Mass"],
        kind=["box", "mask", "box"],
        x0=[1.0, 0.0, 2.5],
        y0=[2.0, 1.0, 0.0],
        x1=[5.0, 3.0, 4.0],
        y1=[6.0, 2.0, 3.5],
        width=[None, 4, None],
        height=[None, 3, None],
        mask=[None, "5 2", None],
        reader=["R1", None, None],
    )
    base.update(over)
    return make_regions(**base)


def test_checks_name_the_row_and_the_rule():
    check_regions(regions(), "t", pd.Series(["a", "b"]))
    cases = [
        (dict(kind=["box", "polygon", "box"]), "kind 'polygon'"),
        (dict(finding=["heart", "pneumothorax", "nodule_mass"]), "not a canonical name"),
        (dict(x1=[1.0, 3.0, 4.0]), "region row 0"),
        (dict(y0=[2.0, 1.0, np.nan]), "region row 2"),
        (dict(x0=[-1.0, 0.0, 2.5]), "non-negative"),
        (dict(x1=[5.0, 9.0, 4.0]), "outside its 4 x 3 image"),
        (dict(width=[None, None, None]), "grid"),
        (dict(mask=[None, None, None]), "needs its code"),
    ]
    for over, match in cases:
        with pytest.raises(InputError, match=match):
            check_regions(regions(**over), "t")
    with pytest.raises(InputError, match="image 'b' is not in the index"):
        check_regions(regions(), "t", pd.Series(["a"]))


def test_attach_keeps_the_indexed_images_and_counts(tmp_path):
    out, info = attach_regions(regions(), pd.DataFrame({"image_id": ["a"]}), "t")
    assert list(out["image_id"]) == ["a", "a"] and info["dropped_image_not_indexed"] == 1
    assert info["kinds"] == {"box": 1, "mask": 1}


def test_parquet_round_trip_with_metadata(tmp_path):
    path = tmp_path / "x.regions.parquet"
    write_regions(regions(), path, {"space": "image", "index_sha256": "abc"})
    back, meta = read_regions(path)
    assert meta["space"] == "image" and meta["index_sha256"] == "abc" and meta["version"] == 1
    pd.testing.assert_frame_equal(back, regions(), check_dtype=False)
    assert str(back["width"].dtype) == "Int64" and pd.isna(back["width"].iloc[0])
    mask = region_mask(back.iloc[1], 3, 4)
    assert mask.sum() == 2 and mask_box(mask) == (1.0, 1.0, 3.0, 2.0)
    box = region_mask(back.iloc[0], 8, 8)
    assert box.sum() == 16 and mask_box(box) == (1.0, 2.0, 5.0, 6.0)
    other = tmp_path / "other.parquet"
    pd.DataFrame({"a": [1]}).to_parquet(other)
    assert regions_meta(other) is None
    with pytest.raises(InputError, match="not a cxrbench regions file"):
        read_regions(other)

import numpy as np
import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.layout import regions_path
from cxrbench.index.build import build_index
from cxrbench.index.regions import read_regions, region_mask
from cxrbench.phantom.formats.siim import relative_rle


def masks():
    a = np.zeros((1024, 1024), dtype=bool)
    a[100:140, 300:310] = True  # rows 100-139, columns 300-309
    b = np.zeros((1024, 1024), dtype=bool)
    b[500:501, 7:9] = True
    return a, b


def write(root, rows, header="ImageId, EncodedPixels"):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train-rle.csv").write_text("\n".join([header, *rows]) + "\n")
    return root


def test_relative_column_major_code_becomes_the_tables_masks(tmp_path):
    a, b = masks()
    root = write(
        tmp_path / "s", [f"img1, {relative_rle(a)}", f"img1, {relative_rle(b)}", "img2, -1", "img3, -1"]
    )
    df, findings, report = build_index("siim", root, out=tmp_path / "s.parquet", split_fractions="1,0,0")
    assert findings == ["pneumothorax"] and report["rle"] == "relative"
    assert df.set_index("image_id")["pneumothorax"].to_dict() == {"img1": 1.0, "img2": 0.0, "img3": 0.0}
    regions, _ = read_regions(regions_path(tmp_path / "s.parquet"))
    assert len(regions) == 2 and (regions["width"] == 1024).all()
    assert (region_mask(regions.iloc[0], 1024, 1024) == a).all() and (
        region_mask(regions.iloc[1], 1024, 1024) == b
    ).all()
    assert tuple(regions.iloc[0][["x0", "y0", "x1", "y1"]]) == (300.0, 100.0, 310.0, 140.0)


def test_an_absolute_one_based_file_is_recognized(tmp_path):
    a, _ = masks()
    flat = np.flatnonzero(a.T.ravel())  # column-major pixels, one run per column
    starts = flat[np.r_[True, np.diff(flat) > 1]] + 1
    code = " ".join(f"{s} 40" for s in starts)
    df, _, report = build_index(
        "siim",
        write(tmp_path / "s", [f"img1,{code}", "img2,-1"], "ImageId,EncodedPixels"),
        out=tmp_path / "s.parquet",
        split_fractions="1,0,0",
    )
    assert report["rle"] == "absolute, 1-based"
    regions, _ = read_regions(regions_path(tmp_path / "s.parquet"))
    assert (region_mask(regions.iloc[0], 1024, 1024) == a).all()


@pytest.mark.parametrize(
    "rows, match",
    [
        (["img1, 5 x", "img2, -1"], "line 2: run-length code holds 'x'"),
        (["img1, 1048570 10", "img2, -1"], "line 2: run-length code does not describe"),
        (["img1, 5 3", "img1, -1"], "line 2: image 'img1' has both '-1' and a mask"),
        (["img1, " + "1 1 " * 1_100_000, "img2, -1"], r"(line 2|data row 1).*run-length code has"),
    ],
)
def test_hostile_codes_name_the_file_and_line(tmp_path, rows, match):
    with pytest.raises(InputError, match=match) as err:
        build_index("siim", write(tmp_path / "s", rows), split_fractions="1,0,0")
    assert "train-rle.csv" in str(err.value)

import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.layout import regions_path
from cxrbench.index.build import build_index
from cxrbench.index.regions import read_regions

LABELS = """patientId,x,y,width,height,Target
a1,,,,,0
b2,264.0,152.0,213.0,379.0,1
b2,562.0,152.0,256.0,453.0,1
c3,,,,,0
"""
CLASSES = """patientId,class
a1,Normal
b2,Lung Opacity
b2,Lung Opacity
c3,No Lung Opacity / Not Normal
"""


def write(root, labels=LABELS, classes=CLASSES):
    root.mkdir(parents=True, exist_ok=True)
    (root / "stage_2_train_labels.csv").write_text(labels)
    if classes is not None:
        (root / "stage_2_detailed_class_info.csv").write_text(classes)
    return root


def test_labels_classes_and_boxes(tmp_path):
    root = write(tmp_path / "rsna")
    df, findings, report = build_index("rsna", root, out=tmp_path / "r.parquet", split_fractions="1,0,0")
    assert findings == ["no_finding", "pneumonia", "lung_opacity"]  # canonical order
    got = df.set_index("image_id")
    assert got.loc["a1", "no_finding"] == 1 and got.loc["c3", "no_finding"] == 0
    assert got.loc["b2", "lung_opacity"] == 1 == got.loc["b2", "pneumonia"]
    assert (df["view"] == "UNKNOWN").all()  # no DICOM header table: frontal of unknown projection, kept
    regions, meta = read_regions(regions_path(tmp_path / "r.parquet"))
    assert meta["space"] == "image" and meta["index_sha256"] == report["index_sha256"]
    box = regions[regions["finding"] == "lung_opacity"].iloc[1]
    assert (box["x0"], box["y0"], box["x1"], box["y1"]) == (562.0, 152.0, 818.0, 605.0)
    assert box["width"] == 1024 and len(regions) == 4  # two boxes x two findings


def test_without_the_class_file_there_is_no_no_finding(tmp_path):
    df, findings, report = build_index("rsna", write(tmp_path / "r", classes=None), split_fractions="1,0,0")
    assert "no_finding" not in findings and "detailed_class_info" in report["warnings"][0]


@pytest.mark.parametrize(
    "labels, classes, match",
    [
        (LABELS.replace("b2,562.0,152.0,256.0", "b2,562.0,152.0,-256.0"), CLASSES, "line 4: box .* is empty"),
        (
            LABELS.replace("b2,562.0,152.0,256.0,453.0", "b2,562.0,,256.0,453.0"),
            CLASSES,
            "line 4: a box with some",
        ),
        (LABELS.replace("c3,,,,,0", "c3,,,,,2"), CLASSES, "line 5: Target is 2"),
        (
            LABELS.replace("b2,562.0,152.0,256.0,453.0,1", "b2,562.0,152.0,256.0,453.0,0"),
            CLASSES,
            "line 4: image 'b2' has two different 'Target'",
        ),
        (LABELS, CLASSES.replace("a1,Normal", "a1,Lung Opacity"), "class 'Lung Opacity' but Target 0"),
        (LABELS, CLASSES.replace("a1,Normal", "a1,Abnormal"), "line 2: unknown class 'Abnormal'"),
    ],
)
def test_bad_rows_are_named(tmp_path, labels, classes, match):
    with pytest.raises(InputError, match=match):
        build_index("rsna", write(tmp_path / "r", labels, classes), split_fractions="1,0,0")

import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.build import build_index

HEAD = ("Image Index,Patient ID,Patient Age,Patient Gender,View Position,Fracture,Pneumothorax,"
        "Airspace opacity,Nodule or mass")


def write(root, test_rows, val_rows):
    d = root / "four_findings_expert_labels"
    d.mkdir(parents=True)
    (d / "test_labels.csv").write_text("\n".join([HEAD, *test_rows]) + "\n")
    (d / "validation_labels.csv").write_text("\n".join([HEAD, *val_rows]) + "\n")
    return root


def test_the_two_sets_are_val_and_test_with_four_findings(tmp_path):
    root = write(
        tmp_path,
        ["00000001_000.png,1,50,M,PA,NO,YES,NO,NO", "00000002_000.png,2,60,F,AP,YES,NO,YES,YES"],
        ["00000003_001.png,3,40,F,PA,NO,NO,NO,YES"],
    )
    df, findings, report = build_index("nih-google", root, views="all")
    assert findings == ["nodule_mass", "pneumothorax", "lung_opacity", "fracture"]
    got = df.set_index("image_id")
    assert got["split"].to_dict() == {
        "00000001_000.png": "test",
        "00000002_000.png": "test",
        "00000003_001.png": "val",
    }
    assert got.loc["00000001_000.png", "pneumothorax"] == 1 and got.loc["00000002_000.png", "fracture"] == 1
    assert got.loc["00000002_000.png", "sex"] == "F" and got.loc["00000003_001.png", "age"] == 40


def test_a_value_other_than_yes_or_no_is_named(tmp_path):
    root = write(
        tmp_path, ["00000001_000.png,1,50,M,PA,NO,MAYBE,NO,NO"], ["00000003_001.png,3,40,F,PA,NO,NO,NO,YES"]
    )
    with pytest.raises(InputError, match="test_labels.csv, line 2: column 'Pneumothorax' has value 'MAYBE'"):
        build_index("nih-google", root)

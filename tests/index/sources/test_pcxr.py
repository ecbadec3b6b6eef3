import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.layout import regions_path
from cxrbench.index.build import build_index
from cxrbench.index.regions import read_regions
from cxrbench.phantom.formats.pcxr import DISEASES


def row(image, *positives, reader="R1"):
    return ",".join([image, reader, *("1" if d in positives else "0" for d in DISEASES)])


def write(root, extra_box=""):
    root.mkdir(parents=True, exist_ok=True)
    head = "image_id,rad_ID," + ",".join(DISEASES)
    (root / "image_labels_train.csv").write_text(
        "\n".join([head, row("p1", "Brocho-pneumonia"), row("p2", "No finding"), row("p3", "Bronchiolitis")])
        + "\n"
    )
    (root / "image_labels_test.csv").write_text("\n".join([head, row("p4", "Pneumonia", reader="R2")]) + "\n")
    box_head = "image_id,rad_id,class_name,x_min,y_min,x_max,y_max"
    (root / "annotations_train.csv").write_text(
        "\n".join(
            [
                box_head,
                "p1,R1,Consolidation,10,20,110,220",
                "p1,R1,Boot-shaped heart,5,5,50,50",
                "p2,R1,No finding,,,,",
                "p3,R1,Other nodule/mass,1,2,3,4" + extra_box,
            ]
        )
        + "\n"
    )
    (root / "annotations_test.csv").write_text(box_head + "\np4,R2,Clavicle fracture,1,1,9,9\n")
    return root


def test_diagnoses_splits_and_boxes(tmp_path):
    df, findings, report = build_index(
        "vindr-pcxr",
        write(tmp_path / "p"),
        out=tmp_path / "p.parquet",
        split_fractions="1,0,0",
        labels="study-vindr-pcxr",
    )
    assert findings == [
        "no_finding",
        "bronchitis",
        "bronchopneumonia",
        "bronchiolitis",
        "pneumonia",
        "other_disease",
    ]
    got = df.set_index("image_id")
    assert got.loc["p1", "bronchopneumonia"] == 1 and got.loc["p4", "pneumonia"] == 1
    assert got["split"].to_dict() == {"p1": "train", "p2": "train", "p3": "train", "p4": "test"}
    regions, _ = read_regions(regions_path(tmp_path / "p.parquet"))
    assert sorted(regions["finding"]) == ["clavicle_fracture", "consolidation", "fracture", "nodule_mass"]
    read = report["regions_read"]["train"]
    assert (
        read["terms_without_canonical_finding"] == {"Boot-shaped heart": 1} and read["rows_without_box"] == 1
    )


def test_a_bad_box_names_its_line(tmp_path):
    root = write(tmp_path / "p")
    (root / "annotations_train.csv").write_text(
        "image_id,rad_id,class_name,x_min,y_min,x_max,y_max\np1,R1,Consolidation,10,20,abc,220\n"
    )
    with pytest.raises(
        InputError, match="annotations_train.csv, line 2: column 'x_max' has non-numeric value 'abc'"
    ):
        build_index("vindr-pcxr", root, split_fractions="1,0,0")

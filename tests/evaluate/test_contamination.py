"""evaluate.contamination and `cxrbench audit`: reading pretraining lists, matching them to an index,
counting test images and patients, and the metric without the contaminated images, side by side."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.evaluate import scoring
from cxrbench.evaluate.contamination import (
    audit_index,
    evaluate_excluding,
    match_images,
    normalize_dataset,
    read_pretraining_list,
    side_by_side,
)
from cxrbench.stats.metrics import UndefinedMetricWarning


def _index() -> pd.DataFrame:
    rows = []
    for i in range(6):  # NIH: names unique
        rows.append(
            (
                "nih",
                f"{i:08d}_000.png",
                f"n{i}",
                f"images_00{i % 2 + 1}/images/{i:08d}_000.png",
                "test" if i < 4 else "train",
            )
        )
    for i in range(4):  # MIMIC: dicom ids
        rows.append(("mimic", f"d{i}-aa", f"m{i // 2}", f"files/p10/p1000{i // 2}/s{i}/d{i}-aa.jpg", "test"))
    for p in range(3):  # CheXpert: view names repeat; patient/study/view is unique
        for v in (1, 2):
            rows.append(
                (
                    "chexpert",
                    f"patient{p:05d}/study1/view{v}_frontal",
                    f"c{p}",
                    f"valid/patient{p:05d}/study1/view{v}_frontal.jpg",
                    "test",
                )
            )
    return pd.DataFrame(rows, columns=["dataset", "image_id", "patient_id", "path", "split"])


LIST = """dataset,image_file_path
NIH-CXR,images/00000000_000.png
NIH-CXR,images/00000003_000.png
NIH-CXR,images/00000005_000.png
MIMIC-CXR,files/p10/p10000/s0/d0-aa.dcm
MIMIC-CXR,files/p10/p10001/s9/d3-aa.dcm
CheXpert,CheXpert-v1.0/valid/patient00001/study1/view1_frontal.jpg
CheXpert,CheXpert-v1.0/train/patient00009/study1/view2_frontal.jpg
PadChest,00000001_000.png
"""


def test_lists_in_several_formats(tmp_path):
    (tmp_path / "a.csv").write_text(LIST)
    df = read_pretraining_list(tmp_path / "a.csv")
    assert len(df) == 8 and df["dataset"].tolist()[:4] == ["nih", "nih", "nih", "mimic"]
    assert normalize_dataset("MIMIC-CXR") == "mimic" and normalize_dataset("ChestX-ray14") == "nih"
    (tmp_path / "b.tsv").write_text("image_id\tsource\nx.png\tbrax\n")
    assert read_pretraining_list(tmp_path / "b.tsv").to_dict("records") == [
        {"key": "x.png", "dataset": "brax"}
    ]
    (tmp_path / "c.txt").write_text("images/00000000_000.png\nimages/00000001_000.png\n")  # no header
    c = read_pretraining_list(tmp_path / "c.txt")
    assert (
        c["key"].tolist() == ["images/00000000_000.png", "images/00000001_000.png"]
        and c["dataset"].isna().all()
    )
    pd.DataFrame({"path": ["a.png"]}).to_parquet(tmp_path / "d.parquet")
    assert read_pretraining_list(tmp_path / "d.parquet")["key"].tolist() == ["a.png"]
    (tmp_path / "e.csv").write_text("foo,bar\n1,2\n")
    with pytest.raises(InputError, match="cannot tell the image column"):
        read_pretraining_list(tmp_path / "e.csv")


def test_matching_by_id_and_trailing_path_components_within_the_dataset(tmp_path):
    (tmp_path / "a.csv").write_text(LIST)
    index = _index()
    found = match_images(index, read_pretraining_list(tmp_path / "a.csv"))
    hits = set(index.loc[found, "image_id"])
    # NIH 0, 3, 5 by name (PadChest's 00000001_000.png is another dataset's file); MIMIC d0 and d3 by
    # dicom id whatever the folders and extension; CheXpert patient00001 view1 only (patient00009 is not here)
    assert hits == {
        "00000000_000.png",
        "00000003_000.png",
        "00000005_000.png",
        "d0-aa",
        "d3-aa",
        "patient00001/study1/view1_frontal",
    }
    # without a dataset column every entry counts for every dataset: PadChest's name now hits NIH 1
    (tmp_path / "b.txt").write_text("\n".join(line.split(",")[1] for line in LIST.splitlines()[1:]))
    loose = set(index.loc[match_images(index, read_pretraining_list(tmp_path / "b.txt")), "image_id"])
    assert loose == hits | {"00000001_000.png"}


def test_audit_counts_images_and_patients_per_split(tmp_path):
    (tmp_path / "a.csv").write_text(LIST)
    index = _index()
    res = audit_index("rad-dino", index, read_pretraining_list(tmp_path / "a.csv"), splits=("test", "train"))
    test = res.splits["test"]
    assert (test["images"], test["patients"]) == (14, 9)
    assert (test["found_images"], test["found_patients"]) == (5, 5)  # patients n0, n3, m0, m1, c1
    assert res.splits["train"]["found_images"] == 1  # NIH 5
    assert sorted(res.found_ids["test"]) == sorted(
        ["00000000_000.png", "00000003_000.png", "d0-aa", "d3-aa", "patient00001/study1/view1_frontal"]
    )
    assert len(res.warnings) == 3 and res.pretrained_on[0] == "mimic"
    blind = audit_index("dinov2-vitb14", index)
    assert blind.warnings == [] and blind.splits["test"]["found_images"] is None


def _preds(n=120, seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {"image_id": [f"i{k:04d}" for k in range(n)], "patient_id": [f"p{k // 2}" for k in range(n)]}
    )
    y = (rng.random(n) < 0.4).astype(float)
    df["p_edema"], df["y_edema"] = 1 / (1 + np.exp(-(2 * y + rng.normal(size=n)))), y
    return df


def test_metric_without_the_excluded_images_equals_evaluating_the_rest():
    test = _preds()
    test.loc[:19, "p_edema"] = test.loc[:19, "y_edema"]  # the "seen" images are scored perfectly
    excluded = test["image_id"].iloc[:20].tolist()
    both = evaluate_excluding(test, excluded, None, n_resamples=50, seed=1, threshold_from="test")
    ref = scoring.evaluate_predictions(test.iloc[20:], None, n_resamples=50, seed=1, threshold_from="test")
    assert (
        both["clean"]["per_finding"]["edema"]["metrics"]["auroc"]
        == ref["per_finding"]["edema"]["metrics"]["auroc"]
    )
    assert (
        both["excluded_images"] == 20 and both["excluded_patients"] == 10 and both["remaining_images"] == 100
    )
    table = side_by_side(both)
    assert table["finding"].tolist() == ["edema", "mean"]
    row = table.iloc[0]
    assert row["auroc_all"] > row["auroc_clean"] and row["difference"] == pytest.approx(
        row["auroc_clean"] - row["auroc_all"]
    )
    with pytest.raises(InputError, match="every test image"):
        evaluate_excluding(test, test["image_id"], None, n_resamples=0)


def test_cli_audit_counts_writes_the_images_and_compares_a_run(tmp_path, cli_runner):
    from cxrbench.evaluate.predictions import write_predictions
    from cxrbench.index.schema import write_index

    preds = _preds()
    index = pd.DataFrame(
        {
            "image_id": preds["image_id"],
            "patient_id": preds["patient_id"],
            "study_id": None,
            "path": [f"images/{i}.png" for i in preds["image_id"]],
            "view": "PA",
            "split": "test",
            "dataset": "nih",
            "sex": "F",
            "age": 50.0,
            "edema": preds["y_edema"].astype("float32"),
        }
    )
    write_index(index, tmp_path / "nih.parquet", ["edema"])
    (tmp_path / "list.csv").write_text(
        "image_path\n" + "".join(f"x/{i}.png\n" for i in preds["image_id"][:30])
    )
    run = tmp_path / "run"
    write_predictions(preds, run / "eval" / "test" / "predictions.parquet", {})
    write_predictions(_preds(seed=1), run / "eval" / "val" / "predictions.parquet", {})
    args = [
        "audit",
        "--init",
        "rad-dino",
        "--index",
        str(tmp_path / "nih.parquet"),
        "--pretraining-list",
        str(tmp_path / "list.csv"),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        result = cli_runner.invoke(
            app, [*args, "--run", str(run), "--bootstrap", "20", "--out", str(tmp_path / "found.csv")]
        )
    assert result.exit_code == 0, result.output + result.stderr
    assert (
        "pretrained on nih" in result.stderr
        and "30 (25.0%)" in result.output
        and "auroc_clean" in result.output
    )
    found = pd.read_csv(tmp_path / "found.csv")
    assert len(found) == 30 and set(found.columns) == {"split", "dataset", "image_id", "patient_id"}
    as_json = cli_runner.invoke(app, [*args, "--json"])
    doc = json.loads(as_json.output)
    assert doc["splits"]["test"]["found_patients"] == 15 and doc["pretraining_list"]["rows"] == 30
    bad = cli_runner.invoke(
        app, ["audit", "--init", "rad-dino", "--index", str(tmp_path / "nih.parquet"), "--run", str(run)]
    )
    assert bad.exit_code == 2 and "--pretraining-list" in bad.stderr

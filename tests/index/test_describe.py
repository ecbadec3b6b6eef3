import json

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json
from cxrbench.index.build import build_index, report_path
from cxrbench.index.describe import format_summary, load, summarize
from cxrbench.index.schema import write_index

NAN = np.nan


def frame():
    return pd.DataFrame(
        {
            "image_id": list("abcdef"),
            "patient_id": ["p1", "p1", "p2", "p3", "p4", "p4"],
            "study_id": ["s1", "s1", "s2", "s3", "s4", "s5"],
            "path": [f"{c}.png" for c in "abcdef"],
            "view": ["PA", "AP", "PA", "AP_SUPINE", "PA", "PA"],
            "split": ["train", "train", "train", "val", "test", "test"],
            "dataset": "nih",
            "sex": ["M", "M", "F", None, "F", "F"],
            "age": [50.0, 51.0, 30.0, NAN, 70.0, 71.0],
            "cardiomegaly": [1.0, 0.0, NAN, 1.0, 0.0, 0.0],
            "edema": [0.0, 0.0, 0.0, 0.0, 1.0, NAN],
        }
    )


def test_summarize_hand_counts():
    s = summarize(frame(), ["cardiomegaly", "edema"])
    assert s["images"] == 6 and s["patients"] == 4 and s["studies"] == 5
    assert s["splits"]["train"] == {"images": 3, "patients": 2, "share": 0.5}
    assert s["splits"]["test"]["patients"] == 1
    assert s["views"]["PA"] == {"all": 4, "train": 2, "val": 0, "test": 2}
    c = s["labels"]["cardiomegaly"]
    assert c["all"] == {"positive": 2, "negative": 3, "unknown": 1, "prevalence": 0.4}
    assert c["train"] == {"positive": 1, "negative": 1, "unknown": 1, "prevalence": 0.5}
    assert s["labels"]["edema"]["test"]["prevalence"] == 1.0
    assert s["sex"] == {"F": 3, "M": 2, "missing": 1} and s["age"]["missing"] == 1
    assert s["leaking_patients"] == 0
    text = format_summary(s)
    assert "6 images, 4 patients" in text and "cardiomegaly" in text and "40.0%" in text


def test_summary_flags_leaks_and_undefined_prevalence():
    df = frame()
    df.loc[1, "split"] = "test"
    df["edema"] = NAN
    s = summarize(df, ["edema"])
    assert s["leaking_patients"] == 1 and s["labels"]["edema"]["all"]["prevalence"] is None
    assert "1 patient(s) appear in more than one split" in format_summary(s)


def test_load_index_file_with_report_and_cache_dir(tmp_path):
    idx = tmp_path / "x.parquet"
    write_index(frame(), idx, ["cardiomegaly", "edema"])
    atomic_write_json(
        report_path(idx),
        {"unknown_terms": {"odd term": 3}, "dropped": {"views": {"LATERAL": 2}}, "index_sha256": "0" * 64},
    )
    df, findings, ctx = load(idx)
    assert findings == ["cardiomegaly", "edema"] and ctx["kind"] == "index"
    assert ctx["report"]["unknown_terms"] == {"odd term": 3} and ctx["report_stale"]
    cache = tmp_path / "cache"
    cache.mkdir()
    write_index(frame().assign(cache_row=range(6)), cache / "index.parquet", ["cardiomegaly"])
    df, findings, ctx = load(cache)
    assert ctx["kind"] == "cache" and ctx["incomplete"] and findings == ["cardiomegaly"]
    (cache / "manifest.json").write_text(json.dumps({"size": 224}))
    assert load(cache)[2]["manifest"] == {"size": 224}
    with pytest.raises(InputError, match="no index.parquet inside"):
        load(tmp_path)
    with pytest.raises(InputError, match="no such index file"):
        load(tmp_path / "nope.parquet")


def test_cli_describe_table_and_json_with_unknown_terms(cli_runner, tmp_path):
    header = (
        ",ImageID,ImageDir,StudyDate_DICOM,StudyID,PatientID,PatientBirth,PatientSex_DICOM,Projection,"
        "MethodLabel,Labels"
    )
    rows = [f"{i},i{i}.png,0,20150101,s{i},p{i},1950.0,M,PA,Physician,\"['normal']\"" for i in range(30)]
    rows.append("30,j.png,0,20150101,s30,p30,1950.0,F,PA,Physician,\"['cardiomegaly', 'martian sign']\"")
    root = tmp_path / "pc"
    root.mkdir()
    (root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv").write_text(
        "\n".join([header, *rows]) + "\n"
    )
    out = tmp_path / "pc.parquet"
    build_index("padchest", root, out=out)
    result = cli_runner.invoke(app, ["describe", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"] == 31 and data["report"]["unknown_terms"] == {"martian sign": 1}
    assert data["labels"]["cardiomegaly"]["all"]["positive"] == 1
    assert sum(v["images"] for v in data["splits"].values()) == 31
    text = cli_runner.invoke(app, ["describe", str(out)])
    assert text.exit_code == 0 and "unknown terms (1): martian sign (1)" in text.stdout
    assert "split stratified" in text.stdout


def test_cli_describe_error_exit_2(cli_runner, tmp_path):
    result = cli_runner.invoke(app, ["describe", str(tmp_path / "none.parquet")])
    assert result.exit_code == 2 and "error:" in result.stderr and "Traceback" not in result.output
    (tmp_path / "bad.parquet").write_text("not parquet")
    result = cli_runner.invoke(app, ["describe", str(tmp_path / "bad.parquet")])
    assert result.exit_code == 2 and "error:" in result.stderr

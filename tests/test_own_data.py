"""docs/own-data.md, step by step: its mapping, verbatim, on a phantom copy of the layout it describes
(metadata.csv with patientid/view/finding/filename, images under images/), through index, describe,
prepare, train, evaluate and predict."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrbench.cli import app
from cxrbench.phantom.generate import generate

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
VIEWS = {"PA": "PA", "AP": "AP", "AP_SUPINE": "AP Supine"}

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def covid_layout(root: Path) -> pd.DataFrame:
    """The collection's layout, made from a phantom: cardiomegaly stands in for COVID-19."""
    truth = generate(root / "_src", "csv", 70, size=48, seed=5, quiet=True)
    (root / "images").mkdir(parents=True)
    rows = []
    for k, r in enumerate(truth.itertuples()):
        name = f"patient{k // 2:03d}-{k}.png"
        shutil.copy(root / "_src" / r.path, root / "images" / name)
        finding = "Pneumonia/Viral/COVID-19" if r.cardiomegaly == 1 else ("No Finding" if k % 3 else
                                                                         "Pneumonia/Bacterial")
        rows.append({"patientid": r.patient_id, "sex": r.sex, "age": r.age, "finding": finding,
                     "view": VIEWS[r.view], "filename": name, "modality": "X-ray"})
    rows.append({**rows[0], "view": "L", "filename": "lateral-1.png"})  # a lateral: dropped by --views
    rows.append({**rows[3], "modality": "CT", "view": "Axial", "filename": "ct-1.png"})  # keep_rows drops it
    rows.append(dict(rows[2]))  # listed twice: duplicates: keep_first keeps the first row
    rows.append({**rows[1], "filename": "not-there.png"})  # listed but never copied
    shutil.copy(root / "images" / rows[0]["filename"], root / "images" / "lateral-1.png")
    shutil.rmtree(root / "_src")
    df = pd.DataFrame(rows)
    df.to_csv(root / "metadata.csv", index=False)
    return df


def test_the_walkthrough_runs_as_written(tmp_path, cli_runner):
    text = DOC.read_text(encoding="utf-8")
    mapping = re.search(r"```yaml\n(# covid\.yaml.*?)```", text, re.S).group(1)
    assert "cxrbench index --dataset csv --root /data/covid --mapping covid.yaml" in text
    root = tmp_path / "covid"
    meta = covid_layout(root)
    (tmp_path / "covid.yaml").write_text(mapping)
    index = tmp_path / "covid.parquet"
    args = ["index", "--dataset", "csv", "--root", str(root), "--mapping", str(tmp_path / "covid.yaml"),
            "--out", str(index), "--split-fractions", "0.7,0.1,0.2", "--split-seed", "0"]
    first = cli_runner.invoke(app, args)  # the missing image is found at index time, with the fix
    assert "1 of" in first.stderr and "--drop-missing" in first.stderr, first.output
    result = cli_runner.invoke(app, [*args, "--drop-missing"])
    assert result.exit_code == 0, result.output
    df = pd.read_parquet(index)
    kept = meta[(meta["modality"] == "X-ray") & (meta["view"] != "L") & (meta["filename"] != "not-there.png")]
    kept = kept.drop_duplicates("filename")
    names = set(df["path"].str.rsplit("/", n=1).str[-1])
    assert len(df) == len(kept) == len(meta) - 4 and not {"lateral-1.png", "ct-1.png"} & names
    assert set(df["split"]) == {"train", "val", "test"}
    assert df["covid_19"].sum() == (kept["finding"] == "Pneumonia/Viral/COVID-19").sum()
    warned = result.stderr
    assert "left out by the mapping's row filters" in warned and "duplicates: keep_first" in warned
    described = cli_runner.invoke(app, ["describe", str(index)])
    assert described.exit_code == 0 and "covid_19" in described.output
    assert "missing" in described.output.lower() and "LATERAL" in described.output

    cache = tmp_path / "cache"
    result = cli_runner.invoke(app, ["prepare", "--index", str(index), "--root", str(root), "--out",
                                     str(cache),
                                     "--size", "32", "--workers", "1", "-q"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    result = cli_runner.invoke(app, ["train", "--cache", str(cache), "--init", "random-vit-test", "--out",
                                     str(run), "--lr", "1e-3", "--epochs", "2", "--batch-size", "16",
                                     "--workers", "0", "-q"])
    assert result.exit_code == 0, result.output
    result = cli_runner.invoke(app, ["evaluate", str(run), "--bootstrap", "50", "-q"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "new.csv"
    result = cli_runner.invoke(app, ["predict", str(run), str(root / "images"), "--out", str(out),
                                     "--skip-bad", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    pred = pd.read_csv(out)
    assert len(pred) == len(list((root / "images").iterdir())) and np.isfinite(pred["p_covid_19"]).all()

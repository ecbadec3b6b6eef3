"""Before training: the dry run's power lines (study.power) from the config's `power:` section and the
index's test split."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrbench.index.schema import write_index
from cxrbench.stats.power import min_detectable_difference, patients_needed
from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan
from cxrbench.study.power import planning_lines
from cxrbench.study.runner import describe_plan

CONFIG = """\
name: plan
datasets:
  a: {adapter: nih, root: data/a}
  b: {adapter: nih, root: data/b}
inits: [random-vit-test]
power: {difference: 0.04, auroc: 0.85, correlation: 0.6, prevalence: 0.2}
"""


def test_power_lines_before_and_after_indexing(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(CONFIG)
    study = load_study(path)
    lines = planning_lines(build_plan(study))
    need = patients_needed(0.04, 0.85, 0.2, 0.6)
    assert "reference AUROC 0.85, correlation 0.6; planned difference 0.04" in lines[0]
    assert lines[1] == (f"  a: not indexed yet; a difference of 0.04 needs {need:,} test patients at "
                        "prevalence 0.2 (one image each)")
    n = 300
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.1).astype(np.float32)
    df = pd.DataFrame({"image_id": [f"i{k}" for k in range(n)],
                       "patient_id": [f"p{k // 2}" for k in range(n)],
                       "study_id": None, "path": [f"x{k}.png" for k in range(n)], "view": "PA",
                       "split": np.where(np.arange(n) < 200, "test", "train"), "dataset": "nih", "sex": "F",
                       "age": 50.0, "cardiomegaly": y})
    index = study.layout.index_file("a")
    index.parent.mkdir(parents=True)
    write_index(df, index, ["cardiomegaly"])
    text = describe_plan(build_plan(study))
    test = y[:200]
    pos, neg = int(test.sum()), int((test == 0).sum())
    mdd = min_detectable_difference(0.85, pos, neg, 0.6)
    need = patients_needed(0.04, 0.85, pos / 200, 0.6, images_per_patient=2.0)
    assert f"  a/cardiomegaly: {pos} positive / {neg} negative test images: detects {mdd:.3f}; 0.04 needs " \
           f"{need:,} test patients" in text
    assert "  b: not indexed yet" in text

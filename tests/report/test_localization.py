"""report.localization and the "Right for the right reasons?" section: saliency scored against the
regions beside chance, init against init, rendered from the study's analyses."""

from pathlib import Path

import pandas as pd

from cxrbench.evaluate.localization_stats import ROW_COLUMNS, compare_localization, summarize_localization
from cxrbench.report.localization import localization_table, localization_tests_table, metric_label
from cxrbench.report.markdown import table_md
from cxrbench.report.write import write_report

from .test_report import synthetic


def rows(values: dict[str, list[float]]) -> pd.DataFrame:
    out = [(f"i{i}", f"p{i}", f, m, v, 0.25, 0.25) for f, vs in values.items() for i, v in enumerate(vs)
           for m in ("pointing", "iou@0.5")]
    return pd.DataFrame(out, columns=list(ROW_COLUMNS))


def keyed(table: pd.DataFrame, init: str, dataset: str = "vindr") -> pd.DataFrame:
    for k, v in reversed({"dataset": dataset, "recipe": "r224", "adaptation": "full", "seed": 0,
                          "init": init}.items()):
        table.insert(0, k, v)
    return table.assign(method="gradcam", hit_iou=0.1)


def analyses():
    good = rows({"pneumothorax": [1.0] * 20, "cardiomegaly": [1.0] * 20})
    poor = rows({"pneumothorax": [0.0] * 20, "cardiomegaly": [1.0, 0.0] * 10})
    summary = pd.concat([keyed(summarize_localization(good, n_resamples=100), "dinov2"),
                         keyed(summarize_localization(poor, n_resamples=100), "imagenet")], ignore_index=True)
    tests = compare_localization({"dinov2": good, "imagenet": poor}, "imagenet", n_resamples=100)
    for k, v in reversed({"dataset": "vindr", "recipe": "r224", "adaptation": "full", "seed": 0}.items()):
        tests.insert(0, k, v)
    return summary, tests


def test_tables_mark_above_and_below_chance_and_name_the_metrics():
    summary, tests = analyses()
    t = localization_table(summary, caption="vindr")
    assert t.header == ["init", "finding", "images", "pointing game", "chance", "IoU at 0.5", "chance"]
    by = {(r[0].text, r[1].text): r for r in t.rows}
    assert by[("dinov2", "pneumothorax")][3].style == "sig" and by[("imagenet", "pneumothorax")][3].style == \
        "sigworse"
    assert by[("dinov2", "mean")][1].style == "mean" and by[("dinov2", "mean")][4].text == "0.250"
    assert "reaches 0.1" in t.notes[0] and "Grad-CAM" in t.notes[0]
    pairs = localization_tests_table(tests, caption="pairs")
    assert [r[2].text for r in pairs.rows] == ["mean", "mean"]  # the mean over findings of each metric
    assert pairs.rows[0][4].style == "sig" and "| dinov2 | imagenet | mean |" in table_md(pairs)
    assert metric_label("hit@0.25") == "hit at 0.25" and metric_label("energy") == "energy inside"


def test_the_reasons_section_shows_them_beside_the_gallery(tmp_path):
    res = synthetic()
    res.analyses.localization, res.analyses.localization_tests = analyses()
    paths = write_report(res, tmp_path)
    md = Path(paths["markdown"]).read_text()
    assert "## Right for the right reasons?" in md
    assert "vindr: is the saliency on the finding?" in md and "vindr: localization, init against init" in md
    html = Path(paths["html"]).read_text()
    assert "pointing game" in html and "cxr14: is the saliency" not in html

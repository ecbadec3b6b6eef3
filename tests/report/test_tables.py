"""Per-finding tables: the AUROC's real n, small-sample marks, operating points; forest colours."""

from __future__ import annotations

import numpy as np

from cxrbench.report import plots, tables
from cxrbench.report.results import MEAN

from .test_report import synthetic


def small_study():
    res = synthetic(seed=1)
    t = res.table
    few = (t["dataset"] == "vindr") & (t["finding"] == "pneumothorax")
    t.loc[few, "n_positive"] = 4
    edge = few & (t["init"] == "mimic")
    t.loc[edge, "auroc_hi"] = 1.0
    t["sensitivity"], t["specificity"] = 0.8, 0.7
    return res


def test_finding_table_shows_labelled_images_positives_negatives_and_small_sample_marks():
    res = small_study()
    ft = tables.finding_table(res, "vindr", "r224", 0)
    assert ft.header[1] == "test images\n(pos / neg)"
    rows = {r[0].text: r for r in ft.rows}
    assert rows["cardiomegaly"][1].text == "400 (40 / 360)" and rows[MEAN][1].text == "400"
    assert not any(c.text.endswith(tables.SMALL) for c in rows["cardiomegaly"][2:5])
    marked = rows["pneumothorax"][2:5]
    assert all(c.text.endswith(tables.SMALL) for c in marked)
    assert "4 positive test image(s), fewer than 10" in marked[0].title
    assert "its CI reaches 1" in marked[2].title and "its CI reaches 1" not in marked[0].title
    warnings = tables.small_sample_warnings(res, "vindr", "r224", 0)
    assert warnings == [
        "pneumothorax: 4 positive test image(s), fewer than 10; its AUROC and CI are unreliable",
        "pneumothorax: the CI of mimic reaches 0 or 1; read it as a lower bound on the uncertainty",
    ]
    assert tables.small_sample_warnings(res, "cxr14", "r224", 0) == []


def test_operating_table_gives_sensitivity_and_specificity_per_init():
    res = small_study()
    ot = tables.operating_table(res, "vindr", "r224", 0)
    assert "validation split's Youden threshold" in ot.caption
    assert [c.text for c in ot.rows[0][1:]] == ["0.80 / 0.70"] * 3
    res.table = res.table.drop(columns=["sensitivity", "specificity"])
    assert tables.operating_table(res, "vindr", "r224", 0) is None


def test_forest_colours_only_significant_differences():
    res = synthetic(seed=2)
    rows = res.table[res.table["init"] != res.reference].to_dict(orient="records")
    flags = [plots.significant(res, r) for r in rows]
    assert flags == [bool(np.isfinite(r["p_adjusted"]) and r["p_adjusted"] < res.alpha) for r in rows]
    assert any(flags) and not all(flags)
    assert plots.significant(res, {"p_adjusted": None}) is False
    assert plots.forest_figure(res, "r224", 0).startswith(b"\x89PNG")


def test_the_main_table_mean_carries_the_mark_of_its_small_findings():
    res = small_study()
    mt = tables.main_table(res, "r224", 0)
    rows = {r[0].text: r for r in mt.rows}
    assert all(c.text.endswith(tables.SMALL) for c in rows["vindr"][3:])  # pneumothorax: 4 positives
    assert "averages 1 finding(s) with fewer than 10" in rows["vindr"][3].title
    assert not any(c.text.endswith(tables.SMALL) for c in rows["cxr14"][3:])
    assert any(n.startswith(tables.SMALL) for n in mt.notes)
    ft = {r[0].text: r for r in tables.finding_table(res, "vindr", "r224", 0).rows}
    assert ft[MEAN][2].text.endswith(tables.SMALL)


def test_results_that_are_not_significant_show_the_difference_the_test_set_could_detect():
    res = synthetic(seed=2)
    t = res.table
    t["min_detectable_diff"] = 0.071
    t.loc[(t["finding"] == MEAN) & (t["init"] == "mimic"), "p_adjusted"] = 0.3
    ns = (t["init"] != res.reference) & (t["p_adjusted"] >= res.alpha)
    sig = (t["init"] != res.reference) & (t["p_adjusted"] < res.alpha)
    assert ns.any() and sig.any()
    mt = tables.main_table(res, "r224", 0)
    lines = [n for n in mt.notes if "not significant" in n]
    assert lines and all("detects 0.071 or more with 80% power" in n for n in lines)
    assert len(lines) == int((ns & (t["finding"] == MEAN)).sum())
    ft = tables.finding_table(res, "vindr", "r224", 0)
    p_cells = [c for r in ft.rows for c in r[2 + len(res.inits):] if c.text]
    assert any("detects \u22650.071" in c.text for c in p_cells)
    assert all("detects" not in c.text for c in p_cells if c.style in ("sig", "sigworse"))
    assert any("80% power" in n for n in ft.notes)

"""report.subgroups: subgroup, gap and underdiagnosis tables from subgroup_metrics' DataFrames."""

import numpy as np

from cxrbench.report.html import table_html
from cxrbench.report.markdown import table_md
from cxrbench.report.subgroups import fmt_ci, frames, gap_table, subgroup_table, underdiagnosis_table
from cxrbench.stats import bootstrap as bs
from cxrbench.stats.subgroups import subgroup_metrics


def result():
    rng = np.random.default_rng(0)
    n = 400
    sex = rng.choice(["F", "M"], n)
    view = np.where(np.arange(n) < 6, "LATERAL", rng.choice(["PA", "AP"], n))
    y = (rng.random((n, 2)) < [0.3, 0.5]).astype(float)
    s = np.where(sex[:, None] == "F", 2.0, 0.5) * (2 * y - 1) + rng.normal(size=(n, 2))
    r = bs.make_resamples([f"i{i:04d}" for i in range(n)], n_resamples=50, seed=0)
    return subgroup_metrics(
        y, s, ["cardiomegaly", "no_finding"], {"sex": sex, "view": view}, r, np.array([0.0, 0.0])
    )


def test_subgroup_table_marks_too_few_rows_and_renders():
    res = result()
    t = subgroup_table(res.table, "cardiomegaly")
    assert [c.text for c in t.rows[0][:2]] == ["sex", "F"] and len(t.rows) == 5
    lateral = next(row for row in t.rows if row[1].text == "LATERAL")
    assert lateral[4].style == "muted" and "too few" in lateral[8].text
    f = res.table[(res.table["subgroup"] == "F") & (res.table["finding"] == "cardiomegaly")].iloc[0]
    assert t.rows[0][4].text == fmt_ci(f["auroc"], f["auroc_lo"], f["auroc_hi"])
    html, md = table_html(t), table_md(t)
    assert "LATERAL" in html and 'class="muted"' in html and "| sex | F |" in md


def test_gap_and_underdiagnosis_tables():
    res = result()
    gaps = gap_table(res.gaps, "auroc", alpha=0.05)
    sex = next(row for row in gaps.rows if row[0].text == "cardiomegaly" and row[1].text == "sex")
    assert sex[2].text.startswith("F (") and sex[6].style == "sig"  # F was drawn with the stronger signal
    under = underdiagnosis_table(res.underdiagnosis)
    assert {row[1].text for row in under.rows} == {"F", "M", "AP", "PA", "LATERAL"}
    assert "Seyyed-Kalantari" in under.notes[0]
    table, g, u = frames(res.to_dict())
    assert len(table) == len(res.table) and len(g) == len(res.gaps) and len(u) == len(res.underdiagnosis)


def test_fmt_ci():
    assert fmt_ci(0.8421, 0.8, 0.9) == "0.842 (0.800\u20130.900)"
    assert fmt_ci(0.01, -0.02, 0.04, signed=True) == "+0.010 (-0.020\u2013+0.040)"
    assert fmt_ci(float("nan")) == "n/a" and fmt_ci(0.5, None, None) == "0.500"

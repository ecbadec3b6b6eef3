"""report.shortcut: image models versus the shortcut baseline, with the warning lines."""

import numpy as np
import pandas as pd

from cxrbench.evaluate.shortcut import shortcut_check
from cxrbench.report.markdown import table_md
from cxrbench.report.shortcut import shortcut_table, warning_lines


def test_rows_and_warnings():
    rng = np.random.default_rng(0)
    n = 300
    y = (rng.random(n) < 0.4).astype(float)
    base = pd.DataFrame(
        {
            "image_id": [f"i{i:03d}" for i in range(n)],
            "patient_id": [f"p{i:03d}" for i in range(n)],
            "y_covid": y,
            "p_covid": 0.3 * y + rng.random(n),
        }
    )
    good = base.assign(p_covid=2 * y + rng.random(n))
    check = pd.concat(
        [
            shortcut_check(good, base, name="dino", n_resamples=100),
            shortcut_check(base.assign(p_covid=base["p_covid"] * 0.5), base, name="copy", n_resamples=100),
        ],
        ignore_index=True,
    )
    t = shortcut_table(check)
    assert [r[0].text for r in t.rows] == ["dino", "dino", "copy", "copy"]
    assert t.rows[0][6].text == "yes" and t.rows[2][6].text == "NO" and t.rows[2][6].style == "sigworse"
    lines = warning_lines(check)
    assert len(lines) == 1 and lines[0].startswith("Warning: copy does not beat")  # once per init
    assert "1 of 1 finding(s) (covid) and on the mean AUROC" in lines[0]
    assert lines[0] in t.notes and "| copy | covid |" in table_md(t)

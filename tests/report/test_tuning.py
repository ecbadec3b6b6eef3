"""report.tuning: "Does the ranking survive tuning?" from synthetic results of both recipes."""

from __future__ import annotations

import pandas as pd

from cxrbench.report import tuning as RT
from cxrbench.report import write_report
from cxrbench.report.results import MEAN

from .test_report import synthetic


def with_tuning():
    res = synthetic(seed=4, datasets=("vindr",), inits=("dinov2", "imagenet", "mimic"))
    t = res.table.copy()
    t["tuning"] = "default"
    tuned = t.copy()
    tuned["tuning"] = "tuned"
    tuned.loc[tuned["init"] == "imagenet", "auroc"] += 0.3  # the reference wins once tuned
    res.table = pd.concat([t, tuned], ignore_index=True)
    res.axes = {"tuning": ["default", "tuned"]}
    res.tuned = pd.DataFrame(
        [
            {
                "dataset": "vindr",
                "recipe": "r224",
                "init": i,
                "adaptation": "full",
                "tuned_lr": lr,
                "tuned_weight_decay": 0.05,
                "value": 0.8,
                "strategy": "grid",
                "trial_epochs": 8,
                "n_trials": 4,
            }
            for i, lr in (("dinov2", 1e-5), ("imagenet", 1e-3), ("mimic", 3e-4))
        ]
    )
    res.tuning = pd.DataFrame(
        [
            {
                "dataset": "vindr",
                "recipe": "r224",
                "init": i,
                "adaptation": "full",
                "rung": 0,
                "epochs": 2,
                "order": k,
                "lr": lr,
                "weight_decay": wd,
                "val_mean_auroc": 0.7 + 0.01 * k + (0.05 if i == "imagenet" else 0),
                "chosen": k == 3,
            }
            for i in ("dinov2", "imagenet", "mimic")
            for k, (lr, wd) in enumerate([(1e-5, 0.0), (1e-5, 0.05), (1e-3, 0.0), (1e-3, 0.05)])
        ]
    )
    res.tuning_tests = pd.DataFrame(
        [
            {
                "dataset": "vindr",
                "recipe": "r224",
                "init": i,
                "adaptation": "full",
                "tuning_a": "tuned",
                "tuning_b": "default",
                "finding": MEAN,
                "diff": d,
                "diff_lo": d - 0.02,
                "diff_hi": d + 0.02,
                "p": p,
                "min_detectable_diff": 0.04,
            }
            for i, d, p in (("dinov2", 0.0, 0.9), ("imagenet", 0.3, 0.001), ("mimic", 0.0, 0.7))
        ]
    )
    return res


def test_the_table_sets_both_recipes_side_by_side_with_tests_ranks_and_choices():
    res = with_tuning()
    t = RT.tuning_table(res)
    rows = {r[2].text: r for r in t.rows}
    assert set(rows) == {"dinov2", "imagenet", "mimic"}
    img = rows["imagenet"]
    assert img[5].text.startswith("+0.300") and img[5].style == "sig"
    assert img[6].text.endswith("\u2192 1") and "lr 0.001, weight_decay 0.05" == img[7].text
    assert "detects \u22650.040" in rows["dinov2"][5].text and rows["dinov2"][5].style == ""


def test_a_changed_winner_is_named_with_its_test_and_not_alarmed_without_significance():
    res = with_tuning()
    ((style, line),) = RT.winner_lines(res)
    assert "the winner changes from" in line and "to imagenet (tuned)" in line
    assert (style == "sigworse") == ("not significant" not in line)
    same = with_tuning()
    same.table.loc[same.table["init"] == "imagenet", "auroc"] -= 0.3
    same.table.loc[(same.table["tuning"] == "default") & (same.table["init"] == "imagenet"), "auroc"] += 0.3
    assert "wins at the default and at the tuned recipe" in RT.winner_lines(same)[0][1]


def test_the_figure_and_the_written_section(tmp_path):
    res = with_tuning()
    assert RT.tuning_figure(res).startswith(b"\x89PNG")
    paths = write_report(res, tmp_path)
    md = paths["markdown"].read_text()
    assert "## Does the ranking survive tuning?" in md and "figures/tuning.png" in md
    assert "Tuning: 12 trials over 3 arm(s) (grid), 24 trial-epochs" in md
    assert (tmp_path / "figures" / "tuning.png").is_file()
    assert RT.tuning_table(synthetic(seed=1)) is None  # no tuning: no section

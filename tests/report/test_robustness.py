"""The report across conditions and seeds: pooled main table, rankings per condition, curves, recipes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrbench.report import robustness as R
from cxrbench.report import tables, write_report
from cxrbench.report.results import MEAN, POOLED

from .test_report import synthetic


def with_axes():
    res = synthetic(seed=3, datasets=("vindr", "cxr14"), inits=("dinov2", "imagenet", "mimic"))
    t = res.table.copy()
    t["label_fraction"], t["label_noise"] = 1.0, 0.0
    low = t.copy()
    low["label_fraction"] = 0.25
    low["auroc"] = low["auroc"] - 0.1
    flip = (low["dataset"] == "cxr14") & (low["init"] == "imagenet")  # the reference wins at 25% on cxr14
    low.loc[flip, "auroc"] += 0.5
    pooled = t.copy()
    pooled["seed"], pooled["n_seeds"], pooled["seed_sd"] = POOLED, 3, 0.004
    res.table = pd.concat([t, low, pooled], ignore_index=True)
    res.seeds = [0]
    res.axes = {"label_fraction": [0.25, 1.0]}
    res.recipe_tests = pd.DataFrame([{"dataset": "vindr", "init": "dinov2", "recipe_a": "r512",
                                      "recipe_b": "r224", "finding": MEAN, "diff": 0.02, "diff_lo": 0.01,
                                      "diff_hi": 0.03, "p": 0.001, "p_adjusted": 0.001, "n_seeds": 3}])
    return res


def test_pooled_rows_make_one_results_section_with_seed_sd():
    res = with_axes()
    assert res.matrix_keys() == [("r224", POOLED)] and res.pooled
    mt = tables.main_table(res, "r224", POOLED)
    assert "pooled over 3 seeds" in mt.caption and "two-level bootstrap" in mt.notes[0]
    assert all(" sd 0.004" in c.text for r in mt.rows for c in r[3:])
    assert len(res.default_condition()) == 2 * len(res.table) // 3  # the per-seed and pooled rows at 100%


def test_ranking_table_shows_where_the_winner_changes_and_the_supporting_test():
    res = with_axes()
    rt = R.ranking_table(res)
    by = {(r[0].text, r[1].text): r for r in rt.rows}
    assert set(by) == {("vindr", "all labels"), ("vindr", "label fraction 0.25"), ("cxr14", "all labels"),
                       ("cxr14", "label fraction 0.25")}
    default = by[("vindr", "all labels")]
    assert default[2].text.startswith("mimic") and default[3].text == "–"
    assert by[("vindr", "label fraction 0.25")][3].text == "same winner"
    changed = by[("cxr14", "label fraction 0.25")][3]
    assert changed.text.startswith("winner changes: mimic -> imagenet")
    assert by[("cxr14", "label fraction 0.25")][4].text.startswith("mimic - imagenet:")  # the runner-up
    assert by[("vindr", "all labels")][4].text.startswith("mimic - imagenet: +")


def test_axis_figure_and_recipe_table_and_the_written_report(tmp_path):
    res = with_axes()
    assert R.axis_figure(res, "label_fraction").startswith(b"\x89PNG")
    assert R.axis_figure(res, "label_noise") is None  # one value: no curve
    recipes = R.recipe_table(res)
    assert recipes.rows[0][2].text == "r512 - r224" and recipes.rows[0][3].style == "sig"
    paths = write_report(res, tmp_path)
    md = paths["markdown"].read_text()
    assert "## Does the winner hold?" in md and "figures/axis-label_fraction.png" in md
    df = pd.read_csv(paths["csv"])
    assert {"label_fraction", "label_noise", "n_seeds", "seed_sd"} <= set(df.columns)
    assert set(df["seed"].astype(str)) == {"0", POOLED} and set(df["label_fraction"]) == {0.25, 1.0}
    assert np.isfinite(df.loc[df["seed"].astype(str) == POOLED, "seed_sd"]).all()


def with_adaptations():
    res = synthetic(seed=4, datasets=("vindr",), inits=("dinov2", "imagenet"))
    t = res.table.copy()
    t["adaptation"], t["label_fraction"], t["label_noise"] = "full", 1.0, 0.0
    knn = t.copy()
    knn["adaptation"] = "knn"
    knn["auroc"] = knn["auroc"] - 0.05
    low = pd.concat([t, knn]).assign(label_fraction=0.1)
    low["auroc"] = low["auroc"] - 0.1
    lin = t[t["init"] == "dinov2"].copy()
    lin["adaptation"] = "linear"  # only one init was probed
    res.table = pd.concat([t, knn, lin, low], ignore_index=True)
    res.seeds = [0]
    res.axes = {"adaptation": ["full", "linear", "knn"], "label_fraction": [0.1, 1.0]}
    res.adaptation_tests = pd.DataFrame([
        {"dataset": "vindr", "recipe": "r224", "init": "dinov2", "adaptation_a": "knn",
         "adaptation_b": "full", "finding": MEAN, "diff": -0.05, "diff_lo": -0.07, "diff_hi": -0.03,
         "p": 0.002, "p_adjusted": 0.004, "n_seeds": 1}])
    return res


def test_adaptation_table_sets_methods_side_by_side_with_their_tests(tmp_path):
    res = with_adaptations()
    at = R.adaptation_table(res)
    assert at.header == ["dataset", "init", "full", "linear", "knn", "best method"]
    rows = {r[1].text: r for r in at.rows}
    assert set(rows) == {"dinov2", "imagenet"}
    assert rows["imagenet"][3].text == "–"  # not probed: a dash, not a hole
    knn = rows["dinov2"][4]
    assert "vs full -0.050" in knn.text and "p 0.002" in knn.text and knn.style == "sigworse"
    assert rows["dinov2"][5].text == "full" and rows["imagenet"][5].text == "full"
    ranking = {r[1].text for r in R.ranking_table(res).rows}
    assert {"full fine-tuning, all labels", "adaptation knn", "adaptation linear",
            "adaptation knn, label fraction 0.1"} <= ranking
    assert R.axis_figure(res, "label_fraction").startswith(b"\x89PNG")
    assert R.axis_figure(res, "adaptation") is None  # methods are names, not a curve
    md = write_report(res, tmp_path)["markdown"].read_text()
    assert "Adaptation methods: mean AUROC per initialization and method" in md
    df = pd.read_csv(tmp_path / "results.csv")
    assert list(df.columns[:11]) == ["dataset", "init", "finding", "auroc", "auroc_lo", "auroc_hi",
                                     "p_vs_reference", "p_adjusted", "recipe", "seed", "adaptation"]
    assert set(df["adaptation"]) == {"full", "linear", "knn"}


def with_ladder():
    """zero-shot -> linear probe -> fine-tuning of a vision-language init at two label budgets; zero-shot
    ran once (all labels, no noise: it reads no training label)."""
    res = synthetic(seed=5, datasets=("vindr",), inits=("medsiglip", "dinov2"), reference="dinov2")
    t = res.table.copy()
    t["adaptation"], t["label_fraction"], t["label_noise"] = "full", 1.0, 0.0
    lin = t.assign(adaptation="linear", auroc=t["auroc"] - 0.03)
    low = pd.concat([t, lin]).assign(label_fraction=0.1)
    low["auroc"] = low["auroc"] - 0.1
    zs = t[t["init"] == "medsiglip"].assign(adaptation="zeroshot", auroc=0.61, auroc_lo=0.55, auroc_hi=0.67)
    res.table = pd.concat([t, lin, low, zs], ignore_index=True)
    res.seeds = [0]
    res.axes = {"adaptation": ["zeroshot", "linear", "full"], "label_fraction": [0.1, 1.0]}
    return res


def test_the_ladder_and_zero_shot_as_the_zero_label_point_of_the_curves(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = with_ladder()
    at = R.adaptation_table(res)
    assert at.header == ["dataset", "init", "zeroshot", "linear", "full", "best method"]
    rows = {r[1].text: r for r in at.rows}
    assert rows["medsiglip"][2].text.startswith("0.610") and rows["dinov2"][2].text == "–"
    assert any("zeroshot: text prompts" in n for n in at.notes)
    assert R.axis_figure(res, "label_fraction").startswith(b"\x89PNG")
    ct = R.condition_table(res)
    ct = ct[ct["dataset"] == "vindr"]
    fig, ax = plt.subplots()
    zero = ct[ct["adaptation"] == "zeroshot"]
    curves = ct[ct["adaptation"] != "zeroshot"]
    x0 = R._zero_label_points(ax, res, curves, zero, "label_fraction", "adaptation", ["linear", "full"])
    assert x0 == pytest.approx(0.1 / 3)
    star = [line for line in ax.get_lines() if line.get_marker() == "*"]
    assert len(star) == 1 and list(star[0].get_xdata()) == [x0] and list(star[0].get_ydata()) == [0.61]
    joins = [line for line in ax.get_lines() if line.get_marker() != "*" and len(line.get_xdata()) == 2]
    assert {tuple(line.get_xdata()) for line in joins} == {(x0, 0.1)}  # to each curve's smallest budget
    assert len(joins) == 2 and "medsiglip (zeroshot, 0 labels)" in ax.get_legend_handles_labels()[1]
    plt.close(fig)
    assert R.axis_figure(res, "label_noise") is None
    md = write_report(res, tmp_path)["markdown"].read_text()
    assert "| zeroshot | linear | full |" in md.replace("  ", " ")


def test_a_changed_winner_is_alarm_red_only_when_its_test_is_significant():
    res = with_axes()
    t = res.table
    low = (t["label_fraction"] == 0.25) & (t["dataset"] == "cxr14")
    t.loc[low, "p_adjusted"], t.loc[low, "min_detectable_diff"] = 0.4, 0.052
    cell = {(r[0].text, r[1].text): r for r in R.ranking_table(res).rows}[("cxr14", "label fraction 0.25")]
    assert cell[3].text == "winner changes: mimic -> imagenet (not significant)" and cell[3].style == "muted"
    assert "not significant, detects \u22650.052 at 80% power" in cell[4].text
    t.loc[low, "p_adjusted"] = 0.001
    cell = {(r[0].text, r[1].text): r for r in R.ranking_table(res).rows}[("cxr14", "label fraction 0.25")]
    assert cell[3].text == "winner changes: mimic -> imagenet" and cell[3].style == "sigworse"


def test_a_deterministic_arm_is_shown_as_one_run_and_each_sd_says_what_it_covers():
    res = with_axes()
    t = res.table
    pooled = t["seed"].astype(str) == POOLED
    t["seed_sd_covers"] = "fine-tuning (head initialization, data order, augmentation); the pretrained " \
                          "weights are fixed"
    knn = pooled & (t["init"] == "dinov2")
    t.loc[knn, "deterministic"], t.loc[knn, "n_seeds"], t.loc[knn, "seed_sd"] = True, 1, np.nan
    mt = tables.main_table(res, "r224", POOLED)
    cells = {r[0].text: r for r in mt.rows}["vindr"]
    dino = res.inits.index("dinov2") + 3
    assert cells[dino].text.split(" *")[0].endswith("(deterministic)") and " sd " not in cells[dino].text
    assert "pooled over 3 seeds" in mt.caption  # the deterministic arm's one run does not count
    assert "(deterministic): a method whose runs do not depend on the seed" in mt.notes[0]
    assert "The seed SD and CI cover: imagenet: fine-tuning" in mt.notes[0] and "dinov2:" not in mt.notes[0]

"""results.csv read back as a typed table (report/results_table.py)."""

from __future__ import annotations

import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.report.results import RESULT_COLUMNS
from cxrbench.report.results_table import RESULT_DTYPES, load_results


def write_results(path, extra: dict | None = None) -> pd.DataFrame:
    """A results.csv as write_report writes it: per-seed rows, pooled rows, a subgroup row."""
    rows = []
    for seed in (0, 1, "pooled"):
        for init in ("dinov2", "random"):
            for finding in ("effusion", "mean"):
                rows.append({"dataset": "nih", "init": init, "finding": finding, "auroc": 0.8,
                             "auroc_lo": 0.7, "auroc_hi": 0.9, "recipe": "r224", "seed": seed,
                             "adaptation": "full",
                             "label_fraction": 1.0, "label_noise": 0.0, "n": 120, "n_positive": 30,
                             "n_seeds": 2 if seed == "pooled" else None})
    rows.append({**rows[0], "subgroup": "sex=F"})
    df = pd.DataFrame(rows)
    for c in RESULT_COLUMNS:
        if c not in df.columns:
            df[c] = None
    df = df[list(RESULT_COLUMNS)].assign(**(extra or {}))
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, float_format="%.6g")
    return df


def test_seed_is_an_integer_and_pooled_a_flag(tmp_path):
    write_results(tmp_path / "report" / "results.csv")
    df = load_results(tmp_path)  # the study folder: report/results.csv inside
    assert str(df["seed"].dtype) == "Int64" and df["pooled"].dtype == bool
    assert list(df.columns[:11]) == [*RESULT_COLUMNS[:10], "pooled"]
    assert df.loc[df["pooled"], "seed"].isna().all() and set(df.loc[~df["pooled"], "seed"]) == {0, 1}
    assert (df["pooled"].sum(), len(df)) == (4, 13)
    for col, kind in RESULT_DTYPES.items():
        assert str(df[col].dtype) == kind, col
    assert df["auroc"].tolist() == [0.8] * 13 and df["dataset"].iloc[0] == "nih"
    assert df["subgroup"].isna().sum() == 12 and df["subgroup"].dropna().tolist() == ["sex=F"]
    # the report folder and the file itself work too
    assert load_results(tmp_path / "report").equals(df)
    assert load_results(tmp_path / "report" / "results.csv").equals(df)


def test_the_text_and_flag_columns_of_tuning_and_deterministic_arms_keep_their_values(tmp_path):
    covers = "fine-tuning (head initialization, data order, augmentation); the pretrained weights are fixed"
    write_results(tmp_path / "results.csv", extra={"tuning": "tuned", "seed_sd_covers": covers,
                                                   "deterministic": True})
    df = load_results(tmp_path / "results.csv")
    assert df["tuning"].tolist() == ["tuned"] * 13 and df["seed_sd_covers"].iloc[0] == covers
    assert str(df["deterministic"].dtype) == "boolean" and df["deterministic"].all()
    write_results(tmp_path / "results.csv", extra={"deterministic": False})
    assert not load_results(tmp_path / "results.csv")["deterministic"].any()


def test_columns_a_later_version_adds_keep_an_inferred_type(tmp_path):
    write_results(tmp_path / "results.csv", extra={"new_number": 1.5, "new_text": "x"})
    df = load_results(tmp_path / "results.csv")
    assert df["new_number"].dtype == "float64" and df["new_text"].tolist() == ["x"] * 13


def test_not_a_results_file_is_one_error(tmp_path):
    with pytest.raises(InputError, match="no results.csv found"):
        load_results(tmp_path)
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="missing column"):
        load_results(tmp_path)
    write_results(tmp_path / "bad" / "results.csv")
    text = (tmp_path / "bad" / "results.csv").read_text().replace(",pooled,", ",poled,", 1)
    (tmp_path / "bad" / "results.csv").write_text(text)
    with pytest.raises(InputError, match="seed 'poled' is neither a number nor 'pooled'"):
        load_results(tmp_path / "bad")

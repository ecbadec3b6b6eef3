import numpy as np
import pandas as pd
import pytest

from cxrbench.common.errors import InputError
from cxrbench.index.schema import check_no_leakage, read_index, validate_index, write_index
from cxrbench.index.sources.tables import at_row


def _frame():
    return pd.DataFrame({
        "image_id": ["a", "b", "c"], "patient_id": ["p1", "p1", "p2"], "study_id": [None, None, None],
        "path": ["x/a.png", "x/b.png", "c.png"], "view": ["PA", "AP", "PA"],
        "split": ["train", "train", "test"],
        "dataset": ["nih"] * 3, "cardiomegaly": [1.0, 0.0, np.nan],
    })


def test_roundtrip_keeps_findings(tmp_path):
    df = _frame()
    validate_index(df, ["cardiomegaly"])
    write_index(df, tmp_path / "i.parquet", ["cardiomegaly"])
    back, findings = read_index(tmp_path / "i.parquet")
    assert findings == ["cardiomegaly"]
    assert back["cardiomegaly"].dtype == np.float32
    assert np.isnan(back["cardiomegaly"].iloc[2])


@pytest.mark.parametrize("column,value,match", [
    ("view", "SIDE", "column 'view'"),
    ("split", "validate", "column 'split'"),
    ("path", "../up.png", "escapes"),
    ("cardiomegaly", -1.0, "finding 'cardiomegaly'"),
    ("image_id", "a", "appears 2 times"),
])
def test_validate_names_the_problem(column, value, match):
    df = _frame()
    df.loc[1, column] = value
    with pytest.raises(InputError, match=match):
        validate_index(df, ["cardiomegaly"])


def test_leakage_names_patient():
    df = _frame()
    df.loc[1, "split"] = "test"
    with pytest.raises(InputError, match=r"patient 'p1' is in splits test\+train"):
        check_no_leakage(df)


def test_rows_follow_the_one_convention(tmp_path):
    """1-based everywhere: a row read from a text file is named by the file's own line (header = line 1),
    a row of an index by its position counted from 1 and its image id."""
    df = _frame()
    df.loc[1, "path"] = "../up.png"
    with pytest.raises(InputError) as err:
        validate_index(df, ["cardiomegaly"], where="x.parquet")
    assert f"x.parquet, index row 2 (image_id {df['image_id'].iloc[1]!r})" in err.value.one_line()
    csv = tmp_path / "labels.csv"
    csv.write_text("a,b\n" + "\n".join(f"{i},{i}" for i in range(len(df))) + "\n")
    with pytest.raises(InputError, match=r"labels.csv, line 3: path '\.\./up\.png' is absolute or escapes"):
        validate_index(df, ["cardiomegaly"], where=str(csv), locate=lambda label: at_row(csv, label))

import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.validation import check_choice, check_columns, closest


def test_one_line_has_where_what_fix():
    err = InputError("column 'x' missing\n in file", where="a.csv", fix="add it")
    assert err.one_line() == "a.csv: column 'x' missing in file. Fix: add it"
    assert "\n" not in str(err)


def test_check_choice_suggests_closest():
    assert check_choice("--resize", "pad", ["stretch", "pad", "crop"]) == "pad"
    with pytest.raises(InputError, match=r"did you mean 'stretch'"):
        check_choice("--resize", "strech", ["stretch", "pad", "crop"])
    assert closest("zzz", ["stretch"]) is None


def test_check_columns_names_every_missing_column():
    with pytest.raises(InputError) as info:
        required = ["Image Index", "Finding Labels", "View Position"]
        check_columns(["Image Index", "Patient ID"], required, "x.csv")
    msg = info.value.one_line()
    assert "'Finding Labels'" in msg and "'View Position'" in msg and msg.startswith("x.csv:")

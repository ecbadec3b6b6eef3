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


def test_input_error_is_a_value_error_with_its_one_line():
    err = InputError("bad", where="x", fix="do y")
    assert isinstance(err, ValueError) and str(err) == "x: bad. Fix: do y"
    with pytest.raises(ValueError, match="^x: bad"):  # a notebook's `except ValueError` catches it
        raise err


def test_spell_names_the_flag_on_the_command_line_and_the_parameter_from_python():
    from cxrbench.common.errors import command_line, on_command_line, spell

    assert not on_command_line()
    assert spell("--split-seed") == "split_seed" and spell("--overwrite") == "overwrite=True"
    assert spell("--bootstrap 0", "n_resamples=0") == "n_resamples=0" and spell("NAME", "name") == "name"
    with command_line():
        assert on_command_line()
        assert spell("--split-seed") == "--split-seed" and spell("--overwrite") == "--overwrite"
        assert spell("--bootstrap 0", "n_resamples=0") == "--bootstrap 0"
        with pytest.raises(InputError, match="^--resize got 'strech'"):
            check_choice("--resize", "strech", ["stretch", "pad", "crop"])
    assert not on_command_line()  # restored, also after an error inside
    with pytest.raises(InputError, match="^resize got 'strech'"):
        check_choice("--resize", "strech", ["stretch", "pad", "crop"])


def test_warn_points_at_the_callers_line_and_filters_by_category():
    import warnings

    import numpy as np

    from cxrbench.common.errors import CxrbenchWarning
    from cxrbench.stats.metrics import UndefinedMetricWarning, auroc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        auroc(np.ones(4), np.arange(4.0))  # one class: NaN plus a warning, raised deep in cxrbench
    assert len(caught) == 1 and caught[0].category is UndefinedMetricWarning
    assert caught[0].filename == __file__  # this line, not cxrbench's
    assert issubclass(UndefinedMetricWarning, CxrbenchWarning)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=CxrbenchWarning)  # what a notebook writes
        auroc(np.ones(4), np.arange(4.0))
    assert caught == []

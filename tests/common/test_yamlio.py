"""common.yamlio: the config-section reader shared by train and pretrain configs."""

from __future__ import annotations

import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.yamlio import load_config_section


def test_a_config_section_from_a_run_config_or_a_flat_file(tmp_path):
    run = tmp_path / "config.yaml"
    run.write_text("train:\n  lr: 0.001\n  init: x\ncache:\n  path: /c\n")
    assert load_config_section(run, "train", "train config") == {"lr": 0.001, "init": "x"}
    assert load_config_section(run, "pretrain", "pretrain config")["train"] == {"lr": 0.001, "init": "x"}
    flat = tmp_path / "flat.yaml"
    flat.write_text("epochs: 3\n")
    assert load_config_section(flat, "train", "train config") == {"epochs": 3}
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(InputError, match="invalid YAML"):
        load_config_section(bad, "train", "train config")
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(InputError, match="not a mapping"):
        load_config_section(lst, "train", "train config")
    with pytest.raises(InputError, match="not found"):
        load_config_section(tmp_path / "nope.yaml", "train", "train config")
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"epochs: 3\n# caf\xe9\n")
    with pytest.raises(InputError, match="UTF-8") as err:
        load_config_section(latin, "pretrain", "pretrain config")
    assert "latin1.yaml" in err.value.one_line()  # the file is named, not just "a file"

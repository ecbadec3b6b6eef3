"""common.yamlio: the config-section reader shared by train and pretrain configs."""

from __future__ import annotations

import pytest

from cxrbench.common.errors import InputError
from cxrbench.common.yamlio import MAX_BYTES, load_config_section, load_yaml, load_yaml_text


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


def _laughs(levels: int) -> str:
    lines = ["name: laughs", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\ndatasets:\n  - name: x\n    options: *a{levels - 1}\n"


def test_nested_aliases_are_refused_before_they_expand(tmp_path):
    """The "billion laughs" shape: ~550 bytes, 9**9 leaves once expanded. Refused from the composed
    graph (linear in the text), never built or walked; the test would run for minutes and exhaust
    memory if the bound were missing."""
    path = tmp_path / "study.yaml"
    path.write_text(_laughs(9))
    with pytest.raises(InputError, match="more than 100,000 values once its aliases are expanded") as err:
        load_yaml(path, "study config")
    assert str(path) in err.value.one_line() and "line" in err.value.one_line()
    with pytest.raises(InputError, match="aliases are expanded"):
        load_yaml_text(_laughs(9), "prompt file")  # the text entry point (prompt files, packaged configs)


def test_ordinary_anchors_still_work_with_their_lines(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {lr: 0.1, epochs: 3}\nruns:\n  - *b\n  - <<: *b\n    lr: 0.2\n")
    data, lines = load_yaml(path)
    assert data["runs"] == [{"lr": 0.1, "epochs": 3}, {"lr": 0.2, "epochs": 3}]
    assert lines[("runs", 1, "lr")] == 5 and lines[("base", "lr")] == 1
    # a document just under the bound loads: 5 levels of 9 = 66k values, once
    data, _ = load_yaml_text("\n".join(_laughs(5).splitlines()[:6]) + "\n")
    assert len(data["a4"]) == 9


@pytest.mark.parametrize(("text", "match"), [
    ("a: &a [1, *a]\n", "refers to the anchor it is inside"),
    ("a: &a {x: *a}\n", "refers to the anchor it is inside"),
    ("x: " + "[" * 80 + "]" * 80 + "\n", "nested deeper than 64 levels"),
    ("x: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 64 levels"),  # deeper than Python's stack
    ("a: 1\n---\nb: 2\n", "invalid YAML"),
])
def test_recursive_and_deep_documents_are_one_error(text, match):
    with pytest.raises(InputError, match=match):
        load_yaml_text(text, "x.yaml")


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * MAX_BYTES + b"\n")
    with pytest.raises(InputError, match="holds at most") as err:
        load_yaml(path, "csv mapping")
    assert "big.yaml" in err.value.one_line()

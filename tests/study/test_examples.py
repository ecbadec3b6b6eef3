"""The example studies shipped in the package: identical to the checkout's, written out by
`cxrbench study example`, valid studies."""

from __future__ import annotations

from pathlib import Path

import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError
from cxrbench.study.examples import EXAMPLES, example_text, write_example
from cxrbench.study.load import load_study

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["study-2024", "study-dinov3"])
def test_the_packaged_copy_is_the_checkouts_config(name):
    checkout = (REPO / "configs" / f"{name}.yaml").read_text(encoding="utf-8")
    assert example_text(name) == checkout, (
        f"src/cxrbench/configs/{name}.yaml differs from configs/{name}.yaml: copy the edited one over")


def test_write_example_writes_a_valid_study_and_never_replaces_another_file(tmp_path):
    path, written = write_example("study-2024", tmp_path)
    assert written and path == tmp_path / "study-2024.yaml"
    assert len(load_study(path).config.datasets) == 6
    assert write_example("study-2024", tmp_path / "study-2024.yaml") == (path, False)  # same: up to date
    mine = tmp_path / "mine.yaml"
    mine.write_text("name: mine\n")
    with pytest.raises(InputError, match="a different file is there already"):
        write_example("study-dinov3", mine)
    assert mine.read_text() == "name: mine\n"
    with pytest.raises(InputError, match="^name got 'study-2o24'.*did you mean 'study-2024'"):
        write_example("study-2o24")


def test_cli_lists_and_writes_examples(tmp_path, cli_runner):
    listing = cli_runner.invoke(app, ["study", "example"])
    assert listing.exit_code == 0 and all(name in listing.output for name in EXAMPLES)
    result = cli_runner.invoke(app, ["study", "example", "demo", "--out", str(tmp_path / "studies")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "studies" / "demo.yaml").read_text() == example_text("demo")
    bad = cli_runner.invoke(app, ["study", "example", "nope"])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: NAME got 'nope'")

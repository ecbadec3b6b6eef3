"""commands._options: the train and pretrain options are generated from their pydantic configs, and the
option set, flags, types and defaults are the ones the hand-written commands had (frozen in data/)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer

from cxrbench.cli import app
from cxrbench.commands._options import field_help, option_values
from cxrbench.pretrain.config import PretrainConfig
from cxrbench.train.config import TrainConfig
from cxrbench.train.methods import METHODS

FROZEN = json.loads((Path(__file__).parent / "data" / "train_pretrain_options.json").read_text())


def _params(command: str) -> list[dict]:
    cmd = typer.main.get_command(app).commands[command]
    return [{"opts": list(p.opts), "secondary": list(getattr(p, "secondary_opts", [])), "default": p.default,
             "type": p.type_descriptor.annotation.__name__, "is_flag": bool(getattr(p, "is_flag", False))}
            for p in cmd.params]


@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_the_option_set_flags_types_and_defaults_are_unchanged(command):
    key = lambda r: tuple(r["opts"] + r["secondary"])  # noqa: E731
    now = {key(r): r for r in _params(command)}
    before = {key(r): r for r in FROZEN[command]}
    assert set(now) == set(before)
    assert {k: now[k] for k in before} == before


def test_every_train_config_field_is_an_option_or_config_only():
    from cxrbench.commands.train import CONFIG_ONLY

    dests = {p.name for p in typer.main.get_command(app).commands["train"].params}
    assert set(TrainConfig.model_fields) - set(CONFIG_ONLY) <= dests


def test_help_comes_from_the_config_and_the_method_registry(cli_runner):
    text = cli_runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    for method in METHODS.values():
        assert method.name in text and method.summary.split()[0] in text
    assert "(--adaptation lora)" in text and "(default: 8)" in text  # --lora-rank: owner and default
    info = PretrainConfig.model_fields["global_scale"]
    assert field_help(info) == "MIN,MAX area fraction of global crops (default: 0.4,1)."
    assert field_help(TrainConfig.model_fields["precision"]).startswith("auto, fp32, bf16, fp16:")


def test_option_values_drop_what_was_not_given():
    got = option_values({"lr": 0.1, "epochs": None, "caches": [Path("a"), Path("b")], "exclude": [],
                         "out": Path("r")}, ["lr", "epochs", "caches", "exclude", "out"])
    assert got == {"lr": 0.1, "caches": ("a", "b"), "out": "r"}


def test_pairs_and_lists_given_as_text_are_parsed_by_the_config():
    cfg = PretrainConfig(caches=["c"], init="random-vit-test", out="o", global_scale="0.3, 0.9")
    assert cfg.global_scale == (0.3, 0.9)
    with pytest.raises(ValueError, match="is not MIN,MAX"):
        PretrainConfig(caches=["c"], init="random-vit-test", out="o", local_scale="0.1")
    assert TrainConfig(cache="c", init="random-vit-test", out="o", knn_k="20,10").knn_k == (10, 20)

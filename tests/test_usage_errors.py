"""Every usage error of every command in the documented shape: exit 2, one ``error:`` line naming the
command and the option, what was given, what is allowed and the fix (``commands/_usage.py``).

The cases are generated from the commands themselves (every command and subcommand of the app, every
option of each), so a command or option added later is covered without editing this file: an unknown
option, every number option given text, every bounded option given a value past each bound, every
option that takes a value given none, every flag given a value, every required option and the last
required argument left out, and an unknown command in every group.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from cxrbench.cli import app

GROUP = typer.main.get_command(app)


def _commands(group, path=()):
    for name, cmd in sorted(group.commands.items()):
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(_commands(GROUP))


def _placeholder(param) -> str:
    base = param.type_descriptor.annotation
    base = getattr(base, "__args__", (base,))[0] if getattr(base, "__origin__", None) else base
    if param.type_descriptor.is_choice:
        return str(param.type_descriptor.choices[0])
    if base in (int, float):
        return str(param.min if param.min is not None else 1)
    return "x"


def _required_prefix(cmd, leave_out=None) -> list[str]:
    """Placeholder values for every required parameter except ``leave_out`` (arguments first)."""
    args = [_placeholder(p) for p in cmd.params if p.param_type_name == "argument" and p.required
            and p is not leave_out]
    opts = []
    for p in cmd.params:
        if p.param_type_name == "option" and p.required and p is not leave_out:
            opts += [p.opts[0], _placeholder(p)]
    return args + opts


def _kind(param) -> type:
    base = param.type_descriptor.annotation
    return getattr(base, "__args__", (base,))[0] if getattr(base, "__origin__", None) else base


def _cases():
    cases = []
    for path, cmd in COMMANDS:
        name = " ".join(path)
        pre = _required_prefix(cmd)
        cases.append(pytest.param([*path, *pre, "--no-such-option"], ["--no-such-option", "unknown option"],
                                  id=f"{name}:unknown-option"))
        for p in cmd.params:
            if p.param_type_name != "option" or p.hidden:
                continue
            opt = max(p.opts, key=len)
            if getattr(p, "is_flag", False):
                cases.append(pytest.param([*path, *pre, f"{opt}=3"], [opt, "flag"], id=f"{name}:{opt}=3"))
                continue
            others = _required_prefix(cmd, leave_out=p)
            cases.append(pytest.param([*path, *others, opt], [opt, "without its value"],
                                      id=f"{name}:{opt}-no-value"))
            if _kind(p) in (int, float):
                cases.append(pytest.param([*path, *others, opt, "two"], [opt, "got two", "number"],
                                          id=f"{name}:{opt}=two"))
            step = 1 if _kind(p) is int else 0.5
            if p.min is not None:
                low = f"{p.min - step:g}"
                cases.append(pytest.param([*path, *others, opt, low], [opt, f"got {low}", f"{p.min:g}"],
                                          id=f"{name}:{opt}<min"))
            if p.max is not None:
                high = f"{p.max + step:g}"
                cases.append(pytest.param([*path, *others, opt, high], [opt, f"got {high}", f"{p.max:g}"],
                                          id=f"{name}:{opt}>max"))
            if p.required:
                cases.append(pytest.param([*path, *others], [opt, "required"], id=f"{name}:{opt}-missing"))
        required_args = [p for p in cmd.params if p.param_type_name == "argument" and p.required]
        if required_args:
            last = required_args[-1]
            argv = [*path, *_required_prefix(cmd, leave_out=last)]
            if len(argv) == len(path):  # nothing else to give: add a flag so that this is no bare call
                flags = [p.opts[0] for p in cmd.params if getattr(p, "is_flag", False) and p.name != "help"]
                argv += flags[:1]
            if len(argv) > len(path):
                cases.append(pytest.param(argv, [last.name.upper(), "missing"],
                                          id=f"{name}:{last.name}-missing"))
    for path in [(), *(p for p in {c[0][:-1] for c in COMMANDS} if p)]:
        cases.append(pytest.param([*path, "no-such-command"], ["no-such-command", "Fix:"],
                                  id=f"{' '.join(path) or 'cxrbench'}:unknown-command"))
    return cases


CASES = _cases()


@pytest.mark.parametrize(("argv", "said"), CASES)
def test_one_error_line_naming_option_given_allowed_and_fix(cli_runner, argv, said, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a placeholder path never names a real file
    monkeypatch.setenv("CXRBENCH_HOME", str(tmp_path / "home"))
    result = cli_runner.invoke(app, argv)
    out = result.output + (result.stderr or "")
    assert result.exit_code == 2, (argv, result.exit_code, out, result.exception)
    assert "Traceback" not in out and "╭" not in out, out  # no box, no traceback
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cxrbench"), err
    assert ". Fix: " in err[0], err[0]
    for word in said:
        assert word in err[0], (word, err[0])
    assert list(Path(tmp_path).iterdir()) == []  # refused before the command ran: nothing written


def test_the_cases_cover_every_command_and_each_kind():
    ids = [p.id for p in CASES]
    for path, _ in COMMANDS:
        assert f"{' '.join(path)}:unknown-option" in ids
    assert {"train:--epochs=two", "pretrain:--epochs=two", "evaluate:--calibration-bins<min",
            "evaluate:--ci>max", "index:--dataset-missing", "study run:config-missing",
            "weights:unknown-command", "cxrbench:unknown-command"} <= set(ids)
    assert len(CASES) > 250


def test_a_bare_group_or_command_still_shows_its_help(cli_runner):
    result = cli_runner.invoke(app, ["study"])
    assert result.exit_code == 2 and "Usage" in result.output + (result.stderr or "")


@pytest.mark.parametrize(("argv", "pattern"), [
    (["evaluate", "run", "--calibration-bins", "0"],
     r"^error: cxrbench evaluate --calibration-bins: got 0, expected a whole number >= 2 .*"
     r"Fix: give a whole number >= 2, e.g. --calibration-bins 10$"),
    (["train", "--epochs", "two"], r"^error: cxrbench train --epochs: got two, expected a whole number"),
    (["evaluate", "run", "--boostrap", "3"], r"unknown option --boostrap \(did you mean --bootstrap\?\)"),
    (["evaluate", "run", "--ci"], r"option --ci is given without its value \(a number from 0.5 to 0.999\)"),
    (["index", "--root", "r", "--out", "o"], r"option --dataset is required \(nih, chexpert, mimic"),
    (["weights", "importt"], r"No such command 'importt'. Did you mean 'import'\?"),
    (["describe", "a", "b"], r"unexpected extra argument\(s\) \(b\)"),
])
def test_the_lines_read_as_documented(cli_runner, argv, pattern):
    result = cli_runner.invoke(app, argv)
    assert result.exit_code == 2
    assert re.search(pattern, result.stderr.strip()), result.stderr

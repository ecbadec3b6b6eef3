"""Command-line usage errors in the documented shape: one ``error:`` line, exit 2.

The command-line library reports a number option given text (``--epochs two``), a value out of its
range (``--calibration-bins 0``), an unknown option, a missing option or argument, an option without
its value and an extra argument in a multi-line box. :func:`usage_error` turns each of these into one
:class:`~cxrbench.common.errors.InputError` naming the command and the option, what was given, what is
allowed and the fix; ``cli.py`` prints it like every other bad input.

What is allowed is read from the parameter itself (its type, ``min``/``max`` and choices), so an
option added later, or generated from a pydantic config, is described without a table to update.
"""

from __future__ import annotations

import difflib
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from typer._click import exceptions as cx

from cxrbench.common.errors import InputError

_KINDS: dict[Any, str] = {  # annotation -> what is allowed
    int: "a whole number",
    float: "a number",
    str: "a text value",
    Path: "a path",
    bool: "a flag without a value",
}


def _base(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if getattr(annotation, "__origin__", None) in (list, tuple) and args:
        return args[0]
    return annotation


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def allowed(param: Any) -> tuple[str, str | None]:
    """``(what the parameter accepts, an example value or None)`` from its type, range, default and
    choices."""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and getattr(desc, "is_choice", False) and desc.choices:
        choices = [str(c.value if hasattr(c, "value") else c) for c in desc.choices]
        return "one of " + ", ".join(choices), choices[0]
    kind, example = _KINDS.get(_base(getattr(desc, "annotation", str)), "a value"), None
    lo, hi = getattr(param, "min", None), getattr(param, "max", None)
    if lo is not None and hi is not None:
        kind += f" from {_fmt(lo)} to {_fmt(hi)}"
    elif lo is not None:
        kind += f" >= {_fmt(lo)}"
    elif hi is not None:
        kind += f" <= {_fmt(hi)}"
    default = getattr(param, "default", None)
    if default is not None and not isinstance(default, bool | list | tuple) and not callable(default):
        example = _fmt(default)
    elif lo is not None:
        example = _fmt(lo)
    return kind, example


def _example(name: str, kind: str, example: str | None) -> str:
    return f"give {kind}, e.g. {name} {example}" if example else f"give {kind} after {name}"


def _described(param: Any, kind: str) -> str:
    """The first sentence of the parameter's help (as typed), else what its type allows."""
    text = " ".join((getattr(param, "help", None) or "").replace("\\[", "[").split())
    first = text.split(". ")[0].rstrip(".")
    return first[0].lower() + first[1:] if first else kind


def _name(param: Any) -> str:
    if getattr(param, "param_type_name", "") == "argument":
        return (param.name or "VALUE").upper()
    return max(param.opts, key=len)


def _shown(value: Any) -> str:
    return shlex.quote(value) if isinstance(value, str) else _fmt(value)


def _given(err: cx.BadParameter, argv: Sequence[str]) -> str | None:
    """The value the user typed for ``err.param`` (quoted as a shell would need it): the validator's
    input, else read back from argv."""
    cause = err.__cause__
    errors = getattr(cause, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            if "input" in first:
                return _shown(first["input"])
        except (IndexError, KeyError, TypeError):
            pass
    param = err.param
    if param is None or getattr(param, "param_type_name", "") != "option":
        return None
    names = [*param.opts, *getattr(param, "secondary_opts", [])]
    found = None
    for i, token in enumerate(argv):
        for name in names:
            if token == name and i + 1 < len(argv):
                found = argv[i + 1]
            elif token.startswith(name + "="):
                found = token[len(name) + 1:]
    return None if found is None else _shown(found)


def _options(cmd: Any) -> list[str]:
    return [o for p in getattr(cmd, "params", []) for o in (*p.opts, *getattr(p, "secondary_opts", []))
            if o.startswith("-")]


def _param_named(cmd: Any, option: str) -> Any:
    for p in getattr(cmd, "params", []):
        if option in (*p.opts, *getattr(p, "secondary_opts", [])):
            return p
    return None


def _command_of(root: Any, argv: Sequence[str]) -> tuple[Any, str]:
    """The (sub)command that ``argv`` names below ``root``, and its path (for an error without context)."""
    cmd, path = root, ["cxrbench"]
    for token in argv:
        sub = getattr(cmd, "commands", {}).get(token)
        if sub is None:
            if not token.startswith("-"):
                break
            continue
        cmd, path = sub, [*path, token]
    return cmd, " ".join(path)


def usage_error(err: cx.UsageError, argv: Sequence[str], root: Any = None) -> InputError:
    """One InputError (command, option, given, allowed, fix) for a usage error of the parser.

    ``argv`` is the command line after the program name; ``root`` the top command, which finds the
    subcommand when the parser raised the error without its context.
    """
    ctx = err.ctx
    if ctx is not None:
        cmd, command = ctx.command, ctx.command_path
    else:
        cmd, command = _command_of(root, argv) if root is not None else (None, "cxrbench")
    help_hint = f"see `{command} --help`"
    if isinstance(err, cx.MissingParameter) and err.param is not None:
        kind, example = allowed(err.param)
        name, described = _name(err.param), _described(err.param, kind)
        if err.param.param_type_name == "argument":
            return InputError(f"the {name} argument is missing ({described})", where=command,
                              fix=f"give it: {command} {name} ...; {help_hint}")
        return InputError(f"option {name} is required ({described})", where=command,
                          fix=f"add {name} {example or kind.split()[-1].upper()}; {help_hint}")
    if isinstance(err, cx.BadParameter) and err.param is not None:
        kind, example = allowed(err.param)
        name = _name(err.param)
        given = _given(err, argv)
        reason = " ".join(str(err.message).split()).rstrip(".")
        reason = reason[0].lower() + reason[1:] if reason else reason
        shown = f"got {given}" if given is not None else "the value given is not allowed"
        return InputError(f"{shown}, expected {kind} ({reason})", where=f"{command} {name}",
                          fix=_example(name, kind, example))
    if isinstance(err, cx.NoSuchOption):
        options = _options(cmd)
        close = err.possibilities or difflib.get_close_matches(err.option_name, options, n=3)
        hint = f"did you mean {' or '.join(sorted(close))}?" if close else \
            f"not an option of {command}"
        return InputError(f"unknown option {err.option_name} ({hint})", where=command,
                          fix=f"correct or remove it; {help_hint} for the options")
    if isinstance(err, cx.BadOptionUsage):
        param = _param_named(cmd, err.option_name)
        if param is not None and "requires" in err.message:
            kind, example = allowed(param)
            return InputError(f"option {err.option_name} is given without its value ({kind})",
                              where=command, fix=_example(err.option_name, kind, example))
        if param is not None and "does not take a value" in err.message:
            return InputError(f"option {err.option_name} is a flag: it takes no value", where=command,
                              fix=f"write {err.option_name} alone (without =...)")
        return InputError(" ".join(err.message.split()).rstrip("."), where=command, fix=help_hint)
    message = " ".join(str(err.message).split()).rstrip(".")
    if message.startswith("No such command") and cmd is not None and hasattr(cmd, "commands"):
        message += f" (the commands: {', '.join(sorted(cmd.commands))})"
        return InputError(message, where=command, fix=f"choose one of them; {help_hint}")
    if message.startswith("Got unexpected extra argument"):
        return InputError(message, where=command,
                          fix=f"remove it, or quote a value that contains spaces; {help_hint}")
    return InputError(message, where=command, fix=help_hint)

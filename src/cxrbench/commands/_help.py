"""Help texts: paragraphs folded for the renderer, square brackets shown as typed.

Typer renders help with rich: a single newline stays a line break inside rich's own wrapping (so
hard-wrapped source text comes out ragged), and ``[...]`` is read as rich markup and vanishes
(``cuda:N [auto].`` became ``cuda:N .``). :func:`tidy_help` fixes both once, for every command,
option and argument of the app, so the command modules write plain text.
"""

from __future__ import annotations

import inspect
import re

import typer
from rich.markup import escape

_CODE = re.compile(r"^( {2,}|\t|cxrbench |\$ )")  # example lines keep their own line breaks


def fold_paragraphs(text: str) -> str:
    """Join the lines of each paragraph; paragraphs of example lines (indented, or starting with
    ``cxrbench``) keep their line breaks."""
    out = []
    for par in text.strip().split("\n\n"):
        lines = par.splitlines()
        if lines and all(_CODE.match(line) for line in lines if line.strip()):
            out.append("\n".join(line.rstrip() for line in lines))
        else:
            out.append(" ".join(par.split()))
    return "\n\n".join(out)


def _tidy(text: str | None) -> str | None:
    return None if text is None else escape(fold_paragraphs(text))


def tidy_help(app: typer.Typer) -> None:
    """Fold and escape the help of every command, group, option and argument of ``app`` (in place)."""
    for info in app.registered_commands:
        info.help = _tidy(info.help or inspect.getdoc(info.callback))
        if info.epilog:
            info.epilog = _tidy(info.epilog)
        for param in inspect.signature(info.callback).parameters.values():
            default = param.default
            if isinstance(default, typer.models.ParameterInfo) and default.help:
                default.help = _tidy(default.help)
    for group in app.registered_groups:
        sub = group.typer_instance
        if sub is None:
            continue
        if group.help:
            group.help = _tidy(group.help)
        if sub.info.help and not isinstance(sub.info.help, typer.models.DefaultPlaceholder):
            sub.info.help = _tidy(sub.info.help)
        tidy_help(sub)

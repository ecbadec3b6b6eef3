"""Command-line options generated from a pydantic run config (``TrainConfig``, ``PretrainConfig``).

Each config field becomes one option: ``--field-name`` (or the spelling in ``flags``), its type from
the annotation (numbers as numbers; lists, pairs and choices as text the config's own validators
parse), its help from the field's description with the default appended, and the default None (an
option left out is taken from the run's ``config.yaml`` when it resumes, else from the config's
default: the resume merge rule of :meth:`RunConfig.merged_options`). So an option is written once, in
the config, as Lightning's CLI derives its flags from typed signatures.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel
from pydantic.fields import FieldInfo


def _base_type(annotation: Any) -> Any:
    """The annotation without ``None``: ``int | None`` -> ``int``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def _cli_type(annotation: Any) -> Any:
    """The type typer parses a field's option into: bool, int, float, or text for the rest."""
    base = _base_type(annotation)
    return base if base in (bool, int, float) else str


def _shown(value: Any) -> str:
    """A default as the help shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def field_help(info: FieldInfo, extra: str = "") -> str:
    """The option's help: the field's description, its choices, the given ``extra`` (e.g. which
    adaptation method owns it) and the default."""
    text = (info.description or "").strip()
    base = _base_type(info.annotation)
    choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else ()
    if choices:
        text = f"{', '.join(map(str, choices))}: {text}" if text else ", ".join(map(str, choices)) + "."
    if extra:
        text = f"{text} {extra}".strip()
    default = None if info.is_required() else info.get_default(call_default_factory=False)
    if "default" not in text and default not in (None, (), []) and info.default_factory is None:
        text = f"{text.rstrip('.')} (default: {_shown(default)})."
    return text


def config_parameters(model: type[BaseModel], *, order: Iterable[str] | None = None, skip: Iterable[str] = (),
                      flags: Mapping[str, tuple[str, ...]] | None = None,
                      repeated: Mapping[str, str] | None = None, paths: Iterable[str] = (),
                      help_extra: Mapping[str, str] | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model`` (in ``order``, default field order; ``skip`` left
    out) declaring its typer option. ``flags``: the option names of a field when not ``--field-name``
    (bools get ``--name/--no-name``); ``repeated``: list fields given as a repeatable option (field ->
    flag); ``paths``: fields typed as paths; ``help_extra``: text appended to a field's help."""
    skipped, paths = set(skip), set(paths)
    flags, repeated, help_extra = flags or {}, repeated or {}, help_extra or {}
    out = []
    for name in order or model.model_fields:
        info = model.model_fields[name]
        if name in skipped:
            continue
        cli = _cli_type(info.annotation)
        if name in repeated:
            decls: tuple[str, ...] = (repeated[name],)
            annotation: Any = list[Path]
        else:
            dashed = "--" + name.replace("_", "-")
            decls = flags.get(name) or ((f"{dashed}/--no-{dashed[2:]}",) if cli is bool else (dashed,))
            annotation = Path if name in paths else cli
        option = typer.Option(None, *decls, help=field_help(info, help_extra.get(name, "")),
                              show_default=False, metavar="PATH" if name in repeated else None)
        out.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                     annotation=annotation))
    return out


def option_values(values: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    """The config options given on the command line (None and empty lists = not given), paths as text."""
    out: dict[str, Any] = {}
    for name in fields:
        v = values.get(name)
        if v is None or (isinstance(v, list | tuple) and not v):
            continue
        if isinstance(v, list | tuple):
            v = tuple(str(x) for x in v)
        out[name] = str(v) if isinstance(v, Path) else v
    return out


def with_parameters(fn: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """``fn`` (which takes ``**values``) with a signature declaring ``params`` before its own keyword
    parameters, which is what typer reads to build the command's options."""
    own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in inspect.signature(fn).parameters.values()
           if p.kind is not inspect.Parameter.VAR_KEYWORD]
    signature = inspect.Signature([*params, *own])
    fn.__signature__ = signature  # type: ignore[attr-defined]
    fn.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return fn

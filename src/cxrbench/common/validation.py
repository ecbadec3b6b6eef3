"""One validation helper, one message shape (parameter, allowed values, given, closest match)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic._internal._model_construction import ModelMetaclass

from cxrbench.common.errors import InputError, spell


def closest(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed value most similar to ``value``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_choice(name: str, value: str, allowed: Iterable[str], where: str | None = None) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise one clear InputError (``name``
    is the command-line flag; from Python the message names the parameter).

    >>> check_choice("--resize", "pad", ["stretch", "pad", "crop"])
    'pad'
    """
    allowed = list(allowed)
    if value in allowed:
        return value
    name = spell(name) if name.startswith("--") else name  # `--resize` on the command line, else `resize`
    hint = closest(value, allowed)
    fix = f"use one of {', '.join(map(str, allowed))}"
    if hint is not None:
        fix = f"did you mean {hint!r}? ({fix})"
    raise InputError(f"{name} got {value!r}, which is not allowed", where=where, fix=fix)


def one_of(value: str, allowed: Iterable[str], what: str) -> str:
    """``value`` when it is one of ``allowed``, else a ValueError (for pydantic validators) naming the
    closest choice and every allowed one."""
    allowed = [str(a) for a in allowed]
    if value not in allowed:
        hint = closest(str(value), allowed)
        raise ValueError(f"unknown {what} {value!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                         + f"; allowed: {', '.join(allowed)}")
    return value


def check_columns(
    columns: Iterable[str], required: Iterable[str], where: str, fix: str | None = None
) -> None:
    """Raise an InputError naming every required column missing from ``columns``."""
    have = set(columns)
    missing = [c for c in required if c not in have]
    if missing:
        hints = [f"{m!r} (closest: {closest(m, have)!r})" if closest(m, have) else repr(m) for m in missing]
        raise InputError(
            f"missing required column(s) {', '.join(hints)}",
            where=where,
            fix=fix or "check that this is the official file, unmodified",
        )


_SAID_BY_ALLOWED = {"greater_than", "greater_than_equal", "less_than", "less_than_equal", "literal_error",
                    "int_parsing", "float_parsing", "int_from_float", "int_type", "float_type",
                    "bool_parsing", "finite_number"}


def raised_input_error(err: ValidationError) -> InputError | None:
    """The InputError a validator raised inside ``err``, or None. An InputError is a ValueError, so
    pydantic wraps one raised inside a validator into its ValidationError; every handler of a
    ValidationError re-raises it as it was (its own where and fix)."""
    for e in err.errors():
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, InputError):
            return cause
    return None


def config_error(err: Any, model: Any, where: str, command: str) -> InputError:
    """The first error of a pydantic ``ValidationError`` on ``model`` (a BaseModel class) as one
    InputError naming the key (without list positions: ``knn_k``, not ``knn_k.1``) and the fix;
    ``command`` is the CLI command whose ``--help`` lists the keys. The option is named as the
    caller writes it (:func:`~cxrbench.common.errors.spell`): ``--lr`` from the command line,
    ``lr=`` from Python."""
    inner = raised_input_error(err)
    if inner is not None:
        return inner
    first = err.errors()[0]
    key = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int)) or "config"
    if first.get("type") == "extra_forbidden":
        hint = closest(key, model.model_fields)
        keys = spell(f"`{command} --help`", f"help(cxrbench.{model.__name__})")
        fix = f"did you mean {hint!r}?" if hint else f"remove it; see {keys} for the keys"
        return InputError(f"unknown key {key!r}", where=where, fix=fix)
    if first.get("type") == "missing":
        return InputError(f"key {key!r} is required", where=where,
                          fix=f"give {spell('--' + key.replace('_', '-'), key + '=')}")
    msg = first.get("msg", "invalid value").removeprefix("Value error, ")
    given = first.get("input")
    field = model.model_fields.get(key)
    desc = f"; {field.description}" if field is not None and field.description else ""
    allowed = field_allowed(field) if field is not None else ""
    if allowed and first.get("type", "") in _SAID_BY_ALLOWED:  # a type, bound or choice: say what is allowed
        option = f"--{key.replace('_', '-')}"
        said = spell(f"{key} ({option} or '{key}:' in a config file)", key)
        return InputError(f"{said}: got {given!r}, expected {allowed}",
                          where=where, fix=f"give {spell(option, key + '=')} {allowed}{desc}")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return InputError(f"{key}: {msg}{shown}", where=where, fix=f"correct {key!r}{desc}")


def field_allowed(field: Any) -> str:
    """What a pydantic field accepts, in words: its type, bounds and choices (``a whole number >= 1``)."""
    import types
    import typing

    annotation = field.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, args))
    if args and typing.get_origin(annotation) in (typing.Union, types.UnionType):
        annotation = args[0] if len(args) == 1 else annotation
    kind = {int: "a whole number", float: "a number", bool: "true or false", str: "a text value"}.get(
        annotation, "")
    if not kind:
        return ""
    bounds = []
    for meta in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            value = getattr(meta, attr, None)
            if value is not None:
                bounds.append(f"{sign} {value:g}" if isinstance(value, float) else f"{sign} {value}")
    return kind + (" " + " and ".join(bounds) if bounds else "")


def as_float(value: Any) -> float:
    """``float(value)``, or NaN when it is None or not a number (values read back from JSON files)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


class _RaisesInputError(ModelMetaclass):
    """Calling the class (the constructor) turns pydantic's ValidationError into one InputError;
    ``model_validate`` and validation as a nested field are left as pydantic made them."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except ValidationError as e:
            raise cls.input_error(e, cls.__name__) from None  # type: ignore[attr-defined]


class CheckedModel(BaseModel, metaclass=_RaisesInputError):
    """A pydantic model whose constructor raises one :class:`InputError` (``TrainConfig: unknown key
    'lrr'. Fix: did you mean 'lr'?``) instead of pydantic's multi-line ``ValidationError``.

    The front doors' models (``TrainConfig``, ``PretrainConfig``, ``IndexOptions``) derive from it.
    ``Model.model_validate(data)`` still raises pydantic's ValidationError (code that adds a file's
    line numbers to the message uses it), and so does validation as a field of another model.
    """

    @classmethod
    def input_error(cls, err: ValidationError, where: str) -> InputError:
        """``err`` (raised while validating this model) as one InputError at ``where``."""
        return config_error(err, cls, where, f"cxrbench {getattr(cls, 'SECTION', '') or cls.__name__}")

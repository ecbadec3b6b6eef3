"""What the run configs of ``cxrbench train`` and ``cxrbench pretrain`` share: construction with
one-line errors, plain dicts, the comparison of two configs and the resume merge rule's layers."""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cxrbench.common.fileio import json_safe
from cxrbench.common.validation import CheckedModel
from cxrbench.common.yamlio import load_config_section


def device_option(v: str | None) -> str | None:
    """The ``device`` option of a run config: ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (``auto``/None:
    automatic); a ValueError otherwise (raised inside the configs' validators)."""
    if v is None or v == "auto":
        return None
    head, _, idx = v.partition(":")
    if head not in ("cpu", "cuda", "mps") or (idx and not idx.isdigit()):
        raise ValueError("must be cpu, cuda, cuda:N or mps")
    return v


def betas_option(v: tuple[float, float]) -> tuple[float, float]:
    """AdamW's ``betas``, both in [0, 1) (a ValueError otherwise)."""
    if not all(0.0 <= b < 1.0 for b in v):
        raise ValueError("both betas must be in [0, 1)")
    return v


class RunConfig(CheckedModel):
    """Base of an immutable run config; subclasses set :attr:`SECTION` (their ``config.yaml``
    section and the name of their command) and define :meth:`identity`. Constructing one with an
    unknown key or a bad value raises one InputError (:class:`~cxrbench.common.validation.CheckedModel`)."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    SECTION: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> Any:
        """Validate ``data``; any unknown key or bad value raises one InputError naming the key."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as e:
            raise cls.input_error(e, where or f"{cls.SECTION} config") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict (tuples as lists)."""
        return json_safe(self.model_dump())

    def identity(self) -> dict[str, Any]:
        """The fields that define what a run computes."""
        raise NotImplementedError

    def differences(self, other: RunConfig) -> list[str]:
        """Identity keys whose values differ, as ``key: saved X, given Y`` strings."""
        a, b = self.identity(), other.identity()
        return [f"{k}: saved {a[k]!r}, given {b[k]!r}" for k in a if a[k] != b[k]]

    @classmethod
    def merged_options(cls, out: str | os.PathLike, given: dict[str, Any], *,
                       config_file: str | os.PathLike | None = None,
                       overwrite: bool = False) -> dict[str, Any]:
        """The layers of the resume merge rule: ``out/config.yaml`` when the run exists (and is not
        restarted with ``overwrite``), then ``config_file``, then the options ``given``; ``out`` set."""
        from cxrbench.common.layout import RUN_CONFIG

        what = f"{cls.SECTION} config"
        merged: dict[str, Any] = {}
        saved = Path(out) / RUN_CONFIG
        if saved.is_file() and not overwrite:
            merged.update(load_config_section(saved, cls.SECTION, what))
        if config_file is not None:
            merged.update(load_config_section(config_file, cls.SECTION, what))
        merged.update(given)
        merged["out"] = str(out)
        return merged


def _type_text(annotation: Any) -> str:
    """A field's type as a reader writes it: ``int``, ``float | None``, ``one of constant, cosine``."""
    import types
    import typing

    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def fields_doc(model: type[BaseModel]) -> str:
    """``model``'s docstring followed by a ``Parameters`` section: every field with its type, default
    and description (the same text ``--help`` shows), so ``help(model)`` documents each keyword."""
    lines = [inspect.cleandoc(model.__doc__ or ""), "", "Parameters", "----------"]
    order = getattr(model, "ordered_fields", None)
    names = order() if callable(order) else list(model.model_fields)
    for name in names:
        info = model.model_fields[name]
        if info.is_required():
            default = "required"
        elif info.default_factory is not None:
            default = "default: computed when built"
        else:
            default = f"default {info.get_default(call_default_factory=False)!r}"
        lines.append(f"{name} : {_type_text(info.annotation)}, {default}")
        lines.append(f"    {(info.description or '').strip()}")
    return "\n".join(lines) + "\n"


def ordered_signature(model: type[BaseModel], names: list[str]) -> inspect.Signature:
    """pydantic's keyword-only signature of ``model`` with the parameters in the order ``names``
    (a config joined from several models lists the shared settings first, as ``--help`` does)."""
    sig = inspect.signature(model)
    params = sig.parameters
    return sig.replace(parameters=[params[n] for n in names if n in params]
                       + [p for n, p in params.items() if n not in names])

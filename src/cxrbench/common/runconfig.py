"""What the run configs of ``cxrbench train`` and ``cxrbench pretrain`` share: construction with
one-line errors, plain dicts, the comparison of two configs and the resume merge rule's layers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from cxrbench.common.fileio import json_safe
from cxrbench.common.validation import config_error
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


class RunConfig(BaseModel):
    """Base of an immutable run config; subclasses set :attr:`SECTION` (their ``config.yaml``
    section and the name of their command) and define :meth:`identity`."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    SECTION: ClassVar[str] = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str | None = None) -> Any:
        """Validate ``data``; any unknown key or bad value raises one InputError naming the key."""
        try:
            return cls(**data)
        except ValidationError as e:
            raise config_error(e, cls, where or f"{cls.SECTION} config", f"cxrbench {cls.SECTION}") from None

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

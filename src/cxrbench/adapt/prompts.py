"""Prompt sets of zero-shot classification: per finding a positive and a negative prompt ensemble.

A prompt set is a versioned YAML file (format 1; cxrbench ships ``cxrbench/configs/prompts.yaml``, a
study or a run may name its own with ``zeroshot_prompts: PATH``)::

    format: 1
    name: cxrbench
    version: "2026.1"
    templates: {positive: ["{}", "chest x-ray showing {}"], negative: ["no {}", ...]}
    findings:
      cardiomegaly: {terms: [cardiomegaly, enlarged heart]}   # templates x terms
      no_finding: {positive: [normal chest x-ray], negative: [abnormal chest x-ray]}   # verbatim

A finding's side given verbatim is used as it is; otherwise every template is filled with every term
(``{}`` is the term). The file is read with the project's YAML reader
(:func:`cxrbench.common.yamlio.load_yaml`) and bounded: at most :data:`MAX_PROMPTS` prompts per side of
a finding, :data:`MAX_CHARS` characters per prompt. Every problem is one InputError naming the file, the
line and the key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import file_sha256
from cxrbench.common.validation import closest
from cxrbench.common.yamlio import load_yaml

PROMPT_FORMAT = 1
MAX_PROMPTS = 64  # per side of one finding, after filling the templates
MAX_CHARS = 300  # per prompt (the text towers truncate far earlier: 64-77 tokens)
BUILTIN = "cxrbench"  # the source name of the shipped set
BUILTIN_FILE = "configs/prompts.yaml"  # package data of cxrbench


def _texts(v: Any, what: str, template: bool = False) -> tuple[str, ...]:
    """A non-empty list of distinct non-empty strings (one string is a list of one)."""
    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list | tuple) or not v:
        raise ValueError(f"{what} must be a non-empty list of strings")
    out = []
    for x in v:
        if not isinstance(x, str) or not x.strip():
            raise ValueError(f"{what}: {x!r} is not a non-empty string")
        if len(x) > MAX_CHARS:
            raise ValueError(f"{what}: a prompt of {len(x)} characters (at most {MAX_CHARS})")
        if template and x.count("{}") != 1:
            raise ValueError(f"{what}: template {x!r} must hold '{{}}' (the term) exactly once")
        out.append(" ".join(x.split()))
    if len(set(out)) != len(out):
        raise ValueError(f"{what} lists a prompt twice")
    if len(out) > MAX_PROMPTS:
        raise ValueError(f"{what} lists {len(out)} entries (at most {MAX_PROMPTS})")
    return tuple(out)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Templates(_Strict):
    """The templates that turn a finding's terms into its positive and negative prompts."""

    positive: tuple[str, ...]
    negative: tuple[str, ...]

    @field_validator("positive", "negative", mode="before")
    @classmethod
    def _templates(cls, v: Any, info: Any) -> tuple[str, ...]:
        return _texts(v, f"{info.field_name} templates", template=True)


class FindingPrompts(_Strict):
    """One finding's entry: ``terms`` for the templates, and/or a verbatim side."""

    terms: tuple[str, ...] | None = None
    positive: tuple[str, ...] | None = None
    negative: tuple[str, ...] | None = None

    @field_validator("terms", "positive", "negative", mode="before")
    @classmethod
    def _lists(cls, v: Any, info: Any) -> tuple[str, ...] | None:
        return None if v is None else _texts(v, info.field_name)

    @model_validator(mode="after")
    def _complete(self) -> FindingPrompts:
        if self.terms is None and (self.positive is None or self.negative is None):
            raise ValueError("give 'terms' (filled into the templates), or both 'positive' and 'negative'")
        return self


class PromptFile(_Strict):
    """The schema of a prompt-set file."""

    format: int = Field(description="the file format; cxrbench reads format 1")
    name: str = Field(min_length=1, max_length=100)
    version: str = Field(min_length=1, max_length=50, description="the prompt set's own version")
    description: str | None = None
    templates: Templates | None = None
    findings: dict[str, FindingPrompts]

    @field_validator("version", mode="before")
    @classmethod
    def _version(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v

    @field_validator("format")
    @classmethod
    def _format(cls, v: int) -> int:
        if v != PROMPT_FORMAT:
            raise ValueError(f"format {v} is not one this cxrbench reads ({PROMPT_FORMAT})")
        return v

    @model_validator(mode="after")
    def _usable(self) -> PromptFile:
        if not self.findings:
            raise ValueError("'findings' is empty")
        t = self.templates
        for name, entry in self.findings.items():
            if entry.terms is None or (entry.positive is not None and entry.negative is not None):
                continue
            if t is None:
                raise ValueError(f"findings.{name} uses terms, but the file has no 'templates'")
            if len(entry.terms) * max(len(t.positive), len(t.negative)) > MAX_PROMPTS:
                raise ValueError(f"findings.{name}: {len(entry.terms)} terms x the templates make more than "
                                 f"{MAX_PROMPTS} prompts")
        return self


@dataclass(frozen=True)
class PromptPair:
    """A finding's two prompt ensembles, in the order they are encoded."""

    finding: str
    positive: tuple[str, ...]
    negative: tuple[str, ...]


@dataclass(frozen=True)
class PromptSet:
    """A validated prompt set and where it came from (``source``: :data:`BUILTIN` or the file's path)."""

    spec: PromptFile
    source: str
    sha256: str

    def pair(self, finding: str) -> PromptPair:
        """The finding's positive and negative prompts (templates filled)."""
        entry = self.spec.findings[finding]
        t = self.spec.templates

        def side(verbatim: tuple[str, ...] | None, templates: tuple[str, ...] | None) -> tuple[str, ...]:
            if verbatim is not None:
                return verbatim
            assert templates is not None and entry.terms is not None  # checked by PromptFile
            return tuple(dict.fromkeys(tpl.replace("{}", term) for tpl in templates for term in entry.terms))

        return PromptPair(finding, side(entry.positive, t.positive if t else None),
                          side(entry.negative, t.negative if t else None))

    def pairs(self, findings: list[str], where: str = "zeroshot_prompts") -> list[PromptPair]:
        """The pairs of ``findings`` in that order; one InputError naming every finding without prompts."""
        missing = [f for f in findings if f not in self.spec.findings]
        if missing:
            near = {m: closest(m, self.spec.findings) for m in missing}
            hints = [f"{m} (the file has {near[m]!r})" if near[m] else m for m in missing]
            raise InputError(f"the prompt set {self.label()} has no prompts for {', '.join(hints)}",
                             where=where if self.source == BUILTIN else self.source,
                             fix="add them under 'findings:' of a prompt file of your own and give it with "
                                 "zeroshot_prompts: PATH (docs/training.md#zero-shot)")
        return [self.pair(f) for f in findings]

    def label(self) -> str:
        """``name version`` as the Methods text quotes it."""
        return f"{self.spec.name} {self.spec.version}"

    def describe(self, findings: list[str]) -> dict[str, Any]:
        """What a run records: the set (name, version, source, SHA-256), its templates and the entries
        of ``findings`` as written (terms or verbatim sides)."""
        t = self.spec.templates
        return {"name": self.spec.name, "version": self.spec.version, "source": self.source,
                "sha256": self.sha256,
                "templates": None if t is None else {"positive": list(t.positive),
                                                     "negative": list(t.negative)},
                "entries": {f: self.spec.findings[f].model_dump(exclude_none=True, mode="json")
                            for f in findings}}


def builtin_path() -> Any:
    """The shipped prompt file (a Traversable of the package data)."""
    return resources.files("cxrbench").joinpath(BUILTIN_FILE)


def load_prompts(path: str | os.PathLike | None = None) -> PromptSet:
    """The prompt set of ``path`` (cxrbench's own when None)."""
    if path is None:
        with resources.as_file(builtin_path()) as p:
            return _read(Path(p), BUILTIN)
    path = Path(path).expanduser()
    return _read(path, str(path.resolve()))


def _read(path: Path, source: str) -> PromptSet:
    data, lines = load_yaml(path, "prompt file")
    if not isinstance(data, dict):
        raise InputError("the top level is not a mapping", where=str(path),
                         fix="write `format: 1`, `name:`, `version:`, `templates:` and `findings:`")
    try:
        spec = PromptFile(**data)
    except ValidationError as e:
        raise _error(e, path, lines) from None
    return PromptSet(spec, source, file_sha256(path))


def _error(err: ValidationError, path: Path, lines: dict[tuple, int]) -> InputError:
    first = err.errors()[0]
    loc = tuple(p for p in first.get("loc", ()) if not isinstance(p, int))
    line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
    key = ".".join(map(str, loc)) or "prompt file"
    where = f"{path}, line {line}" if line else str(path)
    if first.get("type") == "extra_forbidden":
        return InputError(f"unknown key {key!r}", where=where,
                          fix="a prompt file has format, name, version, description, templates and findings; "
                              "a finding has terms, positive and negative")
    if first.get("type") == "missing":
        return InputError(f"key {key!r} is required", where=where, fix=f"add {key}")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return InputError(f"{key}: {msg}", where=where, fix="correct it (see cxrbench/configs/prompts.yaml)")

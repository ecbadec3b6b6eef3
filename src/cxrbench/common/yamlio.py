"""The one YAML reader of cxrbench's config files (study configs, csv mappings, train configs).

:func:`load_yaml` reads UTF-8 text through :func:`cxrbench.common.fileio.read_text` (so a missing,
unreadable or non-UTF-8 file is one InputError), parses it safely, refuses a key given twice in one
mapping (naming both lines: YAML would silently keep the last one), and returns the line of every
key by its path, for error messages that point at the line.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import read_text


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (``where`` is set per file)."""

    where = "YAML file"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                continue  # unhashable keys are refused by the base class
            line = key_node.start_mark.line + 1
            if key in seen:
                raise InputError(f"key {key!r} is given twice (lines {seen[key]} and {line}); YAML would "
                                 "silently keep the last one", where=f"{self.where}, line {line}",
                                 fix="keep one of them")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def key_lines(node: yaml.Node | None, prefix: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Line (1-based) of every mapping key and sequence item, by its key path."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = prefix + (k.value,)
            out[key] = k.start_mark.line + 1
            key_lines(v, key, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            out[prefix + (i,)] = v.start_mark.line + 1
            key_lines(v, prefix + (i,), out)
    return out


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> tuple[Any, dict[tuple, int]]:
    """``(data, key lines)`` of a YAML file; every problem is one InputError naming file and line."""
    path = Path(path)
    text = read_text(path, what)
    loader = type("Loader", (_Loader,), {"where": str(path)})
    try:
        node = yaml.compose(text, Loader=loader)
        data = yaml.load(text, Loader=loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{path}, line {mark.line + 1}" if mark is not None else str(path)
        raise InputError(f"invalid YAML ({getattr(e, 'problem', None) or e.__class__.__name__})", where=at,
                         fix="fix the YAML syntax (indentation, colons, quotes)") from None
    return data, key_lines(node)


def load_config_section(path: str | os.PathLike, section: str, what: str) -> dict[str, Any]:
    """The options of a config file: a run's ``config.yaml`` (its ``section``) or a flat mapping.

    ``what`` names the file in errors (``"train config"``).
    """
    data, _ = load_yaml(Path(path), what)
    data = data or {}
    if not isinstance(data, dict):
        raise InputError("top level is not a mapping", where=str(path), fix="write key: value lines")
    if section in data and isinstance(data[section], dict):
        data = data[section]
    return dict(data)


"""The one YAML reader of cxrbench's config files (study configs, csv mappings, run configs,
``--config`` files, prompt files).

:func:`load_yaml` reads UTF-8 text through :func:`cxrbench.common.fileio.read_text` (so a missing,
unreadable or non-UTF-8 file is one InputError), parses it safely, refuses a key given twice in one
mapping (naming both lines: YAML would silently keep the last one), and returns the line of every
key by its path, for error messages that point at the line.

Bounded: a config is small, so every read is bounded in time and memory whatever the text. The file
may hold at most :data:`MAX_BYTES`; the document is composed once (aliases share their node, so this
is linear in the text) and its size *as if every alias were expanded* is counted before anything is
built or walked, memoized per node (linear too): beyond :data:`MAX_NODES` nodes, deeper than
:data:`MAX_DEPTH` levels or an alias inside its own anchor, the read stops with one InputError. The
"billion laughs" shape (nested anchors, 9 aliases per level) is refused in milliseconds instead of
expanding to millions of nodes. :func:`load_yaml_text` is the same reader for text that is not a
file of the user's (a packaged config, a file cxrbench wrote).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import read_text

MAX_BYTES = 1 << 20  # a config file larger than 1 MiB is not a config file
MAX_NODES = 100_000  # scalars, mappings and sequences once aliases are expanded
MAX_DEPTH = 64  # nesting of mappings and sequences


class _Loader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys (``where`` is set per file)."""

    where = "YAML file"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` merges a mapping (SafeLoader flattens it below)
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


def _bounded(node: yaml.Node | None, where: str) -> None:
    """Refuse a document whose alias-expanded size or depth passes the limits (one InputError)."""
    sizes: dict[int, int] = {}  # id(node) -> expanded size, memoized: every node is sized once
    open_: set[int] = set()

    def refuse(what: str, mark: yaml.Mark) -> InputError:
        return InputError(what, where=f"{where}, line {mark.line + 1}",
                          fix="write the values out instead of nesting anchors and aliases (&name / *name)")

    def size(n: yaml.Node, depth: int) -> int:
        if id(n) in sizes:
            return sizes[id(n)]
        if id(n) in open_:
            raise refuse("an alias refers to the anchor it is inside (a recursive structure)", n.start_mark)
        if depth > MAX_DEPTH:
            raise refuse(f"nested deeper than {MAX_DEPTH} levels", n.start_mark)
        total = 1
        if isinstance(n, yaml.CollectionNode):
            open_.add(id(n))
            children = (c for pair in n.value for c in pair) if isinstance(n, yaml.MappingNode) else n.value
            for child in children:
                total += size(child, depth + 1)
                if total > MAX_NODES:
                    raise refuse(f"expands to more than {MAX_NODES:,} values once its aliases are expanded",
                                 n.start_mark)
            open_.discard(id(n))
        sizes[id(n)] = total
        return total

    if node is not None:
        size(node, 0)


def load_yaml_text(text: str, where: str = "YAML text") -> tuple[Any, dict[tuple, int]]:
    """``(data, key lines)`` of YAML ``text`` (``where`` names it in errors), bounded as :func:`load_yaml`."""
    if len(text) > MAX_BYTES:
        raise InputError(f"is {len(text):,} characters long; a config holds at most {MAX_BYTES:,}",
                         where=where, fix="check that this is the config file you meant")
    loader = type("Loader", (_Loader,), {"where": where})(text)
    try:
        node = loader.get_single_node()
        _bounded(node, where)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f"{where}, line {mark.line + 1}" if mark is not None else where
        raise InputError(f"invalid YAML ({getattr(e, 'problem', None) or e.__class__.__name__})", where=at,
                         fix="fix the YAML syntax (indentation, colons, quotes)") from None
    except RecursionError:  # the composer nests deeper than Python's stack before _bounded sees it
        raise InputError(f"nested deeper than {MAX_DEPTH} levels", where=where,
                         fix="write a flatter document") from None
    finally:
        loader.dispose()
    return data, key_lines(node)


def load_yaml(path: str | os.PathLike, what: str = "YAML file") -> tuple[Any, dict[tuple, int]]:
    """``(data, key lines)`` of a YAML file; every problem is one InputError naming file and line."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = 0  # read_text names the problem
    if size > MAX_BYTES:
        raise InputError(f"the {what} is {size:,} bytes; a config file holds at most {MAX_BYTES:,}",
                         where=str(path), fix="check that this is the config file you meant")
    return load_yaml_text(read_text(path, what), str(path))


def load_config_section(path: str | os.PathLike, section: str, what: str) -> dict[str, Any]:
    """The options of a config file: a run's ``config.yaml`` (its ``section``) or a flat mapping.

    ``what`` names the file in errors (``"train config"``).
    """
    data, _ = load_yaml(Path(path), what)
    if data is None:
        raise InputError(f"the {what} file is empty (no key: value lines)", where=str(path),
                         fix="write the options as key: value lines, or leave the file out")
    if not isinstance(data, dict):
        raise InputError("top level is not a mapping", where=str(path), fix="write key: value lines")
    if section in data and isinstance(data[section], dict):
        data = data[section]
    return dict(data)


"""Loading a study YAML: line numbers of every key, ``$VAR`` expansion in paths, validation, and
one InputError (file, line, key path, closest valid key) for the first problem.

Paths in the file (dataset roots, ``out``) may use ``~``, ``$VAR``, ``${VAR}`` and
``${VAR:-default}``; relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from cxrbench.common.errors import InputError
from cxrbench.common.validation import closest, raised_input_error
from cxrbench.common.yamlio import load_yaml
from cxrbench.study.config import (
    ComparisonSpec,
    DatasetSpec,
    EvaluationSpec,
    ExternalSpec,
    InitSpec,
    LoadedStudy,
    PhantomSpec,
    RecipeSpec,
    StudyConfig,
)
from cxrbench.study.runtime_config import ExecutorSpec, TrackerSpec
from cxrbench.study.sections import PowerSpec, TuningSpec

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def _line_of(lines: dict[tuple, int], loc: tuple) -> int | None:
    loc = tuple(loc)
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None


def expand_path(value: str, base: Path, where: str) -> Path:
    """Expand ``~`` and ``$VAR``/``${VAR}``/``${VAR:-default}``; relative paths are relative to ``base``."""

    def sub(m: re.Match) -> str:
        name = m.group(1) or m.group(3)
        if name in os.environ:
            return os.environ[name]
        if m.group(2) is not None:
            return m.group(2)
        raise InputError(
            f"environment variable ${name} is not set",
            where=where,
            fix=f"export {name}=/path/to/data, or write ${{{name}:-default}} in the config",
        )

    p = Path(os.path.expanduser(_ENV.sub(sub, value)))
    return p if p.is_absolute() else (base / p)


def _validation_error(err: ValidationError, where: str, lines: dict[tuple, int]) -> InputError:
    inner = raised_input_error(err)  # an InputError a validator raised: as it was
    if inner is not None:
        return inner
    errors = err.errors()
    # a typo makes two errors (unknown key + missing key): report the typo, it is the cause
    first = next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])
    loc = tuple(first.get("loc", ()))
    # pydantic adds the union branch/literal name to the location; keep the key path only
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith(("tuple[", "literal[", "dict["))))
    key = ".".join(str(p) for p in loc) or "(top level)"
    line = _line_of(lines, loc)
    at = f"{where}, line {line}" if line else where
    kind = first.get("type")
    if kind == "extra_forbidden":
        parent_model = _model_at(loc[:-1])
        place = _known_elsewhere(str(loc[-1]), parent_model)
        if place is not None:  # a known key in the wrong place: say where it goes, never "remove it"
            kind_of, there = place
            return InputError(f"key {key!r} is in the wrong place: {str(loc[-1])!r} is {kind_of}", where=at,
                              fix=f"move it {there} (see docs/study.md)")
        hint = closest(str(loc[-1]), parent_model.model_fields) if parent_model else None
        fix = (
            f"did you mean {hint!r}?"
            if hint
            else (
                f"remove it; allowed keys here: {', '.join(parent_model.model_fields)}"
                if parent_model
                else "remove it"
            )
        )
        return InputError(f"unknown key {key!r}", where=at, fix=fix)
    if kind == "missing":
        return InputError(f"key {key!r} is required", where=at, fix="add it (see docs/study.md)")
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    given = first.get("input")
    shown = "" if isinstance(given, dict | list) else f" (got {given!r})"
    return InputError(f"{key}: {msg}{shown}", where=at, fix="correct the value (see docs/study.md)")


def _known_elsewhere(key: str, parent: type[BaseModel] | None) -> tuple[str, str] | None:
    """``(what the key is, where it goes)`` for a key unknown under ``parent`` but known elsewhere in
    a study config (e.g. ``mapping`` at a dataset's level: an index option, under ``options:``)."""
    from cxrbench.index.sources.base import IndexOptions
    from cxrbench.train.config import TrainConfig

    own = ("labels", "uncertain", "views", "split_seed")
    places: list[tuple[Any, str, str]] = [
        (DatasetSpec, "a key of a dataset", "into the dataset's section: datasets: {NAME: {KEY: ...}}"),
        ([k for k in IndexOptions.model_fields if k not in own], "an index option",
         "under the dataset's options: datasets: {NAME: {options: {KEY: ...}}}"),
        (PhantomSpec, "a phantom setting", "under the dataset's phantom:"),
        (InitSpec, "a key of an init", "into the init's section: inits: {NAME: {KEY: ...}}"),
        (EvaluationSpec, "an evaluation setting", "under evaluation:"),
        (ComparisonSpec, "a comparison setting", "under comparisons:"),
        (ExecutorSpec, "an executor setting", "under executor:"),
        (StudyConfig, "a top-level key of the study", "to the top level (no indentation)"),
        (TrainConfig, "a training setting", "under train: (or an init's train:)"),
    ]
    for holder, kind_of, there in places:
        keys = getattr(holder, "model_fields", holder)
        if key in keys and holder is not parent:
            return kind_of, there.replace("KEY", key)
    return None


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model that a key path points into (for 'did you mean' hints)."""
    model: type[BaseModel] | None = StudyConfig
    i = 0
    while model is not None and i < len(loc):
        name = loc[i]
        field = model.model_fields.get(str(name))
        if field is None:
            return None
        ann = field.annotation
        text = str(ann)
        nxt: type[BaseModel] | None = None
        for cand in (
            DatasetSpec,
            RecipeSpec,
            InitSpec,
            EvaluationSpec,
            ComparisonSpec,
            ExternalSpec,
            PhantomSpec,
            ExecutorSpec,
            TrackerSpec,
            PowerSpec,
            TuningSpec,
        ):
            if cand.__name__ in text or ann is cand:
                nxt = cand
                break
        if nxt is None:
            return None
        # dict[str, Model] and tuple[Model, ...] consume one more path element (the key or index)
        if "dict[" in text or "tuple[" in text:
            i += 1
        model, i = nxt, i + 1
    return model


def parse_study(data: Any, where: str = "study config", lines: dict[tuple, int] | None = None) -> StudyConfig:
    """Validate a study mapping; one InputError (file, line, key, fix) on the first problem."""
    if not isinstance(data, dict):
        raise InputError(
            "the top level is not a mapping", where=where, fix="write `name: ...`, `datasets: ...` lines"
        )
    _check_init_list(data.get("inits"), where, lines or {})
    try:
        cfg = StudyConfig(**data)
    except ValidationError as e:
        raise _validation_error(e, where, lines or {}) from None
    _check_train_keys(cfg, where, lines or {})
    _check_inits(cfg, where, lines or {})
    return cfg


def _at(where: str, lines: dict[tuple, int], loc: tuple) -> str:
    line = _line_of(lines, loc)
    return f"{where}, line {line}" if line else where


def _check_init_list(inits: Any, where: str, lines: dict[tuple, int]) -> None:
    """A list of init names that names one twice (it would collapse into one arm silently)."""
    if not isinstance(inits, list):
        return
    seen: dict[str, int] = {}
    for i, item in enumerate(inits):
        if isinstance(item, str) and item in seen:
            first, again = _line_of(lines, ("inits", seen[item])), _line_of(lines, ("inits", i))
            raise InputError(f"init {item!r} is listed twice (lines {first} and {again})",
                             where=_at(where, lines, ("inits", i)), fix="list each init once")
        seen.setdefault(item if isinstance(item, str) else str(i), i)


def _check_inits(cfg: StudyConfig, where: str, lines: dict[tuple, int]) -> None:
    """Every init name resolvable now (so --dry-run refuses a typo), and no two identical arms."""
    from cxrbench.models.resolve import parse_init, resolve_init

    arms: dict[str, str] = {}
    for label, spec in cfg.inits.items():
        pretrained = spec.domain is not None or spec.ssl is not None
        names = [("base", spec.base)] if pretrained else [("init", spec.init)]
        for key, name in names:
            if name is None:
                continue
            try:
                kind = parse_init(name).kind
                if kind in ("registered", "random", "timm"):  # a checkpoint may not exist yet
                    resolve_init(name)
            except InputError as e:
                raise InputError(e.what, where=_at(where, lines, ("inits", label, key)), fix=e.fix) from None
        _check_methods(cfg, label, where, lines)
        same = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
        if same in arms:
            other = arms[same]
            a, b = _line_of(lines, ("inits", other)), _line_of(lines, ("inits", label))
            raise InputError(f"inits {other!r} and {label!r} are the same arm ({spec.init} with the same "
                             f"settings; lines {a} and {b})", where=_at(where, lines, ("inits", label)),
                             fix="remove one, or give them different settings")
        arms[same] = label


def _check_methods(cfg: StudyConfig, label: str, where: str, lines: dict[tuple, int]) -> None:
    """Every adaptation method of an init arm accepts its init (zero-shot needs a text tower)."""
    from cxrbench.train.methods import get_method

    spec = cfg.inits[label]
    own = spec.adaptations is not None
    for i, m in enumerate(spec.adaptations if spec.adaptations is not None else cfg.adaptations):
        loc: tuple = ("inits", label, "adaptations", i) if own else ("adaptations", i)
        if _line_of(lines, loc) is None:
            loc = ("inits", label, "init")
        try:
            get_method(m).check_init(spec.init, where=f"inits.{label}")
        except InputError as e:
            raise InputError(f"inits.{label}: {e.what}", where=_at(where, lines, loc), fix=e.fix) from None


def _check_ssl_keys(options: dict[str, Any], loc: tuple, where: str, lines: dict[tuple, int]) -> None:
    """The pretrain section of an ``ssl:`` arm against the ``cxrbench pretrain`` schema."""
    from cxrbench.pretrain.config import RUN_OWNED_KEYS, PretrainConfig

    for k in options:
        if k in RUN_OWNED_KEYS:
            raise InputError(f"{'.'.join(map(str, loc))}.{k} is set by the study for the pretraining run",
                             where=_at(where, lines, loc + (k,)),
                             fix="name datasets with pretrain.datasets / pretrain.unlabeled, the start "
                                 "with base:")
    try:
        PretrainConfig.from_dict({"caches": ["x"], "init": "x", "out": "x", **options},
                                 where=f"{where}: {'.'.join(map(str, loc))}")
    except InputError as e:
        key = next((k for k in options if k in e.what or k in (e.where or "")), None)
        raise InputError(e.what, where=_at(where, lines, loc + ((key,) if key else ())), fix=e.fix) from None


def _check_train_keys(cfg: StudyConfig, where: str, lines: dict[tuple, int]) -> None:
    """Validate the train sections against the training config schema (unknown keys, bad values)."""
    from cxrbench.train.config import RUN_OWNED_KEYS, TrainConfig

    sections: list[tuple[tuple, dict]] = [(("train",), cfg.train)]
    for label, spec in cfg.inits.items():
        sections.append((("inits", label, "train"), spec.train))
        if spec.ssl is not None:
            _check_ssl_keys(spec.ssl_options(), ("inits", label, "pretrain"), where, lines)
        else:
            sections.append((("inits", label, "pretrain"), spec.pretrain))
        sections += [
            (("inits", label, "recipe_train", r), {**spec.train, **o}) for r, o in spec.recipe_train.items()
        ]
    for loc, section in sections:
        for k in section:
            if k in RUN_OWNED_KEYS:
                line = _line_of(lines, loc + (k,))
                raise InputError(
                    f"{'.'.join(map(str, loc))}.{k} is set by the study for every run",
                    where=f"{where}, line {line}" if line else where,
                    fix="remove it (datasets, recipes and inits define it)",
                )
        merged = {**cfg.train, **section} if loc != ("train",) else section
        try:
            TrainConfig.model_validate({**merged, "cache": "x", "init": "x", "out": "x"})
        except ValidationError as e:
            inner = raised_input_error(e)
            if inner is not None:
                raise inner from None
            first = e.errors()[0]
            key = str(first.get("loc", ("?",))[0])
            line = _line_of(lines, loc + (key,)) or _line_of(lines, ("train", key))
            at = f"{where}, line {line}" if line else where
            dotted = ".".join(map(str, loc)) + "." + key
            if first.get("type") == "extra_forbidden":
                hint = closest(key, [f for f in TrainConfig.model_fields if f not in RUN_OWNED_KEYS])
                raise InputError(
                    f"unknown training key {dotted!r}",
                    where=at,
                    fix=f"did you mean {hint!r}?" if hint else "see `cxrbench train --help`",
                ) from None
            msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
            raise InputError(
                f"{dotted}: {msg} (got {first.get('input')!r})",
                where=at,
                fix="correct the value (see `cxrbench train --help`)",
            ) from None


DICT_SOURCE = "<study dict>"  # the name a study given as a dict goes by (its folder: the current one)


def load_study(path: str | os.PathLike | Mapping[str, Any],
               out: str | os.PathLike | None = None) -> LoadedStudy:
    """Read and validate a study config, a YAML file or a dict; resolve its output folder and roots.

    Args:
        path: the STUDY.yaml file, or the same config as a dict (``{"name": ..., "datasets": ...,
            "inits": ...}``, keys as in docs/study.md; paths may be ``Path`` objects; relative paths
            are relative to the current directory).
        out: overrides the config's ``out`` (relative to the current directory).

    Returns:
        :class:`~cxrbench.study.config.LoadedStudy`: ``.config`` (the validated, frozen
        :class:`~cxrbench.study.config.StudyConfig`), ``.out`` (the study folder), ``.roots``
        (dataset -> folder), ``.layout`` (every path of the study folder). A problem is one
        InputError naming the file, line and key (``unknown key 'seed'. Fix: did you mean 'seeds'?``).

    Example::

        study = cxrbench.load_study({
            "name": "mini", "seeds": [0, 1],
            "datasets": {"a": {"adapter": "nih", "phantom": {"patients": 60, "size": 32}}},
            "inits": ["random-vit-test"], "train": {"epochs": 2, "batch_size": 8},
        }, out="studies/mini")
        cxrbench.run_study(study, device="cpu")
    """
    if isinstance(path, Mapping):
        data = _plain(path)
        return resolve(parse_study(data, DICT_SOURCE), Path.cwd() / DICT_SOURCE, out)
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise InputError(
            "study config not found", where=where, fix="check the path (e.g. configs/study-2024.yaml)"
        )
    data, lines = load_yaml(path, "study config")
    cfg = parse_study(data, where, lines)
    return resolve(cfg, path, out)


def resolve(cfg: StudyConfig, path: str | os.PathLike, out: str | os.PathLike | None = None) -> LoadedStudy:
    """Resolve the output folder and the dataset roots of a validated config loaded from ``path``."""
    path = Path(path)
    base = path.resolve().parent
    where = str(path)
    if out is not None:
        out_dir = Path(out).resolve()
    elif cfg.out is not None:
        out_dir = expand_path(cfg.out, base, f"{where}: out").resolve()
    else:
        out_dir = base / cfg.name
    roots: dict[str, Path] = {}
    for name, ds in cfg.datasets.items():
        if ds.root is not None:
            roots[name] = expand_path(ds.root, base, f"{where}: datasets.{name}.root").resolve()
        else:
            roots[name] = out_dir / "data" / name
    return LoadedStudy(config=cfg, path=path.resolve(), out=out_dir, roots=roots, train=dict(cfg.train))


def _plain(value: Any) -> Any:
    """A config given from Python as YAML would give it: mappings as dicts, tuples as lists, paths as text."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value

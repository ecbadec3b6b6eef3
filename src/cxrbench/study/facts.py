"""Dataset facts the planner needs before (or without) running anything: a fingerprint of a
dataset's metadata files, and each dataset's (and each domain arm's) finding list, from the built
index when it exists, else from the config's label spec (presets expanded by the one label-spec
parser, :func:`cxrbench.index.findings.expand_label_spec`)."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.study.config import LoadedStudy

_META_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".json", ".yaml", ".yml", ".txt")


_FINGERPRINT_MAX_ENTRIES = 2000  # a folder with more entries is an image folder: not scanned


def source_fingerprint(root: Path) -> list[list[Any]]:
    """(relative path, size, mtime_ns) of the metadata files of a dataset root (depth <= 2).

    Image folders (more than a few thousand entries) are not listed, so this stays fast on
    datasets of hundreds of thousands of images; a changed or replaced CSV changes the index key.
    """
    rows: list[list[Any]] = []

    def scan(folder: Path, depth: int) -> None:
        entries = []
        try:
            with os.scandir(folder) as it:
                for n, e in enumerate(it):
                    if n >= _FINGERPRINT_MAX_ENTRIES:
                        return
                    entries.append(e)
        except OSError:
            return
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            if e.is_file() and e.name.lower().endswith(_META_SUFFIXES):
                st = e.stat()
                rows.append([os.path.relpath(e.path, root), st.st_size, st.st_mtime_ns])
            elif e.is_dir() and depth < 2 and e.name != "_phantom":
                scan(Path(e.path), depth + 1)

    scan(root, 1)
    return rows


def static_findings(study: LoadedStudy, dataset: str) -> list[str] | None:
    """A dataset's findings known from its config alone (label preset or list), else None."""
    from cxrbench.index.findings import expand_label_spec

    spec = study.config.datasets[dataset]
    found = expand_label_spec(spec.labels)
    if spec.findings is not None:
        return [f for f in spec.findings if found is None or f in found]
    return found


@functools.lru_cache(maxsize=256)
def _findings_in(path: str, mtime_ns: int, size: int) -> list[str] | None:
    """The finding list in an index's Parquet metadata (cached per file version); None if unreadable."""
    from cxrbench.index.schema import read_findings

    try:
        return read_findings(path)
    except (InputError, OSError, ValueError):
        return None


def index_findings(study: LoadedStudy, dataset: str) -> list[str] | None:
    """A dataset's findings: from its built index when present, else from its config, else None."""
    path = study.layout.index_file(dataset)
    spec = study.config.datasets[dataset]
    if path.is_file():
        st = path.stat()
        found = _findings_in(str(path), st.st_mtime_ns, st.st_size)
        if found is not None:
            if spec.findings is not None:
                missing = [f for f in spec.findings if f not in found]
                if missing:
                    raise InputError(
                        f"datasets.{dataset}.findings lists {', '.join(missing)}, which the index "
                        "does not have",
                        where=str(study.path),
                        fix=f"the index has: {', '.join(found)}",
                    )
                return list(spec.findings)
            return list(found)
    return static_findings(study, dataset)


def shared_findings(study: LoadedStudy, label: str, target: str, *, static: bool = False) -> list[str] | None:
    """Findings of a ``domain:`` arm on ``target``: the init's ``labels`` for it, else the
    findings the target and the source dataset share (target order); None when not known yet."""
    from cxrbench.index.findings import expand_label_spec

    spec = study.config.inits[label]
    explicit = spec.labels.get(target)
    if explicit is not None:
        return expand_label_spec(explicit)
    get = static_findings if static else index_findings
    t, s = get(study, target), get(study, str(spec.domain))
    if t is None or s is None:
        return None
    shared = [f for f in t if f in set(s)]
    if not shared and not static:
        raise InputError(
            f"{target} and {spec.domain} share no finding, so init {label!r} ({spec.init}) "
            f"cannot be used on {target}",
            where=f"{study.path}: inits.{label}",
            fix=f"set inits.{label}.labels.{target} or restrict the init with 'datasets:'",
        )
    return shared


def legacy_cache_notes(plan: Any) -> list[str]:
    """One line per finished cache made by the legacy resampler (Pillow BOX): what it is, how to
    rebuild it and which steps would rerun downstream. Nothing is rebuilt unless the user asks."""
    from cxrbench.cache.read import recipe_of
    from cxrbench.common.fileio import read_json
    from cxrbench.common.layout import CACHE_MANIFEST

    notes = []
    for step in plan.of_kind("cache"):
        path = step.out / CACHE_MANIFEST
        if step.status != "done" or not path.is_file():
            continue
        try:
            if recipe_of(read_json(path))["resample"] != "pil-box":
                continue
        except (InputError, KeyError, TypeError, ValueError):
            continue
        downstream = [s for s in plan.steps if step.id in plan.closure({s.id}) and s.id != step.id]
        kinds = ", ".join(f"{n} {k}" for k, n in _count_kinds(downstream).items())
        recipe = step.id.split("/")[-1]
        notes.append(f"{step.id} was made by the legacy resampler (Pillow BOX, exact only at integer "
                     f"factors); it stays as it is. To rebuild it exactly, set `resample: area` in "
                     f"preprocess.{recipe}: the cache and {len(downstream)} step(s) downstream would rerun "
                     f"({kinds})")
    return notes


def _count_kinds(steps: list[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in steps:
        out[s.kind] = out.get(s.kind, 0) + 1
    return out

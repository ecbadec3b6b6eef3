"""Which datasets an initialization was pretrained on, and the warning when it is tested on one.

Domain foundation models were pretrained on the public test sets' releases (RAD-DINO and CXformer on
MIMIC-CXR, CheXpert, NIH ChestX-ray14, PadChest and BRAX), so their test scores there can be
inflated. :func:`pretraining_datasets` answers for any init spelling: a registered name from its
:class:`~cxrbench.models.registry.InitSpec` (``pretrained_on``), a ``checkpoint:`` from its
``best.json`` (``pretrained_on``, written by ``cxrbench pretrain``; for a supervised cxrbench run the
dataset of its cache plus its own init's), ``random-*`` none. :func:`contamination_warnings` is what
a study calls with the datasets it tests on; the image-level check is ``cxrbench audit``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cxrbench.common.fileio import read_json


def _checkpoint_datasets(path: Path, depth: int) -> tuple[str, ...] | None:
    meta_path = path.with_suffix(".json")
    meta = read_json(meta_path) if meta_path.is_file() else None
    if not isinstance(meta, dict):
        return None
    if isinstance(meta.get("pretrained_on"), list):
        return tuple(sorted({str(d) for d in meta["pretrained_on"]}))
    found: set[str] = set()
    cache = (meta.get("cache") or {}).get("path") if isinstance(meta.get("cache"), dict) else None
    if cache:  # a supervised cxrbench run: the datasets of its training cache
        from cxrbench.common.layout import CACHE_INDEX

        index = Path(cache) / CACHE_INDEX
        if index.is_file():
            import pyarrow.parquet as pq

            from cxrbench.common.fileio import parquet_errors

            with parquet_errors(index, "index of the checkpoint's training cache", fix="restore the cache"):
                found |= set(pq.read_table(index, columns=["dataset"]).column(0).to_pylist())
    base = meta.get("init")
    if isinstance(base, str) and depth < 8:
        found |= set(pretraining_datasets(base, _depth=depth + 1) or ())
    return tuple(sorted(str(d) for d in found))


def pretraining_datasets(init: str, _depth: int = 0) -> tuple[str, ...]:
    """The datasets ``init``'s weights were pretrained on (empty for random inits and unknown files).

    Raises InputError for an init name that cannot be resolved.
    """
    from cxrbench.models.registry import INITS
    from cxrbench.models.resolve import parse_init, resolve_init

    name = parse_init(init)
    if name.kind == "random":
        return ()
    if name.kind == "registered" and name.value in INITS:
        return tuple(INITS[name.value].pretrained_on)
    if name.kind == "checkpoint":
        r = resolve_init(init)
        return _checkpoint_datasets(Path(str(r.checkpoint)), _depth) or ()
    if name.kind == "registered":
        resolve_init(init)  # raises the unknown-name error
    return ()


def contamination_warnings(init: str, tested_on: Iterable[str]) -> list[str]:
    """One warning line per dataset in ``tested_on`` that ``init`` was pretrained on (empty when clean).

    Args:
        init: an init name (registry entry, or ``checkpoint:PATH`` whose ``best.json`` records it).
        tested_on: the datasets the init is evaluated on (index names: ``nih``, ``mimic``, ...).

    Returns:
        A list of one-line warnings; ``cxrbench audit`` counts the images involved.

    Example::

        cxrbench.contamination_warnings("rad-dino", ["mimic", "nih"])   # RAD-DINO saw MIMIC-CXR
    """
    seen = set(pretraining_datasets(init))
    lines = []
    for ds in dict.fromkeys(str(d) for d in tested_on):
        if ds in seen:
            lines.append(
                f"init {init} was pretrained on {ds}, which it is tested on: its {ds} test images "
                f"may be in its pretraining data and its scores there may be inflated (check with "
                f"`cxrbench audit --init {init} --index INDEX [--pretraining-list FILE]`)"
            )
    return lines

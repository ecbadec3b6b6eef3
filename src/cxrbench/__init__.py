"""cxrbench: which pretrained initialization makes the best chest-radiograph classifier?

Data flows one way: official metadata -> index -> cache -> run -> evaluation -> report. The
package has one folder per stage (``common``, ``index``, ``phantom``, ``cache``, ``data``,
``models``, ``stats``, ``train``, ``evaluate``, ``report``, ``study``, ``commands``); a stage
imports only the stages before it. The front doors (``__all__``) are imported lazily, so
``import cxrbench`` (and ``cxrbench --help``) stays free of torch; each is the stage's own
function or class (``help(cxrbench.evaluate_run)`` shows its signature, parameters and an
example)::

    import cxrbench
    study = cxrbench.load_study("configs/study-2024.yaml")      # or a dict
    summary = cxrbench.run_study(study)
    df = summary.load_results()                                 # results.csv, typed

Every bad input raises :class:`InputError` (a ``ValueError``) with one line naming the problem
and the fix in Python's terms (``on_conflict="overwrite"``, not the CLI's ``--overwrite``);
warnings are :class:`CxrbenchWarning` (``warnings.filterwarnings`` silences them) pointing at the
caller's line. docs/python-api.md walks the whole pipeline from Python.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.2.0"

# name -> module that defines it
_FRONT_DOORS: dict[str, str] = {
    "build_index": "cxrbench.index.build",
    "IndexOptions": "cxrbench.index.sources.base",
    "prepare_cache": "cxrbench.cache.build",
    "open_cache": "cxrbench.cache.read",
    "create_model": "cxrbench.models.build",
    "list_inits": "cxrbench.models.registry",
    "train": "cxrbench",  # the callable package cxrbench.train (see its docstring)
    "TrainConfig": "cxrbench.train.config",
    "pretrain": "cxrbench",  # the callable package cxrbench.pretrain, as train
    "PretrainConfig": "cxrbench.pretrain.config",
    "contamination_warnings": "cxrbench.models.contamination",
    "evaluate_run": "cxrbench.evaluate.run_eval",
    "evaluate_predictions": "cxrbench.evaluate.scoring",
    "compare_predictions": "cxrbench.evaluate.compare",
    "predict_files": "cxrbench.evaluate.predict",
    "run_study": "cxrbench.study.runner",
    "load_study": "cxrbench.study.load",
    "generate_phantom": "cxrbench.phantom.generate",
    "load_predictions": "cxrbench.evaluate.outputs",
    "load_metrics": "cxrbench.evaluate.outputs",
    "load_results": "cxrbench.report.results_table",
    "InputError": "cxrbench.common.errors",
    "CxrbenchWarning": "cxrbench.common.errors",
}
_ALIASES = {"generate_phantom": "generate"}

__all__ = ["__version__", *_FRONT_DOORS]


def __getattr__(name: str) -> Any:
    module = _FRONT_DOORS.get(name)
    if module is None:
        raise AttributeError(f"module 'cxrbench' has no attribute {name!r}")
    if name in ("train", "pretrain"):
        value = importlib.import_module(f"cxrbench.{name}")
    else:
        value = getattr(importlib.import_module(module), _ALIASES.get(name, name))
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FRONT_DOORS))

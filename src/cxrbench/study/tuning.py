"""The study's side of tuning (:mod:`cxrbench.train.tune`): the settings each init arm and adaptation
method is tuned with, from the ``tuning:`` block of the study, its ``methods.<method>`` section and the
init's own ``tuning`` (each level's keys over the one above; ``tuning: false`` on an init turns it off).

An arm is tuned when its merged search space still holds a key once the options of other adaptation
methods are left out (``lora_rank`` is searched for ``lora`` runs only) and its method has a training
recipe at all (a method whose runs do not depend on the seed, such as kNN, chooses its own options on
validation and has nothing to tune).
"""

from __future__ import annotations

from typing import Any

from cxrbench.study.config import InitSpec, StudyConfig
from cxrbench.study.sections import TuningSpec
from cxrbench.train.tune import TuningSettings

_SCALARS = ("strategy", "budget", "epochs", "seed", "eta", "min_epochs", "keep_weights")
_DEFAULTS: dict[str, Any] = {"strategy": "grid", "budget": None, "epochs": None, "eta": 3, "min_epochs": 1,
                             "keep_weights": False}


def arm_tuning(cfg: StudyConfig, spec: InitSpec, method: str) -> TuningSettings | None:
    """The tuning of one init arm with one adaptation method, or None when it is not tuned."""
    from cxrbench.train.methods import get_method, owned_options

    if spec.tuning is False or not get_method(method).stochastic:
        return None
    study = cfg.tuning
    layers: list[TuningSpec] = [x for x in (study, study.methods.get(method) if study else None,
                                            spec.tuning if isinstance(spec.tuning, TuningSpec) else None)
                                if x is not None]
    if not layers:
        return None
    values: dict[str, Any] = {**_DEFAULTS, "seed": cfg.seeds[0]}
    space: dict[str, list[Any]] = {}
    for layer in layers:
        values.update({k: getattr(layer, k) for k in _SCALARS if getattr(layer, k) is not None})
        space.update(layer.space or {})
    owner = owned_options()
    space = {k: v for k, v in space.items() if owner.get(k, method) == method}
    if not space:
        return None
    return TuningSettings(space=space, **values)

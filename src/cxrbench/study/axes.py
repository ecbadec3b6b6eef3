"""The study's side of the axes (:mod:`cxrbench.common.axes`): the conditions a config (and an
init arm's own ``adaptations``) multiplies the runs by."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

from cxrbench.common.axes import (  # noqa: F401  (re-exported: the study's imports of the axes)
    ADAPTATION,
    AXES,
    CONDITION_AXES,
    DEFAULT,
    LABEL_FRACTION,
    LABEL_NOISE,
    RECIPE,
    SEED,
    TUNED,
    TUNING,
    Axis,
    Condition,
)
from cxrbench.study.config import InitSpec, StudyConfig


def axis_values(cfg: StudyConfig, axis: Axis, spec: InitSpec | None = None) -> tuple[Any, ...]:
    """The values of a condition axis for one init arm: the arm's own list when it sets one
    (``adaptations`` of an init), else the study's; the tuning axis: ``default`` and, when a
    ``tuning:`` block tunes one of the arm's methods, ``tuned``."""
    if axis is TUNING:
        arms = [spec] if spec is not None else list(cfg.inits.values())
        tuned = any(tuning_applies(cfg, s, m) for s in arms for m in axis_values(cfg, ADAPTATION, s))
        return (TUNING.default, TUNED) if tuned else (TUNING.default,)
    own = getattr(spec, axis.field, None) if spec is not None else None
    return tuple(own) if own is not None else tuple(getattr(cfg, axis.field))


def tuning_applies(cfg: StudyConfig, spec: InitSpec, method: str) -> bool:
    """Whether the arm has a tuned condition with this adaptation method (:mod:`cxrbench.study.tuning`)."""
    from cxrbench.study.tuning import arm_tuning

    return arm_tuning(cfg, spec, method) is not None


def conditions(cfg: StudyConfig, spec: InitSpec | None = None) -> list[Condition]:
    """Every combination of the condition axes' values (of one init arm, or of the study when
    ``spec`` is None: the union over its arms), default condition first."""
    if spec is None:
        seen = dict.fromkeys(c for s in cfg.inits.values() for c in conditions(cfg, s))
        return sorted(seen, key=lambda c: (not c.is_default,))
    lists = [axis_values(cfg, a, spec) for a in CONDITION_AXES]
    combos = [_labels_apply(Condition(tuple(zip((a.column for a in CONDITION_AXES), vals, strict=True))))
              for vals in itertools.product(*lists)]
    # the tuned recipe: with all labels and no noise, for the methods the arm tunes
    combos = [c for c in combos if c.is_default_for(TUNING.column) or (
        c.is_default_for(LABEL_FRACTION.column) and c.is_default_for(LABEL_NOISE.column)
        and tuning_applies(cfg, spec, c.as_dict[ADAPTATION.column]))]
    return sorted(dict.fromkeys(combos), key=lambda c: (not c.is_default,))


def _labels_apply(cond: Condition) -> Condition:
    """``cond``, with the training-label axes (budget, noise) at their defaults for an adaptation method
    that learns nothing from the training split (zero-shot): such a run is the same at every budget and
    noise level, so it runs once (all labels, no noise) instead of once per value."""
    from cxrbench.train.methods import get_method

    values = cond.as_dict
    if get_method(str(values.get(ADAPTATION.column, ADAPTATION.default))).uses_training_data:
        return cond
    label_axes = {LABEL_FRACTION.column: LABEL_FRACTION.default, LABEL_NOISE.column: LABEL_NOISE.default}
    return Condition(tuple((c, label_axes.get(c, v)) for c, v in cond.values))


def study_axes(cfg: StudyConfig) -> dict[str, list[Any]]:
    """The condition axes with more than one value over the study's arms: column -> values, in
    config order (``{"adaptation": ["full", "linear"]}``)."""
    out = {}
    for a in CONDITION_AXES:
        values = list(dict.fromkeys(v for spec in cfg.inits.values() for v in axis_values(cfg, a, spec)))
        if len(values) > 1:
            out[a.column] = values
    return out


def axis_columns() -> list[str]:
    """The results.csv columns of every axis, in id order."""
    return [a.column for a in AXES]


def iter_values(cfg: StudyConfig) -> Iterator[tuple[Axis, tuple[Any, ...]]]:
    """(axis, its values in the config) for every axis."""
    for a in AXES:
        if a is TUNING:
            yield a, axis_values(cfg, a)
            continue
        values = getattr(cfg, a.field)
        yield a, tuple(values) if not isinstance(values, dict) else tuple(values)

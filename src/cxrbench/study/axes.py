"""Study axes: named lists of conditions that multiply the arms, handled one way everywhere.

An :class:`Axis` is a study config field holding a list of values (``seeds``, ``preprocess``
recipes, ``label_fractions``, ``label_noise``, ...). Every axis value becomes one segment of a
run's step id and folder, and (for the training axes) one training option; the planner, the step
keys, sharding, gathering, ``results.csv`` and the report all go through :data:`AXES`, so a new
axis is one more entry here (and a TrainConfig field).

Key stability: a *training* axis at its default value (the whole training split, no label noise)
adds no id segment, no folder level and no hashed key (the TrainConfig field stays at its
default), so the steps of a study made before the axis existed keep their ids and keys. ``recipe``
and ``seed`` are always shown (they were part of every id from the start).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cxrbench.study.config import StudyConfig


@dataclass(frozen=True)
class Axis:
    """One axis of the study matrix.

    Attributes:
        field: the StudyConfig field listing the values (``label_fractions``).
        column: the results.csv column of one value (``label_fraction``).
        prefix: the id/folder segment of a value is ``prefix + str(value)`` (``f0.25``).
        default: the value that changes nothing (None: the axis is always shown).
        train_key: the TrainConfig field the value sets (None: not a training option).
        label: how the report names the axis.
    """

    field: str
    column: str
    prefix: str
    default: Any = None
    train_key: str | None = None
    label: str = ""

    def segment(self, value: Any) -> str:
        """``f0.25``, ``n0.2``, ``s3``: the id and folder segment of a value."""
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{self.prefix}{text}"

    def shown(self, value: Any) -> bool:
        """Whether the value gets an id segment (always, unless it is the axis default)."""
        return self.default is None or value != self.default


RECIPE = Axis("preprocess", "recipe", "", label="recipe")
SEED = Axis("seeds", "seed", "s", label="seed")
LABEL_FRACTION = Axis("label_fractions", "label_fraction", "f", 1.0, "label_fraction", "label fraction")
LABEL_NOISE = Axis("label_noise", "label_noise", "n", 0.0, "label_noise", "label noise")

# The axes of a training condition, in id order (between the init label and the seed). The
# adaptation axis of the adaptation-methods work plugs in here.
CONDITION_AXES: tuple[Axis, ...] = (LABEL_FRACTION, LABEL_NOISE)
AXES: tuple[Axis, ...] = (RECIPE, *CONDITION_AXES, SEED)


@dataclass(frozen=True)
class Condition:
    """One value per condition axis (the training settings a run differs in besides recipe and seed)."""

    values: tuple[tuple[str, Any], ...]  # (axis column, value), in CONDITION_AXES order

    @property
    def as_dict(self) -> dict[str, Any]:
        return dict(self.values)

    @property
    def is_default(self) -> bool:
        return not self.segments

    @property
    def segments(self) -> tuple[str, ...]:
        """The id/folder segments of the non-default values (``("f0.25",)``); () for the default."""
        by_col = {a.column: a for a in CONDITION_AXES}
        return tuple(by_col[c].segment(v) for c, v in self.values if by_col[c].shown(v))

    @property
    def path(self) -> str:
        """``f0.25/n0.2/`` (empty for the default condition): inserted before the seed segment."""
        return "".join(f"{s}/" for s in self.segments)

    @property
    def name(self) -> str:
        """A readable name for the report: ``label fraction 0.25, label noise 0.2`` (or ``default``)."""
        by_col = {a.column: a for a in CONDITION_AXES}
        parts = [f"{by_col[c].label} {v:g}" if isinstance(v, float) else f"{by_col[c].label} {v}"
                 for c, v in self.values if by_col[c].shown(v)]
        return ", ".join(parts) or "all labels"

    def train_overrides(self, seed: int) -> dict[str, Any]:
        """The TrainConfig options of this condition (only the non-default ones, so keys of the
        default condition never move); the label budget and noise are drawn from the run's seed."""
        by_col = {a.column: a for a in CONDITION_AXES}
        out = {by_col[c].train_key: v for c, v in self.values if by_col[c].shown(v) and by_col[c].train_key}
        if "label_fraction" in out or "label_noise" in out:
            out["label_seed"] = seed
        return out


DEFAULT = Condition(tuple((a.column, a.default) for a in CONDITION_AXES))


def conditions(cfg: StudyConfig) -> list[Condition]:
    """Every combination of the condition axes' values, default condition first."""
    lists = [tuple(getattr(cfg, a.field)) for a in CONDITION_AXES]
    combos = [Condition(tuple(zip((a.column for a in CONDITION_AXES), vals, strict=True)))
              for vals in itertools.product(*lists)]
    return sorted(combos, key=lambda c: (not c.is_default,))


def axis_columns() -> list[str]:
    """The results.csv columns of every axis, in id order."""
    return [a.column for a in AXES]


def iter_values(cfg: StudyConfig) -> Iterator[tuple[Axis, tuple[Any, ...]]]:
    """(axis, its values in the config) for every axis."""
    for a in AXES:
        values = getattr(cfg, a.field)
        yield a, tuple(values) if not isinstance(values, dict) else tuple(values)

"""Study axes: named lists of conditions that multiply the arms, handled one way everywhere.

An :class:`Axis` is a study config field holding a list of values (``seeds``, ``preprocess``
recipes, ``adaptations``, ``label_fractions``, ``label_noise``). Every axis value becomes one
segment of a run's step id and folder, and (for the training axes) one training option; the
planner, the step keys, sharding, gathering, ``results.csv`` and the report all go through these
definitions, so a new axis is one more entry here (a StudyConfig list and a TrainConfig field).

Key stability: a *training* axis at its default value (full fine-tuning, the whole training split,
no label noise) adds no id segment, no folder level and no hashed key (the TrainConfig field stays
at its default), so the steps of a study made before the axis existed keep their ids and keys.
``recipe`` and ``seed`` are always shown (they were part of every id from the start).

Lives in ``common`` because the planner (study) and the report (which comes before study) both
read it: one home for the axis names, defaults and labels.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


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
        default_text: how the report names the default value.
    """

    field: str
    column: str
    prefix: str
    default: Any = None
    train_key: str | None = None
    label: str = ""
    default_text: str = ""  # how the report names the default value ("all labels")

    def segment(self, value: Any) -> str:
        """``f0.25``, ``n0.2``, ``s3``: the id and folder segment of a value."""
        text = f"{value:g}" if isinstance(value, float) else str(value)
        return f"{self.prefix}{text}"

    def shown(self, value: Any) -> bool:
        """Whether the value gets an id segment (always, unless it is the axis default)."""
        return self.default is None or not self.same(value, self.default)

    @property
    def numeric(self) -> bool:
        """Whether values are numbers (drawn as curves) rather than names (adaptation methods)."""
        return isinstance(self.default, float)

    def same(self, a: Any, b: Any) -> bool:
        """Equality of two values as read back from a table (``0.5`` == ``"0.5"``; NaN/None is the
        default: rows written before the axis existed)."""
        a = self.default if _missing(a) else a
        b = self.default if _missing(b) else b
        if self.numeric:
            try:
                return float(a) == float(b)
            except (TypeError, ValueError):
                return False
        return str(a) == str(b)

    def text(self, value: Any) -> str:
        """``label fraction 0.25``, ``adaptation lora``."""
        v = f"{float(value):g}" if self.numeric else str(value)
        return f"{self.label} {v}"


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def is_default(column: str, value: Any) -> bool:
    """Whether ``value`` is the default of the condition axis ``column`` (True for unknown columns'
    missing values)."""
    axis = BY_COLUMN.get(column)
    return _missing(value) if axis is None or axis.default is None else axis.same(value, axis.default)


RECIPE = Axis("preprocess", "recipe", "", label="recipe")
SEED = Axis("seeds", "seed", "s", label="seed")
LABEL_FRACTION = Axis("label_fractions", "label_fraction", "f", 1.0, "label_fraction", "label fraction",
                      "all labels")
LABEL_NOISE = Axis("label_noise", "label_noise", "n", 0.0, "label_noise", "label noise", "clean labels")
ADAPTATION = Axis("adaptations", "adaptation", "", "full", "adaptation", "adaptation", "full fine-tuning")
# the training recipe: the study's (default) or each arm's values chosen on validation (a `tuning:` block)
TUNING = Axis("tuning", "tuning", "", "default", None, "recipe", "default recipe")
TUNED = "tuned"  # the value of the tuned condition

# The axes of a training condition, in id order (between the init label and the seed).
CONDITION_AXES: tuple[Axis, ...] = (ADAPTATION, LABEL_FRACTION, LABEL_NOISE, TUNING)
BY_COLUMN: dict[str, Axis] = {a.column: a for a in (RECIPE, SEED, *CONDITION_AXES)}
CONDITION_DEFAULTS: dict[str, Any] = {a.column: a.default for a in CONDITION_AXES}
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

    def is_default_for(self, column: str) -> bool:
        """Whether this condition's value of the axis ``column`` is its default."""
        return is_default(column, self.as_dict.get(column))

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
        return condition_name(self.as_dict)

    def train_overrides(self, seed: int) -> dict[str, Any]:
        """The TrainConfig options of this condition (only the non-default ones, so keys of the
        default condition never move); the label budget and noise are drawn from the run's seed."""
        by_col = {a.column: a for a in CONDITION_AXES}
        out: dict[str, Any] = {}
        for c, v in self.values:
            key = by_col[c].train_key
            if key and by_col[c].shown(v):
                out[key] = v
        if "label_fraction" in out or "label_noise" in out:
            out["label_seed"] = seed
        return out


def condition_name(values: dict[str, Any], varying: Iterable[str] = ()) -> str:
    """``adaptation lora, label fraction 0.25`` for the non-default values of ``values`` (column ->
    value); for the default condition the default names of the ``varying`` axes (``full
    fine-tuning, all labels``), or ``all labels``."""
    parts = [BY_COLUMN[c].text(v) for c, v in values.items()
             if c in CONDITION_DEFAULTS and not is_default(c, v)]
    defaults = [BY_COLUMN[c].default_text for c in CONDITION_DEFAULTS if c in set(varying)]
    return ", ".join(parts) or ", ".join(defaults) or LABEL_FRACTION.default_text


DEFAULT = Condition(tuple((a.column, a.default) for a in CONDITION_AXES))

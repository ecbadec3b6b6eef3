"""Hyper-parameter tuning on the validation split: every initialization gets its own best recipe.

A **search space** maps training options (``TrainConfig`` keys: ``lr``, ``weight_decay``, ``epochs``,
``patience``, ``layer_decay``, ``lora_rank``, ...) to the values to try; its **points** are the grid in
the order given (the first key varies slowest). A **strategy** spends a **budget** (trial-epochs per
arm: the sum over trials of the epochs each is trained for) on them:

* ``grid``: every point trained for the tuning schedule's ``epochs``; when the grid costs more than the
  budget, a random subset of ``budget // epochs`` points (seeded, kept in grid order: random search);
* ``halving`` (successive halving, Jamieson & Talwalkar 2016): ``n`` points trained for ``min_epochs``,
  the best ``n // eta`` of them again for ``eta`` times as many epochs, and so on until one point is
  left or the tuning schedule's ``epochs`` is reached; ``n`` is the most points the budget affords
  (all of them without a budget). Each rung retrains from scratch (a new schedule, no resumed run).

Every trial runs on **one seed** and reads **only the train and val splits**: it runs under
:func:`cxrbench.data.dataset.only_splits` (``train``, ``val``), so opening the test split raises. The
**selection metric** is the validation mean AUROC over the dataset's findings (the run's best epoch,
``best.json``'s ``metric``). **Tie rule**: values equal to 4 decimals are tied, and among tied points
the one listed first in the search space wins (the earliest grid point). With ``halving`` the choice
is made among the trials of the last rung.

The Python door is :func:`tune` (every trial, then the choice). A study runs the same pieces as steps:
:func:`run_trial` per trial (parallel, resumable), :func:`select_trials` for the choice, and its final
runs read the chosen values with :func:`chosen_options`.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_write_json, read_json_or_none
from cxrbench.common.layout import RUN_BEST_WEIGHTS, RUN_LAST

Strategy = Literal["grid", "halving"]
STRATEGIES: tuple[str, ...] = ("grid", "halving")
METRIC = "val_mean_auroc"
TIE_DECIMALS = 4
TIE_RULE = (
    f"highest validation mean AUROC; values equal to {TIE_DECIMALS} decimals are tied and the point "
    "listed first in the search space wins"
)
TRIAL_FILE = "trial.json"
TUNING_FILE = "tuning.json"
TUNING_FORMAT = "cxrbench.tuning/1"
TRIAL_RUN = "run"  # the training run folder inside a trial folder
# options a search space may not hold: what the data, the run or the study decide
NOT_TUNABLE: frozenset[str] = frozenset(
    {
        "cache",
        "init",
        "out",
        "findings",
        "seed",
        "label_fraction",
        "label_noise",
        "label_seed",
        "adaptation",
        "allow_overlap",
        "keep_shared_head",
        "linear_probe",
    }
)
SPLIT_GUARD = ("train", "val")


@dataclass(frozen=True)
class Rung:
    """One rung of a schedule: ``configs`` points trained for ``epochs`` each."""

    configs: int
    epochs: int


@dataclass(frozen=True)
class TuningSettings:
    """What to search and how (see the module doc). ``epochs``: the tuning schedule (None: the run's
    own ``epochs``); ``seed``: the one training seed of every trial; ``keep_weights``: keep each trial's
    ``best.safetensors`` and ``last.pt`` (they are deleted once the trial is recorded: trials are never
    evaluated)."""

    space: Mapping[str, Sequence[Any]]
    strategy: Strategy = "grid"
    budget: int | None = None
    epochs: int | None = None
    seed: int = 0
    eta: int = 3
    min_epochs: int = 1
    keep_weights: bool = False

    def points(self) -> list[dict[str, Any]]:
        """The grid, in search-space order (the first key varies slowest)."""
        return grid_points(self.space)

    @property
    def searches_epochs(self) -> bool:
        """Whether ``epochs`` is a searched key (then every trial trains for its point's epochs)."""
        return "epochs" in self.space

    def trial_epochs(self, rung: Rung) -> int | None:
        """The epochs a trial of ``rung`` is trained for (None: its point's own, when searched)."""
        return None if self.searches_epochs else rung.epochs

    def schedule(self, run_epochs: int) -> tuple[list[int], list[Rung]]:
        """``(indices of the points tried, rungs)`` for runs whose own schedule is ``run_epochs``; the
        budget counts a searched ``epochs`` at its largest value. Refuses a searched ``epochs`` with a
        schedule of its own (``tuning.epochs`` or successive halving)."""
        if self.searches_epochs and (self.epochs is not None or self.strategy == "halving"):
            raise InputError("epochs is searched and also set by the tuning schedule",
                             where="tuning.space.epochs",
                             fix="search epochs with the grid strategy and no tuning.epochs, or search early "
                             "stopping (patience) instead")
        longest = max(int(e) for e in self.space["epochs"]) if self.searches_epochs else None
        return schedule(
            len(self.points()),
            self.strategy,
            longest or self.epochs or run_epochs,
            self.budget,
            eta=self.eta,
            min_epochs=self.min_epochs,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "space": {k: list(v) for k, v in self.space.items()},
            "strategy": self.strategy,
            "budget": self.budget,
            "epochs": self.epochs,
            "seed": self.seed,
            "eta": self.eta,
            "min_epochs": self.min_epochs,
            "keep_weights": self.keep_weights,
        }


def check_space(
    space: Mapping[str, Sequence[Any]], base: Mapping[str, Any], where: str
) -> dict[str, list[Any]]:
    """A validated search space: known, tunable ``TrainConfig`` keys, non-empty lists without repeats,
    every value valid on top of the ``base`` options (one InputError naming the key otherwise)."""
    from cxrbench.common.validation import closest
    from cxrbench.train.config import RUNTIME_KEYS, TrainConfig

    out: dict[str, list[Any]] = {}
    fields = [f for f in TrainConfig.model_fields if f not in NOT_TUNABLE and f not in RUNTIME_KEYS]
    for key, values in space.items():
        if key not in fields:
            hint = closest(str(key), fields)
            raise InputError(
                f"{key!r} cannot be tuned"
                + (" (set by the study or the data)" if key in NOT_TUNABLE or key in RUNTIME_KEYS else ""),
                where=f"{where}.space.{key}",
                fix=(f"did you mean {hint!r}? " if hint else "") + "tunable: lr, weight_decay, "
                "epochs, patience, layer_decay, lora_rank, warmup_epochs, ... (TrainConfig keys)",
            )
        values = [values] if isinstance(values, str) or not isinstance(values, Sequence) else list(values)
        if not values or len({repr(v) for v in values}) != len(values):
            raise InputError(
                f"the values of {key!r} must be a non-empty list without repeats",
                where=f"{where}.space.{key}",
                fix="e.g. lr: [1e-5, 3e-5, 1e-4]",
            )
        for v in values:
            TrainConfig.from_dict(
                {**base, "cache": "-", "init": "-", "out": "-", key: v}, where=f"{where}.space.{key}"
            )
        out[str(key)] = values
    return out


def grid_points(space: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the space's values, the first key varying slowest."""
    keys = list(space)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(space[k] for k in keys))]


def _cost(rungs: Sequence[Rung]) -> int:
    return sum(r.configs * r.epochs for r in rungs)


def _rungs(n: int, strategy: str, epochs: int, eta: int, min_epochs: int) -> list[Rung]:
    if strategy == "grid" or n <= 1:
        return [Rung(n, epochs)]
    out, k, e = [], n, max(1, min(min_epochs, epochs))
    while True:
        out.append(Rung(k, min(e, epochs)))
        if e >= epochs or k <= 1:
            return out
        k, e = max(1, k // eta), e * eta


def schedule(
    n_points: int,
    strategy: str,
    epochs: int,
    budget: int | None = None,
    *,
    eta: int = 3,
    min_epochs: int = 1,
    seed: int = 0,
) -> tuple[list[int], list[Rung]]:
    """``(indices of the points tried, rungs)``: the most points whose schedule fits ``budget``
    trial-epochs (all without one), a seeded random subset in grid order when that is fewer than all."""
    if strategy not in STRATEGIES:
        raise InputError(
            f"unknown tuning strategy {strategy!r}",
            where="tuning.strategy",
            fix=f"use one of {', '.join(STRATEGIES)}",
        )
    if n_points < 1:
        raise InputError("the search space is empty", where="tuning.space", fix="list values to try")
    n = n_points
    if budget is not None:
        while n >= 1 and _cost(_rungs(n, strategy, epochs, eta, min_epochs)) > budget:
            n -= 1
        if n < 1:
            cheapest = _cost(_rungs(1, strategy, epochs, eta, min_epochs))
            raise InputError(
                f"a budget of {budget} trial-epochs does not cover one trial of {epochs} epochs",
                where="tuning.budget",
                fix=f"raise it to at least {cheapest} or shorten tuning.epochs",
            )
    chosen = list(range(n_points))
    if n < n_points:
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for i in rng.choice(n_points, size=n, replace=False))
    return chosen, _rungs(n, strategy, epochs, eta, min_epochs)


# --- trials ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One finished trial: its point, where it stands in the grid (``order``), its rung and epochs, and
    its validation mean AUROC (``value``; NaN when the run has none)."""

    point: dict[str, Any]
    order: int
    rung: int
    epochs: int
    value: float
    folder: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def rank(trials: Sequence[Trial]) -> list[Trial]:
    """Best first by :data:`TIE_RULE` (NaN last)."""

    def key(t: Trial) -> tuple[float, int]:
        v = round(t.value, TIE_DECIMALS) if math.isfinite(t.value) else -math.inf
        return (-v, t.order)

    return sorted(trials, key=key)


def read_trial(folder: str | os.PathLike) -> Trial:
    """The :class:`Trial` recorded in a trial folder's ``trial.json`` (InputError when it is missing)."""
    doc = read_json_or_none(Path(folder) / TRIAL_FILE)
    if not isinstance(doc, dict):
        raise InputError(
            "the tuning trial has no result",
            where=str(Path(folder) / TRIAL_FILE),
            fix="run the trial first (cxrbench study run)",
        )
    value = doc.get(METRIC)
    return Trial(
        point=dict(doc.get("point") or {}),
        order=int(doc.get("order", 0)),
        rung=int(doc.get("rung", 0)),
        epochs=int(doc.get("epochs", 0)),
        value=float(value) if value is not None else float("nan"),
        folder=str(folder),
        extra={k: doc.get(k) for k in ("best_epoch", "epochs_run")},
    )


def advancing(previous: Sequence[str | os.PathLike], slot: int) -> tuple[dict[str, Any], int]:
    """``(point, order)`` of the ``slot``-th best trial of the previous rung (successive halving)."""
    ranked = rank([read_trial(f) for f in previous])
    if slot >= len(ranked):
        raise InputError(
            f"rung slot {slot} but only {len(ranked)} trial(s) in the previous rung",
            where=str(previous[0]) if previous else "tuning",
            fix="rebuild the study plan",
        )
    return ranked[slot].point, ranked[slot].order


def run_trial(
    options: Mapping[str, Any],
    out: str | os.PathLike,
    *,
    point: Mapping[str, Any] | None = None,
    order: int = 0,
    previous: Sequence[str | os.PathLike] = (),
    slot: int = 0,
    rung: int = 0,
    epochs: int | None = None,
    keep_weights: bool = False,
    quiet: bool = True,
) -> Trial:
    """Train one trial into ``out/run`` and record it in ``out/trial.json``: ``options`` are the
    TrainConfig options (cache, init, findings, seed, ...) on top of which ``point`` (or, for a later
    rung of successive halving, the ``slot``-th best of the ``previous`` rung's trials) and ``epochs``
    are set. Reads only the train and val splits (the guard raises on anything else). Resumable."""
    from cxrbench.data.dataset import only_splits
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    out = Path(out)
    if point is None:
        point, order = advancing(previous, slot)
    values = {**dict(options), **dict(point), **({"epochs": epochs} if epochs is not None else {})}
    cfg = TrainConfig.from_dict({**values, "out": str(out / TRIAL_RUN)}, where=str(out))
    with only_splits(SPLIT_GUARD, "a tuning run"):
        result = train(cfg, quiet=quiet)
    trial = Trial(
        point=dict(point),
        order=order,
        rung=rung,
        epochs=cfg.epochs,
        value=result.best_metric,
        folder=str(out),
        extra={"best_epoch": result.best_epoch, "epochs_run": result.epochs_done},
    )
    from cxrbench.common.distributed import detect

    if detect().rank == 0:
        atomic_write_json(
            out / TRIAL_FILE,
            {
                "point": trial.point,
                "order": order,
                "rung": rung,
                "slot": slot,
                "epochs": trial.epochs,
                METRIC: trial.value,
                **trial.extra,
                "seed": cfg.seed,
                "splits_read": list(SPLIT_GUARD),
            },
        )
        if not keep_weights:  # a trial is never evaluated: its weights only take space
            for name in (RUN_BEST_WEIGHTS, RUN_LAST):
                (out / TRIAL_RUN / name).unlink(missing_ok=True)
    return trial


def select_trials(
    trials: Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    *,
    settings: TuningSettings | None = None,
    rungs: Sequence[Rung] = (),
    default: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The choice among the trial folders ``trials`` (the last rung's, by :data:`TIE_RULE`) as the
    ``tuning.json`` dict, written to ``out`` when given: ``chosen`` (the point), ``value``, every trial,
    the strategy, rungs, budget and the trial-epochs spent; ``default``: the values the untuned recipe
    uses for the searched keys (recorded beside the choice)."""
    done = [read_trial(f) for f in trials]
    if not done:
        raise InputError(
            "no tuning trial to choose from",
            where=str(out or "tuning"),
            fix="give the search space at least one point",
        )
    last = max(t.rung for t in done)
    ranked = rank([t for t in done if t.rung == last])
    best = ranked[0]
    if not math.isfinite(best.value):
        raise InputError(
            "no tuning trial has a validation AUROC",
            where=str(out or "tuning"),
            fix="check the validation split has positives and negatives",
        )
    doc = {
        "format": TUNING_FORMAT,
        "chosen": best.point,
        "value": best.value,
        "metric": METRIC,
        "tie_rule": TIE_RULE,
        "split": "val",
        "default": dict(default or {}),
        "settings": settings.to_dict() if settings is not None else {},
        "rungs": [{"configs": r.configs, "epochs": r.epochs} for r in rungs],
        "trial_epochs": sum(t.epochs for t in done),
        "trials": [
            {
                "point": t.point,
                "order": t.order,
                "rung": t.rung,
                "epochs": t.epochs,
                METRIC: t.value,
                **t.extra,
                "chosen": t is best,
            }
            for t in sorted(done, key=lambda t: (t.rung, t.order))
        ],
    }
    if out is not None:
        atomic_write_json(out, doc)
    return doc


def chosen_options(path: str | os.PathLike) -> dict[str, Any]:
    """The chosen values of a ``tuning.json`` (what the final runs are trained with)."""
    doc = read_json_or_none(path)
    if (
        not isinstance(doc, dict)
        or doc.get("format") != TUNING_FORMAT
        or not isinstance(doc.get("chosen"), dict)
    ):
        raise InputError("not a cxrbench tuning result", where=str(path), fix="run the tuning steps first")
    return dict(doc["chosen"])


def tune(
    options: Mapping[str, Any], settings: TuningSettings, out: str | os.PathLike, *, quiet: bool = True
) -> dict[str, Any]:
    """Tune one run's recipe (the Python door): every trial of ``settings`` under ``out/r<rung>/t<k>``
    on top of the TrainConfig ``options`` (cache, init, findings, ...; the trials' seed is
    ``settings.seed``), then the choice, written to ``out/tuning.json`` and returned. Resumable: a trial
    already recorded is read, not retrained."""
    from cxrbench.train.config import TrainConfig

    out = Path(out)
    base = {**dict(options), "seed": settings.seed}
    space = check_space(
        settings.space, {k: v for k, v in base.items() if k not in ("cache", "init", "out")}, "tuning"
    )
    run_epochs = TrainConfig.from_dict({**base, "out": "-"}, where="tuning").epochs
    checked = TuningSettings(**{**settings.__dict__, "space": space})
    indices, rungs = checked.schedule(run_epochs)
    points = grid_points(space)
    folders: list[Path] = []
    previous: list[Path] = []
    for i, rung in enumerate(rungs):
        current = []
        for k in range(rung.configs):
            folder = out / f"r{i}" / f"t{k}"
            if not (folder / TRIAL_FILE).is_file():
                if i == 0:
                    run_trial(
                        base,
                        folder,
                        point=points[indices[k]],
                        order=indices[k],
                        rung=0,
                        epochs=checked.trial_epochs(rung),
                        keep_weights=settings.keep_weights,
                        quiet=quiet,
                    )
                else:
                    run_trial(
                        base,
                        folder,
                        previous=previous,
                        slot=k,
                        rung=i,
                        epochs=checked.trial_epochs(rung),
                        keep_weights=settings.keep_weights,
                        quiet=quiet,
                    )
            current.append(folder)
        folders += current
        previous = current
    default = TrainConfig.from_dict({**base, "out": "-"}, where="tuning").to_dict()
    return select_trials(
        folders, out / TUNING_FILE, settings=settings, rungs=rungs, default={k: default.get(k) for k in space}
    )

"""The nodes of a study's step graph: :class:`Step`, :class:`Plan` and one typed params object per
step kind (what an executor needs besides the hashed ``config``: paths, labels; never hashed).

Steps flow one way::

    phantom -> index -> cache (per recipe) -> pretrain (domain:) / ssl (ssl:) [-> tune -> tuned] -> train
                                                                              -> eval -> external
                                                                              \\-> compare -> report
                                                                              \\-> pooled (seeds) -> report
                                                                   train -> localization -> report
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cxrbench.study.axes import DEFAULT, Condition
from cxrbench.study.sections import ComparisonSpec, EvaluationSpec, LocalizationSpec, RecipeSpec

if TYPE_CHECKING:
    from cxrbench.study.config import LoadedStudy, PhantomSpec

PLAN_VERSION = 1
KINDS: tuple[str, ...] = (
    "phantom",
    "index",
    "cache",
    "pretrain",
    "ssl",
    "tune",
    "tuned",
    "train",
    "eval",
    "external",
    "compare",
    "shortcut",
    "pooled",
    "localization",
    "report",
)


# --- typed params, one per step kind ---------------------------------------------------------------


@dataclass(frozen=True)
class PhantomParams:
    """Generate the synthetic dataset ``dataset`` into the step's folder (its root), as ``phantom``
    says (its ``format`` filled in: the dataset's adapter when the config leaves it out)."""

    dataset: str
    phantom: PhantomSpec


@dataclass(frozen=True)
class IndexParams:
    """Index ``dataset`` from its official files under ``root``."""

    dataset: str
    root: str


@dataclass(frozen=True)
class CacheParams:
    """Build the cache of ``dataset`` with ``recipe`` from ``index`` (images under ``root``)."""

    dataset: str
    recipe: str
    root: str
    index: str
    workers: int | None = None
    spec: RecipeSpec = RecipeSpec()


@dataclass(frozen=True)
class TrainParams:
    """One training run (a domain pretraining run too): on ``cache`` from ``init``.

    ``findings`` None means every finding of the cache; ``options`` are the run's identity options
    (``TrainConfig`` keys, what its step key hashes) and ``runtime`` the runtime-only ones (workers,
    device, ...). ``dataset``/``recipe``/``label``/``seed`` name the arm.
    """

    cache: str
    init: str
    findings: list[str] | None
    runtime: dict[str, Any]
    dataset: str
    recipe: str
    label: str
    seed: int
    condition: Condition = DEFAULT
    options: dict[str, Any] = field(default_factory=dict)
    tuning: str | None = None  # the tuned condition: the tuning.json whose chosen values the run uses


@dataclass(frozen=True)
class TuneParams:
    """One tuning trial (:func:`cxrbench.train.tune.run_trial`): ``options`` are the TrainConfig options
    of the arm at the trials' seed (cache, init, findings, ...); rung 0 trains ``point`` (the ``order``-th
    of the search space), a later rung of successive halving the ``slot``-th best trial of ``previous``."""

    dataset: str
    recipe: str
    label: str
    condition: Condition
    options: dict[str, Any]
    runtime: dict[str, Any]
    rung: int
    slot: int
    epochs: int | None  # None: the point's own epochs (a searched key)
    point: dict[str, Any] | None = None
    order: int = 0
    previous: tuple[str, ...] = ()
    keep_weights: bool = False


@dataclass(frozen=True)
class TunedParams:
    """The choice of one arm's tuning (:func:`cxrbench.train.tune.select_trials`) among its ``trials``
    (trial folders), recorded with its ``settings``, ``rungs`` and the searched keys' ``default`` values."""

    dataset: str
    recipe: str
    label: str
    condition: Condition
    trials: tuple[str, ...]
    settings: Any  # cxrbench.train.tune.TuningSettings
    rungs: tuple[Any, ...]
    default: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SslParams:
    """The self-supervised pretraining run of an ``ssl:`` arm (``cxrbench pretrain``): the train
    splits of ``caches``, every image of ``unlabeled``, no val/test patient of ``exclude``."""

    label: str
    recipe: str
    init: str
    caches: list[str]
    unlabeled: list[str]
    exclude: list[str]
    options: dict[str, Any]
    runtime: dict[str, Any]


@dataclass(frozen=True)
class EvalParams:
    """Evaluate the run folder ``run`` (the arm's dataset/recipe/label/seed) as ``evaluation`` says."""

    run: str
    dataset: str
    recipe: str
    label: str
    seed: int
    condition: Condition = DEFAULT
    evaluation: EvaluationSpec = EvaluationSpec()
    deterministic: bool = False  # the arm's only run: the same for every seed (compared at every seed)


@dataclass(frozen=True)
class ExternalParams:
    """Score the run ``run`` (trained on ``train_dataset``) on ``cache`` of ``test_dataset``."""

    run: str
    cache: str
    train_dataset: str
    test_dataset: str
    recipe: str
    label: str
    seed: int
    findings: list[str] | None
    condition: Condition = DEFAULT
    evaluation: EvaluationSpec = EvaluationSpec()


@dataclass(frozen=True)
class CompareParams:
    """Compare the evaluations of ``runs`` (init label -> run folder) on one dataset/recipe/seed, as
    ``comparison`` says (the study's, or all pairs where its reference has no run) over the
    ``evaluation``'s resamples."""

    dataset: str
    recipe: str
    seed: int
    runs: dict[str, str]
    condition: Condition = DEFAULT
    comparison: ComparisonSpec = ComparisonSpec()
    evaluation: EvaluationSpec = EvaluationSpec()


@dataclass(frozen=True)
class ShortcutParams:
    """The metadata-only baseline of one dataset and recipe, fitted on ``cache``'s train split."""

    dataset: str
    recipe: str
    cache: str


@dataclass(frozen=True)
class PooledParams:
    """Pool the seeds of every arm on one dataset/recipe/condition: ``runs`` is init label -> the
    run folders of its seeds (in seed order)."""

    dataset: str
    recipe: str
    runs: dict[str, list[str]]
    seeds: list[int]
    condition: Condition = DEFAULT
    comparison: ComparisonSpec = ComparisonSpec()
    evaluation: EvaluationSpec = EvaluationSpec()


@dataclass(frozen=True)
class LocalizationParams:
    """Score the saliency maps of the run ``run`` against the regions of ``cache``'s evaluation split
    (``required``: the dataset was named in the section, so a cache without regions is an error; else
    the step records that there was nothing to score)."""

    run: str
    cache: str
    dataset: str
    recipe: str
    label: str
    seed: int
    condition: Condition = DEFAULT
    localization: LocalizationSpec = LocalizationSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    required: bool = False


@dataclass(frozen=True)
class ReportParams:
    """Gather everything into the report (no parameters)."""


StepParams = (PhantomParams | IndexParams | CacheParams | TrainParams | TuneParams | TunedParams | SslParams
              | EvalParams | ExternalParams | CompareParams | ShortcutParams | PooledParams
              | LocalizationParams | ReportParams)


@dataclass
class Step:
    """One node of the graph.

    Attributes:
        id: unique readable name, e.g. ``train/nih/r224/dinov2/s0``.
        kind: one of :data:`KINDS`.
        out: the folder it writes (nothing else is written by it).
        config: what it computes (hashed).
        deps: ids of the steps whose outputs it reads.
        complete: files under ``out`` that exist once it has finished.
        params: what the executor needs besides ``config`` (a typed params object; not hashed).
        group: shard group of training runs and their evaluations; None for shared prerequisites.
        deferred: its config cannot be known yet (findings known only after indexing).
        key: content hash, set by :func:`cxrbench.study.plan.build_plan`.
        status: ``done``, ``pending``, ``stale`` or ``deferred``, set by
            :func:`cxrbench.study.state.refresh_status`.
    """

    id: str
    kind: str
    out: Path
    config: dict[str, Any]
    deps: tuple[str, ...] = ()
    complete: tuple[str, ...] = ()
    params: Any = field(default_factory=ReportParams)
    group: str | None = None
    deferred: bool = False
    key: str = ""
    status: str = "pending"


@dataclass
class Plan:
    """Steps in execution order (every step after the steps it reads)."""

    study: LoadedStudy
    steps: list[Step]
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_id = {s.id: s for s in self.steps}

    def __getitem__(self, step_id: str) -> Step:
        return self.by_id[step_id]

    def of_kind(self, *kinds: str) -> list[Step]:
        """Steps of the given kinds, in order."""
        return [s for s in self.steps if s.kind in kinds]

    def counts(self) -> dict[str, int]:
        """Number of steps per status."""
        out: dict[str, int] = {}
        for s in self.steps:
            out[s.status] = out.get(s.status, 0) + 1
        return out

    def closure(self, ids: set[str]) -> set[str]:
        """``ids`` plus every step they read, transitively."""
        todo, seen = list(ids), set()
        while todo:
            i = todo.pop()
            if i in seen:
                continue
            seen.add(i)
            todo.extend(self.by_id[i].deps)
        return seen

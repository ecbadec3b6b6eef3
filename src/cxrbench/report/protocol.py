"""What a study actually did, as read back from the files its stages wrote (typed, no file paths).

:class:`Protocol` feeds the report's generated Methods section. Every field comes from an output
file (the index report, the cache manifest, each run's ``config.yaml`` and ``best.json``, each
``metrics.json``), never from the study config alone, so the text states what was done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset's index: ``dropped`` maps a reason (``"lateral views"``) to a row count."""

    name: str
    source: str  # the index source (nih, chexpert, csv, ...)
    images: int
    patients: int
    findings: tuple[str, ...]
    views: str
    label_definition: str = ""
    dropped: dict[str, int] = field(default_factory=dict)
    split_method: str = ""
    split_fractions: tuple[float, ...] = ()
    split_seed: int | None = None
    warnings: tuple[str, ...] = ()  # the index's warnings (thin splits, missing images...)


@dataclass(frozen=True)
class RecipeFacts:
    """One preprocessing recipe, over every cache built with it (``resample``: the resamplers seen)."""

    name: str
    size: int
    resize: str
    equalize: bool
    resample: tuple[str, ...] = ("area",)
    dtype: str = "uint8"


@dataclass(frozen=True)
class RunFacts:
    """One training run: its init and every setting that shapes the weights (from config.yaml/best.json)."""

    dataset: str
    init: str  # the study's label of the init
    init_name: str  # the init string (registry name, local:..., random-...)
    arch: str
    pretrained: bool
    weights: str | None  # the pretrained tag or file loaded (None: random)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    linear_probe: bool
    n_findings: int
    settings: dict[str, Any] = field(default_factory=dict)  # lr, epochs, batch_size, ... (training only)
    best_epoch: int | None = None
    epochs_run: int | None = None
    pretrained_on: str | None = None  # domain arms: the dataset of the supervised pretraining run
    base: str | None = None  # domain and ssl arms: the init the pretraining run started from
    self_supervised: str | None = None  # ssl arms: what the self-supervised run trained on, in words
    condition: dict[str, Any] = field(default_factory=dict)  # the run's axis values (label budget, ...)
    adaptation: dict[str, Any] = field(default_factory=dict)  # {"method": "lora", "lora_rank": 8, ...}
    seed_variance: str = ""  # which variance the arm's seed SD covers (study.seeds.seed_variance)
    deterministic: bool = False  # ran once: every seed gives the same run


@dataclass(frozen=True)
class EvaluationFacts:
    """How the metrics were computed (from the metrics.json files; several values: all are listed)."""

    split: str
    n_resamples: tuple[int, ...]
    cluster: tuple[str, ...]
    seed: tuple[int, ...]
    ci: float
    threshold: tuple[str, ...]  # val | test | fixed


@dataclass(frozen=True)
class ComparisonFacts:
    """The comparison protocol (study config: the comparison steps do exactly this)."""

    reference: str | None
    alternative: str
    fdr: str
    alpha: float
    method: str = "bootstrap"


@dataclass(frozen=True)
class AnalysisFacts:
    """The analyses that ran beside the metrics, from their files' settings: subgroup variables and
    minimum counts (``subgroups.json``), calibration bins and recalibration (``calibration.json``:
    method, fitted on, refused/warned maps), the shortcut baseline's features (``shortcut.json``)."""

    subgroup_variables: tuple[str, ...] = ()
    subgroup_min: int | None = None
    age_edges: tuple[float, ...] = ()
    calibration_bins: tuple[int, ...] = ()
    recalibration: tuple[str, ...] = ()
    recalibration_warnings: int = 0
    recalibration_forced: bool = False
    shortcut_features: tuple[str, ...] = ()
    shortcut_datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class TuningFacts:
    """One arm's tuning, from its ``tuning.json``: what was searched, how, and what was chosen."""

    init: str
    dataset: str
    method: str
    strategy: str
    space: dict[str, list[Any]]
    chosen: dict[str, Any]
    value: float
    n_trials: int
    trial_epochs: int
    epochs: int | None
    seed: int | None
    budget: int | None
    rungs: tuple[tuple[int, int], ...] = ()
    tie_rule: str = ""


@dataclass
class Protocol:
    """Everything the Methods text states."""

    datasets: list[DatasetFacts] = field(default_factory=list)
    recipes: list[RecipeFacts] = field(default_factory=list)
    runs: list[RunFacts] = field(default_factory=list)
    evaluation: EvaluationFacts | None = None
    comparisons: ComparisonFacts | None = None
    seeds: tuple[int, ...] = ()
    axes: dict[str, list[Any]] = field(default_factory=dict)  # condition axes with several values
    analyses: AnalysisFacts | None = None
    tuning: list[TuningFacts] = field(default_factory=list)
    pooled: bool = False  # the tables pool several seeds (two-level intervals, bootstrap tests only)

    @property
    def empty(self) -> bool:
        return not (self.datasets or self.recipes or self.runs or self.evaluation)

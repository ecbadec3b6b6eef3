"""The study configuration schema: one YAML file describes the whole matrix.

A study is datasets x preprocessing recipes x initializations x seeds, trained with one recipe,
evaluated with one bootstrap protocol, compared against a reference initialization (or all pairs)
and optionally validated externally (trained on A, tested on B over the findings both share).
See docs/study.md for the reference of every key. The models below are frozen and forbid unknown
keys; :mod:`cxrbench.study.load` reads the YAML and turns every validation error into one
InputError naming the file, the line and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cxrbench.common.provenance import stable_hash
from cxrbench.common.validation import closest, one_of
from cxrbench.index.schema import VIEWS
from cxrbench.index.sources import DATASETS
from cxrbench.phantom.formats import FORMATS
from cxrbench.study.layout import StudyLayout
from cxrbench.study.runtime_config import ExecutorSpec, TrackerSpec
from cxrbench.study.sections import (
    ADDED_LATER,
    ComparisonSpec,
    EvaluationSpec,
    ExternalSpec,
    LocalizationSpec,
    PowerSpec,
    RecipeSpec,
    Strict,
    TuningSpec,
    adaptation_list,
    stable_dump,
)

ADAPTERS: tuple[str, ...] = DATASETS  # the index stage's source registry: a new source is known here at once
PHANTOM_FORMATS: tuple[str, ...] = tuple(FORMATS)
DOMAIN_PREFIX = "domain:"
SSL_PREFIX = "ssl:"  # self-supervised pretraining (cxrbench pretrain) on the study's images first
SSL_DATA_KEYS = ("datasets", "unlabeled")  # the pretrain keys of an ssl: arm that name datasets
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
RUNTIME_SECTIONS: tuple[str, ...] = ("executor", "tracker")  # never hashed


class PhantomSpec(Strict):
    """Generate this dataset with the phantom generator instead of reading a real one."""

    format: str | None = Field(
        None, description="official layout to imitate; the dataset's adapter when unset"
    )
    patients: int = Field(200, ge=4, le=10_000_000, description="number of synthetic patients")
    size: int = Field(256, ge=16, le=4096, description="image side, px")
    site: str = Field("A", description="acquisition site (contrast, noise and prevalence profile)")
    seed: int = Field(0, ge=0)
    options: dict[str, Any] = Field(
        default_factory=dict, description="extra keyword arguments of phantom.generate"
    )

    @field_validator("format")
    @classmethod
    def _format(cls, v: str | None) -> str | None:
        return None if v is None else one_of(v, PHANTOM_FORMATS, "phantom format")


class DatasetSpec(Strict):
    """One dataset: where it is, how to read it, which labels and views to use, how to split it.

    ``labels``, ``uncertain``, ``views``, ``split_seed`` and ``options`` are the options of
    ``cxrbench index`` (``options`` takes the rest by their Python names: ``blank``,
    ``split_mode``, ``split_fractions``, ``readers``, ``labeler``, ``labels_file``, ``mapping``...).
    """

    adapter: str = Field(description="the dataset's source (`cxrbench index --dataset`)")
    root: str | None = Field(
        None, description="dataset folder (official layout); <out>/data/<name> for phantoms"
    )
    labels: str = Field("all", description="label preset or comma list (docs/datasets.md)")
    uncertain: Literal["zeros", "ones", "ignore"] = Field("zeros", description="uncertain (-1) label policy")
    views: str = Field("frontal", description="views kept: frontal, all, or a list such as PA,AP")
    split_seed: int = Field(0, ge=0, description="seed of the patient-level split where none is official")
    findings: tuple[str, ...] | None = Field(None, description="train and evaluate on this subset only")
    options: dict[str, Any] = Field(default_factory=dict, description="further `cxrbench index` options")
    phantom: PhantomSpec | None = None

    @field_validator("adapter")
    @classmethod
    def _adapter(cls, v: str) -> str:
        return one_of(v, ADAPTERS, "source")

    @field_validator("views", mode="before")
    @classmethod
    def _views(cls, v: Any) -> Any:
        items = [s.strip() for s in (v.split(",") if isinstance(v, str) else v or ()) if str(s).strip()]
        if not items:
            raise ValueError("must name at least one view (frontal, all, or e.g. PA,AP)")
        for view in items:
            if view not in (*VIEWS, "frontal", "all"):
                hint = closest(str(view), (*VIEWS, "frontal", "all"))
                raise ValueError(
                    f"unknown view {view!r}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + f"; allowed: frontal, all, {', '.join(VIEWS)}"
                )
        return ",".join(items)

    @field_validator("findings", mode="before")
    @classmethod
    def _findings(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("must be a non-empty list without repeats")
        return v

    @field_validator("options")
    @classmethod
    def _options(cls, v: dict[str, Any]) -> dict[str, Any]:
        from cxrbench.index.sources.base import IndexOptions

        own = ("labels", "uncertain", "views", "split_seed")  # keys of the dataset section itself
        allowed = [f for f in IndexOptions.model_fields if f not in own]
        for k in v:
            if k in own:
                raise ValueError(f"{k!r} is a key of the dataset itself, not an index option: write it "
                                 "beside `options:`, at the dataset's level")
            if k not in allowed:
                hint = closest(k, allowed)
                raise ValueError(
                    f"unknown index option {k!r}"
                    + (f" (did you mean {hint!r}?)" if hint else "")
                    + f"; allowed: {', '.join(allowed)}"
                )
        return v

    @model_validator(mode="after")
    def _root_or_phantom(self) -> DatasetSpec:
        if self.root is None and self.phantom is None:
            raise ValueError("needs 'root' (the dataset folder) or a 'phantom' section")
        return self


class InitSpec(Strict):
    """One initialization arm of the study."""

    init: str = Field(
        description="a registry name (`cxrbench weights list`), checkpoint:PATH, domain:DATASET (supervised "
        "pretraining on DATASET first) or ssl:NAME (self-supervised pretraining on the study's images first)"
    )
    base: str | None = Field(
        None, description="for domain:DATASET and ssl:NAME, the init the pretraining run starts from"
    )
    recipes: tuple[str, ...] | None = Field(None, description="recipes this init runs with; all when unset")
    datasets: tuple[str, ...] | None = Field(
        None, description="datasets this init is trained on; all when unset"
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description=(
            "domain: arms only: per target dataset, the label set (preset or comma list) of the pretraining "
            "and fine-tuning runs; the findings target and source share when unset"
        ),
    )
    adaptations: tuple[str, ...] | None = Field(
        None, description="adaptation methods of this init (full, linear, lora, knn, zeroshot); the study's "
        "adaptations when unset (e.g. [linear, knn] for a backbone too large to fine-tune)",
        json_schema_extra=ADDED_LATER)
    pretrain_seeds: Literal["shared", "per-seed"] | None = Field(
        None, description="domain: and ssl: arms: one pretraining run per fine-tuning seed (per-seed: the "
        "seed SD covers pretraining too; the default of domain:) or one shared by the seeds (shared: the SD "
        "covers fine-tuning only; the default of ssl:)", json_schema_extra=ADDED_LATER)
    tuning: TuningSpec | Literal[False] | None = Field(
        None, description="this init's tuning keys over the study's (false: never tuned)",
        json_schema_extra=ADDED_LATER)
    train: dict[str, Any] = Field(default_factory=dict, description="training overrides for this init")
    recipe_train: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per recipe, further training overrides (e.g. image_size: 518)"
    )
    pretrain: dict[str, Any] = Field(
        default_factory=dict, description="domain: arms: training overrides of the supervised pretraining "
        "run; ssl: arms: `cxrbench pretrain` options, plus datasets (whose train splits are used; every "
        "dataset when unset) and unlabeled (datasets used whole, never evaluated on)"
    )

    @property
    def domain(self) -> str | None:
        """The source dataset of a ``domain:`` init, else None."""
        return self.init[len(DOMAIN_PREFIX) :] if self.init.startswith(DOMAIN_PREFIX) else None

    @property
    def ssl(self) -> str | None:
        """The name of an ``ssl:`` init (self-supervised pretraining first), else None."""
        return self.init[len(SSL_PREFIX) :] if self.init.startswith(SSL_PREFIX) else None

    def ssl_datasets(self, study_datasets: list[str]) -> tuple[list[str], list[str]]:
        """(datasets whose train splits an ``ssl:`` arm pretrains on, datasets it uses whole)."""
        unlabeled = list(self.pretrain.get("unlabeled") or [])
        labelled = self.pretrain.get("datasets")
        labelled = [d for d in study_datasets if d not in unlabeled] if labelled is None else list(labelled)
        return labelled, unlabeled

    def ssl_options(self) -> dict[str, Any]:
        """The ``cxrbench pretrain`` options of an ``ssl:`` arm (its pretrain section, data keys out)."""
        return {k: v for k, v in self.pretrain.items() if k not in SSL_DATA_KEYS}

    @field_validator("adaptations", mode="before")
    @classmethod
    def _adaptations(cls, v: Any) -> Any:
        return None if v is None else adaptation_list(v)

    @model_validator(mode="after")
    def _check(self) -> InitSpec:
        if not self.init.strip():
            raise ValueError("init must not be empty")
        pretrained = self.domain is not None or self.ssl is not None
        if not pretrained and (self.base is not None or self.pretrain or self.labels
                               or self.pretrain_seeds is not None):
            raise ValueError("'base', 'pretrain', 'pretrain_seeds' and 'labels' only apply to init: "
                             "domain:DATASET and ssl:NAME")
        if self.ssl is not None and self.labels:
            raise ValueError("'labels' only applies to init: domain:DATASET (ssl: uses no label)")
        if self.domain is not None and not self.domain:
            raise ValueError("domain: needs a dataset name, e.g. domain:mimic")
        if self.ssl is not None and not self.ssl:
            raise ValueError("ssl: needs a name, e.g. ssl:cxr")
        if self.domain is not None and not self.base:
            raise ValueError(
                f"{self.init} needs 'base: <init>', the initialization of the supervised "
                "pretraining run (the study used imagenet21k-vitb16)"
            )
        if self.ssl is not None and not self.base:
            raise ValueError(f"{self.init} needs 'base: <init>', the initialization the self-supervised "
                             "pretraining continues (e.g. dinov2-vitb14) or starts from (random-vit-base)")
        if self.base is not None and self.base.startswith((DOMAIN_PREFIX, SSL_PREFIX)):
            raise ValueError("'base' cannot itself be a domain: or ssl: init")
        if isinstance(self.tuning, TuningSpec) and self.tuning.methods:
            raise ValueError("tuning.methods: per-method tuning keys belong to the study's tuning section")
        return self


class StudyConfig(Strict):
    """A whole study (see docs/study.md)."""

    name: str = Field(description="short name, used in folder names and the report title")
    title: str | None = Field(None, description="report title; the name when unset")
    description: str | None = None
    out: str | None = Field(None, description="output folder; ./<name> beside the config when unset")
    seeds: tuple[int, ...] = Field((0,), description="training seeds; each run once per seed")
    label_fractions: tuple[float, ...] = Field(
        (1.0,), description="label budgets: shares of the training patients (nested, stratified), or "
        "patient counts above 1; each run once per budget", json_schema_extra=ADDED_LATER)
    label_noise: tuple[float, ...] = Field(
        (0.0,), description="shares of known training labels flipped (symmetric); each run once per rate",
        json_schema_extra=ADDED_LATER)
    adaptations: tuple[str, ...] = Field(
        ("full",), description="adaptation methods: full (fine-tuning), linear (head on cached frozen "
        "embeddings), lora (peft adapters), knn (on cached frozen embeddings), zeroshot (text prompts, "
        "vision-language inits); each run once per method",
        json_schema_extra=ADDED_LATER)
    datasets: dict[str, DatasetSpec]
    preprocess: dict[str, RecipeSpec] = Field(default_factory=lambda: {"r224": RecipeSpec()})
    inits: dict[str, InitSpec]
    train: dict[str, Any] = Field(default_factory=dict, description="training recipe: `cxrbench train` keys")
    evaluation: EvaluationSpec = EvaluationSpec()
    comparisons: ComparisonSpec = ComparisonSpec()
    tuning: TuningSpec | None = Field(
        None, description="choose each init's training options on the validation split first; the study "
        "then also runs every arm at its tuned values (the 'tuned' condition)", json_schema_extra=ADDED_LATER)
    external: tuple[ExternalSpec, ...] | Literal["all"] = ()
    external_conditions: Literal["clean", "all"] = Field(
        "clean", description="models external validation scores: clean = trained on all labels without "
        "noise (every adaptation method), all = every label budget and noise level too",
        json_schema_extra=ADDED_LATER)
    localization: LocalizationSpec | None = Field(
        None, description="score every run's saliency maps against the boxes and masks of its evaluation "
        "split (true: the defaults)", json_schema_extra=ADDED_LATER)
    power: PowerSpec = Field(PowerSpec(), description="the planned comparison `study run --dry-run` sizes "
                             "the "
                             "test sets against (no step reads it)", json_schema_extra=ADDED_LATER)
    prepare_workers: int | None = Field(None, ge=1, le=256, description="workers of the cache build")
    executor: ExecutorSpec = Field(ExecutorSpec(), description="where steps run (not hashed)")
    tracker: TrackerSpec | None = Field(None, description="experiment tracker of the runs (not hashed)")

    @field_validator("executor", "tracker", mode="before")
    @classmethod
    def _kind_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v  # `executor: slurm`, `tracker: mlflow`

    @field_validator("inits", mode="before")
    @classmethod
    def _inits(cls, v: Any) -> Any:
        # a list of registry names is shorthand for {name: {init: name}}
        if isinstance(v, list | tuple):
            out: dict[str, Any] = {}
            for item in v:
                if isinstance(item, str):
                    label = item.replace(DOMAIN_PREFIX, "domain-").replace(":", "-")
                    out[label] = {"init": item}
                else:
                    raise ValueError(
                        "a list of inits holds names; use a mapping label: {init: ...} for options"
                    )
            return out
        if isinstance(v, dict):
            return {k: ({"init": s} if isinstance(s, str) else s) for k, s in v.items()}
        return v

    @field_validator("localization", mode="before")
    @classmethod
    def _localization(cls, v: Any) -> Any:
        return ({} if v else None) if isinstance(v, bool) else v  # `localization: true` / `false`

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        v = [v] if isinstance(v, int) else v
        if not v or len(set(v)) != len(v) or any(not isinstance(s, int) or s < 0 for s in v):
            raise ValueError("must be a non-empty list of distinct non-negative integers")
        return v

    @field_validator("adaptations", mode="before")
    @classmethod
    def _study_adaptations(cls, v: Any) -> Any:
        return adaptation_list(v)

    @field_validator("label_fractions", "label_noise", mode="before")
    @classmethod
    def _axis_list(cls, v: Any, info: Any) -> Any:
        v = [v] if isinstance(v, int | float) else v
        if not v or len(set(v)) != len(v):
            raise ValueError("must be a non-empty list without repeats")
        for x in v:
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise ValueError(f"{x!r} is not a number")
            if info.field_name == "label_noise" and not 0 <= x < 1:
                raise ValueError(f"{x} is not a share in [0, 1)")
            if info.field_name == "label_fractions" and not (0 < x <= 1 or (x > 1 and float(x).is_integer())):
                raise ValueError(f"{x} is neither a share in (0, 1] nor a whole patient count")
        return [float(x) for x in v]

    @model_validator(mode="after")
    def _cross(self) -> StudyConfig:
        for kind, names in (
            ("study name", [self.name]),
            ("dataset", self.datasets),
            ("recipe", self.preprocess),
            ("init label", self.inits),
        ):
            for n in names:
                if not _NAME.match(n):
                    raise ValueError(f"{kind} {n!r} may hold only letters, digits, '_', '-' and '.'")
        if not self.datasets:
            raise ValueError("'datasets' is empty: name at least one dataset")
        if not self.inits:
            raise ValueError("'inits' is empty: name at least one initialization")
        if not self.preprocess:
            raise ValueError("'preprocess' is empty: name at least one recipe")
        for label, spec in self.inits.items():
            if spec.domain is not None and spec.domain not in self.datasets:
                raise ValueError(_unknown(f"inits.{label}.init: domain dataset", spec.domain, self.datasets))
            for r in (*(spec.recipes or ()), *spec.recipe_train):
                if r not in self.preprocess:
                    raise ValueError(_unknown(f"inits.{label}.recipes: recipe", r, self.preprocess))
            for d in (*(spec.datasets or ()), *spec.labels):
                if d not in self.datasets:
                    raise ValueError(_unknown(f"inits.{label}: dataset", d, self.datasets))
            if spec.ssl is not None:
                for key in SSL_DATA_KEYS:
                    value = spec.pretrain.get(key)
                    if value is not None and (isinstance(value, str) or not isinstance(value, list | tuple)):
                        raise ValueError(f"inits.{label}.pretrain.{key} must be a list of dataset names")
                    for d in value or ():
                        if d not in self.datasets:
                            raise ValueError(_unknown(f"inits.{label}.pretrain.{key}: dataset", d,
                                                      self.datasets))
                labelled, unlabeled = spec.ssl_datasets(list(self.datasets))
                if not labelled and not unlabeled:
                    raise ValueError(f"inits.{label}.pretrain: no dataset to pretrain on")
        for where, section in (("train", self.train),
                               *((f"inits.{k}.{w}", sec) for k, v in self.inits.items()
                                 for w, sec in (("train", v.train), *((f"recipe_train.{r}", t)
                                                                     for r, t in v.recipe_train.items())))):
            if "adaptation" in section:
                raise ValueError(f"{where}.adaptation: the adaptation method is a study axis; list it in "
                                 "'adaptations: [full, lora, ...]' (of the study or of an init)")
            for key, axis in (("label_fraction", "label_fractions"), ("label_noise", "label_noise"),
                              ("label_seed", "seeds")):
                if key in section:
                    raise ValueError(f"{where}.{key}: set by the study from its '{axis}' axis (and the "
                                     "run's seed); list the values there")
        c = self.comparisons
        if c.reference is not None and c.reference not in self.inits:
            raise ValueError(_unknown("comparisons.reference: init", c.reference, self.inits))
        if c.reference is None and not c.all_pairs and len(self.inits) > 1:
            raise ValueError("comparisons: set 'reference: <init label>' or 'all_pairs: true'")
        if self.external != "all":
            for e in self.external:
                for d in (e.train, *e.test):
                    if d not in self.datasets:
                        raise ValueError(_unknown("external: dataset", d, self.datasets))
                for i in e.inits or ():
                    if i not in self.inits:
                        raise ValueError(_unknown("external.inits: init", i, self.inits))
        for d in (self.localization.datasets or ()) if self.localization is not None else ():
            if d not in self.datasets:
                raise ValueError(_unknown("localization.datasets: dataset", d, self.datasets))
        return self

    # --- derived views ------------------------------------------------------------------------------

    def recipes_for(self, init_label: str) -> list[str]:
        """Recipe names an init runs with (config order)."""
        wanted = self.inits[init_label].recipes
        return [r for r in self.preprocess if wanted is None or r in wanted]

    def external_pairs(self) -> list[tuple[str, str, tuple[str, ...] | None]]:
        """(train dataset, test dataset, init labels or None = all) for every external evaluation."""
        if self.external == "all":
            return [(a, b, None) for a in self.datasets for b in self.datasets if a != b]
        return [(e.train, t, e.inits) for e in self.external for t in e.test if t != e.train]

    def config_hash(self) -> str:
        """Content hash of the validated config (what the report calls the config hash). Where steps
        run and which tracker they log to are left out (they change nothing that is computed); keys
        added after a study format was fixed (marked ``ADDED_LATER``) count only when set, so the
        hash of a study made before them does not move."""
        dump = stable_dump(self)
        return stable_hash({k: v for k, v in dump.items() if k not in RUNTIME_SECTIONS})


class LoadedStudy(BaseModel):
    """A validated config plus where it came from and its resolved paths."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: StudyConfig
    path: Path
    out: Path
    roots: dict[str, Path]
    train: dict[str, Any]

    @property
    def layout(self) -> StudyLayout:
        """Every path of the study folder."""
        return StudyLayout(self.out)


def _unknown(what: str, value: str, allowed: Any) -> str:
    hint = closest(value, list(allowed))
    return (
        f"{what} {value!r} is not defined"
        + (f" (did you mean {hint!r}?)" if hint else "")
        + f"; defined: {', '.join(allowed)}"
    )


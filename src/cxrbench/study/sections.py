"""The sections of a study config that describe a protocol rather than the matrix: preprocessing
recipes, evaluation, comparisons and external validation (typed settings the executors receive),
and the stable dump every study hash is computed from."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# json_schema_extra of a field added after the study format was fixed: hashed only when not at its default
ADDED_LATER: dict[str, Any] = {"added_later": True}


def adaptation_list(v: Any) -> list[str]:
    """``lora`` or ``[full, lora]`` -> a list of registered adaptation methods without repeats."""
    from cxrbench.common.validation import one_of
    from cxrbench.train.methods import method_names

    v = [v] if isinstance(v, str) else v
    if not isinstance(v, list | tuple) or not v or len(set(v)) != len(v):
        raise ValueError("must be a non-empty list of adaptation methods without repeats")
    return [one_of(str(x), method_names(), "adaptation") for x in v]


class Strict(BaseModel):
    """A frozen section that forbids unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def stable_dump(model: BaseModel) -> Any:
    """``model.model_dump(mode="json")`` without the ADDED_LATER fields left at their default
    (recursively): what hashes see, stable across cxrbench versions."""
    out: dict[str, Any] = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("added_later") and value == info.get_default(call_default_factory=True):
            continue
        out[name] = _dump_value(value)
    return out


def _dump_value(value: Any) -> Any:
    from pydantic import TypeAdapter

    if isinstance(value, BaseModel):
        return stable_dump(value)
    if isinstance(value, dict):
        return {k: _dump_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_dump_value(v) for v in value]
    return TypeAdapter(type(value)).dump_python(value, mode="json") if value is not None else None


class RecipeSpec(Strict):
    """Offline preprocessing of the image cache (``cxrbench prepare``)."""

    size: int = Field(224, ge=16, le=4096, description="square side, px")
    resize: Literal["stretch", "pad", "crop"] = "stretch"
    equalize: bool = Field(True, description="histogram equalization")
    resample: Literal["area", "pil-box"] | None = Field(
        None, description="shrinking resampler: area (exact, the default for new caches) or pil-box (the "
        "legacy one); set it to rebuild a cache made by the other one (hashed only when set)",
        json_schema_extra=ADDED_LATER)

    def step_config(self) -> dict[str, Any]:
        """What a cache step hashes: the recipe, ``resample`` only when set (so the keys of studies
        made before it existed do not move)."""
        return stable_dump(self)


class EvaluationSpec(Strict):
    """How every run is evaluated (``cxrbench evaluate``)."""

    split: Literal["test", "val"] = "test"
    bootstrap: int = Field(1000, ge=0, le=1_000_000, description="bootstrap resamples (0 = none)")
    cluster: Literal["image", "patient"] = Field("patient", description="bootstrap sampling unit")
    threshold: Literal["val", "test", "fixed"] = Field(
        "val", description="where the Youden-J threshold is chosen; 'test' reproduces the reference code"
    )
    fixed_threshold: float = Field(0.5, gt=0, lt=1, description="with threshold: fixed")
    ci: float = Field(0.95, gt=0.5, lt=1.0, description="confidence level of the intervals")
    seed: int = Field(0, ge=0, description="bootstrap seed: the same resamples for every model (paired)")
    batch_size: int = Field(64, ge=1, description="inference batch size")
    study_level: Literal["max", "mean"] | None = Field(
        None, description="also score the image scores aggregated per study (max or mean) with the same "
        "metrics (study_metrics.json beside metrics.json)", json_schema_extra=ADDED_LATER)


class LocalizationSpec(Strict):
    """Saliency maps of every run (default condition) scored against the boxes and masks of its
    evaluation split (``cxrbench evaluate --localization``); ``localization: true`` takes the defaults."""

    method: Literal["gradcam", "rollout"] = Field("gradcam", description="saliency method")
    levels: tuple[float, ...] = Field((0.5,), description="map levels in (0, 1] at which IoU and hit are "
                                      "scored (maps scaled to [0, 1] per image)")
    hit_iou: float = Field(0.1, gt=0, le=1, description="IoU a binarized map needs to count as a hit")
    datasets: tuple[str, ...] | None = Field(
        None, description="datasets scored (their caches must hold boxes or masks); unset: every dataset, "
        "those without regions are noted in the report")
    batch_size: int = Field(16, ge=1, description="saliency batch size (not hashed)")

    @field_validator("levels", mode="before")
    @classmethod
    def _levels(cls, v: Any) -> Any:
        v = [v] if isinstance(v, int | float) else v
        if not isinstance(v, list | tuple) or not v or len(set(v)) != len(v) or not all(
                isinstance(t, int | float) and 0 < t <= 1 for t in v):
            raise ValueError("must be a non-empty list of distinct levels in (0, 1]")
        return [float(t) for t in v]

    @field_validator("datasets", mode="before")
    @classmethod
    def _datasets(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    def step_config(self) -> dict[str, Any]:
        """What a localization step hashes (the batch size changes no number)."""
        return {k: v for k, v in stable_dump(self).items() if k not in ("batch_size", "datasets")}


class ComparisonSpec(Strict):
    """Which pairs of initializations are tested, and how."""

    reference: str | None = Field(None, description="compare every init against this one")
    all_pairs: bool = Field(False, description="compare every pair of inits")
    method: Literal["bootstrap", "delong"] = Field(
        "bootstrap", description="p-value of the main table: paired bootstrap (the study's) or DeLong"
    )
    alternative: Literal["two-sided", "greater"] = Field(
        "two-sided", description="'greater' = one-sided 'init better than reference' as the reference code"
    )
    fdr: Literal["bh", "none"] = Field("bh", description="Benjamini-Hochberg over the per-finding family")
    alpha: float = Field(0.05, gt=0, lt=1)


class ExternalSpec(Strict):
    """Models trained on ``train`` evaluated on the test split of each ``test`` dataset."""

    train: str
    test: tuple[str, ...]
    inits: tuple[str, ...] | None = Field(None, description="init labels to validate; all when unset")

    @field_validator("test", mode="before")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class PowerSpec(Strict):
    """The comparison a study plans for: what ``study run --dry-run`` sizes the test sets against."""

    difference: float = Field(0.05, gt=0, lt=0.5,
                              description="the AUROC difference the comparisons should detect")
    auroc: float = Field(0.8, ge=0.5, lt=1, description="the expected AUROC of the reference")
    correlation: float = Field(0.5, ge=0, lt=1, description="the expected correlation of two models' AUROCs "
                               "on "
                               "the same images (0.3-0.7 is typical of two fine-tuned networks)")
    power: float = Field(0.8, gt=0.5, lt=1, description="the power the comparison should have")
    prevalence: float | None = Field(None, gt=0, lt=1, description="expected share of positive test images "
                                     "before indexing; each finding's own once the index exists")


class TuningSpec(Strict):
    """Hyper-parameters chosen on the validation split per init (and adaptation method) before the final
    runs (:mod:`cxrbench.train.tune`). Unset keys come from the level above: the study's ``tuning``,
    then its ``methods.<method>``, then an init's own ``tuning`` (``tuning: false`` turns it off)."""

    space: dict[str, list[Any]] | None = Field(
        None, description="training options and the values to try, e.g. {lr: [1e-5, 3e-5, 1e-4], "
        "weight_decay: [0, 0.05]} (TrainConfig keys: lr, weight_decay, epochs, patience, layer_decay, "
        "lora_rank, ...); keys of other adaptation methods are left out of an arm's space")
    strategy: Literal["grid", "halving"] | None = Field(
        None, description="grid (every point; a seeded random subset when over budget) or halving "
        "(successive halving: more points, short runs first) [grid]")
    budget: int | None = Field(None, ge=1, description="trial-epochs per arm (sum over trials of their "
                               "epochs) [no limit]")
    epochs: int | None = Field(None, ge=1, description="the trials' (shorter) schedule [the runs' epochs]")
    seed: int | None = Field(None, ge=0, description="the one training seed of every trial [the study's "
                             "first seed]")
    eta: int | None = Field(None, ge=2, le=10, description="halving: the share kept per rung is 1/eta [3]")
    min_epochs: int | None = Field(None, ge=1, description="halving: epochs of the first rung [1]")
    keep_weights: bool | None = Field(None, description="keep each trial's weights [false: deleted once "
                                      "recorded; trials are never evaluated]")
    methods: dict[str, TuningSpec] = Field(
        default_factory=dict, description="per adaptation method, keys that override the study's (study "
        "level only)")

    @field_validator("space")
    @classmethod
    def _space(cls, v: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        from cxrbench.common.errors import InputError
        from cxrbench.train.tune import check_space

        if v is None:
            return v
        try:
            return check_space(v, {}, "tuning")
        except InputError as e:
            raise ValueError(f"{e.what}" + (f"; {e.fix}" if e.fix else "")) from None

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: dict[str, TuningSpec]) -> dict[str, TuningSpec]:
        from cxrbench.common.validation import one_of
        from cxrbench.train.methods import method_names

        for name, spec in v.items():
            one_of(name, method_names(), "adaptation method")
            if spec.methods:
                raise ValueError(f"methods.{name}: 'methods' only at the study's level")
        return v

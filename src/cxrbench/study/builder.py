"""What the step builders of :mod:`cxrbench.study.plan` share: :class:`Builder` (the study, its folder
layout, the steps so far, notes) and :func:`arm_start`, where a run of an init arm starts from (the init
itself, or the weights of its ``domain:`` / ``ssl:`` pretraining run, added to the plan on first use),
which the fine-tuning runs and the tuning trials of :mod:`cxrbench.study.plan_tuning` both use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cxrbench.common.layout import RUN_BEST_META, RUN_BEST_WEIGHTS
from cxrbench.common.provenance import stable_hash
from cxrbench.study.config import InitSpec, LoadedStudy
from cxrbench.study.facts import shared_findings
from cxrbench.study.seeds import pretrain_seed
from cxrbench.study.steps import SslParams, Step, TrainParams

RUN_COMPLETE = (RUN_BEST_META, RUN_BEST_WEIGHTS)


@dataclass
class Builder:
    """What the step builders share: the study, its folder layout, the steps so far, notes."""

    study: LoadedStudy
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.cfg = self.study.config
        self.layout = self.study.layout

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step

    @property
    def recipes_used(self) -> list[str]:
        return [r for r in self.cfg.preprocess if any(r in self.cfg.recipes_for(i) for i in self.cfg.inits)]

    def train_identity(self, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
        """The hashed training settings of one run (see TrainConfig.step_identity)."""
        from cxrbench.train.config import TrainConfig

        merged = {**self.study.train, **overrides, "seed": seed}
        return TrainConfig(cache="-", init="-", out="-", **merged).step_identity()

    def train_runtime(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The runtime-only training keys of one run (workers, device, compile, ...): not hashed."""
        from cxrbench.train.config import RUNTIME_KEYS

        merged = {**self.study.train, **overrides}
        return {k: merged[k] for k in sorted(RUNTIME_KEYS - {"cache", "out"}) if k in merged}


def pretrain_step(
    b: Builder,
    label: str,
    spec: InitSpec,
    r: str,
    seed: int,
    overrides: dict[str, Any],
    findings: list[str] | None,
    group: str,
) -> Step:
    """The supervised pretraining run of a ``domain:`` arm on its source (one per label set)."""
    source, base = str(spec.domain), str(spec.base)
    fkey = stable_hash(findings, 8) if findings is not None else "pending"
    pid = f"pretrain/{label}/{r}/{fkey}/s{seed}"
    existing = next((s for s in b.steps if s.id == pid), None)
    if existing is not None:
        return existing
    options = b.train_identity({**overrides, **spec.pretrain}, seed)
    pconf = {"init": spec.base, "findings": findings, "train": options}
    return b.add(
        Step(
            pid,
            "pretrain",
            b.layout.pretrain_dir(label, r, fkey, seed),
            pconf,
            (f"cache/{spec.domain}/{r}",),
            complete=RUN_COMPLETE,
            params=TrainParams(
                cache=str(b.layout.cache_dir(source, r)),
                init=base,
                findings=findings,
                runtime=b.train_runtime({**overrides, **spec.pretrain}),
                dataset=source,
                recipe=r,
                label=label,
                seed=seed,
                options=options,
            ),
            group=group,
            deferred=findings is None,
        )
    )


def ssl_step(b: Builder, label: str, spec: InitSpec, r: str, seed: int | None = None) -> Step:
    """The self-supervised pretraining run of an ``ssl:`` arm (one per recipe, shared by its seeds; or
    one per ``seed`` with ``pretrain_seeds: per-seed``): the train splits of its datasets and its
    unlabeled datasets whole, never a val/test patient of any dataset of the study (every dataset's
    cache is passed as an exclusion)."""
    from cxrbench.pretrain.config import RUNTIME_KEYS, PretrainConfig

    sid = f"ssl/{label}/{r}" + (f"/s{seed}" if seed is not None else "")
    existing = next((s for s in b.steps if s.id == sid), None)
    if existing is not None:
        return existing
    labelled, unlabeled = spec.ssl_datasets(list(b.cfg.datasets))
    options = {**spec.ssl_options(), **({"seed": seed} if seed is not None else {})}
    ident = PretrainConfig(caches=["-"], init=spec.base or "-", out="-", **options).step_identity()
    everything = sorted(b.cfg.datasets)
    config = {
        "init": spec.base,
        "datasets": labelled,
        "unlabeled": unlabeled,
        "exclude": everything,
        "pretrain": ident,
    }
    runtime = {k: v for k, v in options.items() if k in RUNTIME_KEYS}
    cache = b.layout.cache_dir
    return b.add(
        Step(
            sid,
            "ssl",
            b.layout.ssl_dir(label, r, seed),
            config,
            tuple(f"cache/{d}/{r}" for d in everything),
            complete=RUN_COMPLETE,
            params=SslParams(
                label=label,
                recipe=r,
                init=spec.base or "",
                caches=[str(cache(d, r)) for d in labelled],
                unlabeled=[str(cache(d, r)) for d in unlabeled],
                exclude=[str(cache(d, r)) for d in everything if d not in labelled + unlabeled],
                options={k: v for k, v in options.items() if k not in RUNTIME_KEYS},
                runtime=runtime,
            ),
            group=sid,
        )
    )


@dataclass(frozen=True)
class ArmStart:
    """Where one run of an arm starts: the steps it reads, the hashed init (the init string, or the
    pretraining step it continues), the init the run loads, its findings (None: every finding; or not
    known before indexing: ``deferred``), its shard group and the training options it adds."""

    deps: tuple[str, ...]
    init_ident: Any
    init_value: str
    findings: list[str] | None
    group: str
    deferred: bool = False
    options: dict[str, Any] = field(default_factory=dict)


def arm_start(
    b: Builder,
    label: str,
    spec: InitSpec,
    r: str,
    name: str,
    seed: int,
    overrides: dict[str, Any],
    group: str,
) -> ArmStart:
    """Where a run of ``seed`` on dataset ``name`` starts (its domain or ssl pretraining run added to the
    plan the first time); ``group``: the shard group of a run without pretraining."""
    study = b.study
    deps: tuple[str, ...] = (f"cache/{name}/{r}",)
    ds_findings = b.cfg.datasets[name].findings
    findings = list(ds_findings) if ds_findings is not None else None
    if spec.domain is not None:
        findings = shared_findings(study, label, name)
        static = shared_findings(study, label, name, static=True)
        pseed = int(pretrain_seed(b.cfg, spec, seed) or 0)  # its own seed unless the run is shared
        group = f"domain/{label}/{r}/s{pseed}/" + (stable_hash(static, 8) if static else "*")
        pre = pretrain_step(b, label, spec, r, pseed, overrides, findings, group)
        other_release = study.roots[spec.domain] != study.roots[name]
        extra = (
            {"allow_overlap": True}
            if "allow_overlap" not in {**study.train, **overrides} and other_release
            else {}
        )  # different releases: equal patient ids are a naming coincidence, not a leak
        return ArmStart(
            deps + (pre.id,),
            {"pretrained": pre.id},
            "checkpoint:" + str(pre.out / RUN_BEST_WEIGHTS),
            findings,
            group,
            findings is None,
            extra,
        )
    if spec.ssl is not None:
        pre = ssl_step(b, label, spec, r, pretrain_seed(b.cfg, spec, seed))
        return ArmStart(
            deps + (pre.id,),
            {"pretrained": pre.id},
            "checkpoint:" + str(pre.out / RUN_BEST_WEIGHTS),
            findings,
            pre.group or group,
        )
    return ArmStart(deps, spec.init, spec.init, findings, group)

"""The tuning steps of a study's plan (:mod:`cxrbench.train.tune` as steps): per dataset, recipe, init
arm and adaptation method with a tuned condition, one ``tune`` step per trial (rung 0: a point of the
search space; a later rung of successive halving: the k-th best of the rung before, so its key follows
theirs) and one ``tuned`` step, the choice, that the arm's tuned runs read.

Trials are independent steps (each its own shard group unless the arm's pretraining groups them, each a
SLURM job of its own), resumable like any run, and never read the test split (the guard of
:func:`cxrbench.train.tune.run_trial`). A study without a ``tuning:`` block has none of these steps.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cxrbench.study.axes import TUNING, Condition
from cxrbench.study.builder import Builder, arm_start
from cxrbench.study.config import InitSpec
from cxrbench.study.steps import Step, TunedParams, TuneParams
from cxrbench.study.tuning import arm_tuning
from cxrbench.train.tune import METRIC, TIE_RULE, TRIAL_FILE, TUNING_FILE, check_space, grid_points


def untuned(cond: Condition) -> Condition:
    """The condition with the study's recipe instead of the tuned one (what the trials start from)."""
    return Condition(tuple((c, TUNING.default if c == TUNING.column else v) for c, v in cond.values))


def tuning_steps(b: Builder, label: str, spec: InitSpec, r: str, name: str, cond: Condition,
                 overrides: dict[str, Any]) -> Step:
    """The ``tuned`` step of one arm and method (its trials added to the plan the first time)."""
    from cxrbench.train.config import TrainConfig

    base = untuned(cond)
    method = cond.as_dict["adaptation"]
    tail = f"{name}/{r}/{label}" + (f"/{base.path.rstrip('/')}" if base.path else "")
    existing = next((s for s in b.steps if s.id == f"tuned/{tail}"), None)
    if existing is not None:
        return existing
    settings = arm_tuning(b.cfg, spec, method)
    if settings is None:
        raise AssertionError(f"{label} ({method}) has a tuned condition but no tuning")
    seed = settings.seed
    start = arm_start(b, label, spec, r, name, seed, overrides, f"tune/{tail}")
    arm = {**overrides, **base.train_overrides(seed), **start.options}
    plain = {**b.study.train, **arm, "seed": seed}
    space = check_space(settings.space, plain, f"{b.study.path}: tuning ({label}, {method})")
    run_epochs = TrainConfig(cache="-", init="-", out="-", **plain).epochs
    settings = replace(settings, space=space)
    indices, rungs = settings.schedule(run_epochs)
    points = grid_points(space)
    folder = b.layout.tuning_dir(name, r, label, base.path)
    options = {**b.train_identity(arm, seed), "cache": str(b.layout.cache_dir(name, r)),
               "init": start.init_value, "findings": start.findings}
    trials: list[Step] = []
    previous: list[Step] = []
    for i, rung in enumerate(rungs):
        current = []
        for k in range(rung.configs):
            point = points[indices[k]] if i == 0 else None
            epochs = settings.trial_epochs(rung)
            ident = b.train_identity({**arm, **(point or {}), **({"epochs": epochs} if epochs else {})}, seed)
            config: dict[str, Any] = {"init": start.init_ident, "findings": start.findings, "train": ident,
                                      "rung": i, "slot": k}
            if i:
                config.update({"space": space, "advance": "the slot-th best of the rung before"})
            sid = f"tune/{tail}/r{i}/t{k}"
            group = start.group if (spec.domain or spec.ssl) else sid
            current.append(b.add(Step(
                sid, "tune", folder / f"r{i}" / f"t{k}", config,
                start.deps + tuple(s.id for s in previous), complete=(TRIAL_FILE,),
                params=TuneParams(dataset=name, recipe=r, label=label, condition=base, options=options,
                                  runtime=b.train_runtime(arm), rung=i, slot=k, epochs=epochs,
                                  point=point, order=indices[k] if i == 0 else 0,
                                  previous=tuple(str(s.out) for s in previous),
                                  keep_weights=settings.keep_weights),
                group=group, deferred=start.deferred)))
        trials += current
        previous = current
    default = TrainConfig(cache="-", init="-", out="-", **plain).to_dict()
    config = {"metric": METRIC, "split": "val", "tie_rule": TIE_RULE, "strategy": settings.strategy,
              "budget": settings.budget, "space": space,
              "rungs": [[r_.configs, r_.epochs] for r_ in rungs]}
    return b.add(Step(
        f"tuned/{tail}", "tuned", folder / "chosen", config, tuple(s.id for s in trials),
        complete=(TUNING_FILE,),
        params=TunedParams(dataset=name, recipe=r, label=label, condition=base,
                           trials=tuple(str(s.out) for s in trials), settings=settings, rungs=tuple(rungs),
                           default={k: default.get(k) for k in space}),
        deferred=start.deferred))

"""The study's step graph: what has to be computed, in which order, and what is already done.

Every step has an identity ``config`` (a JSON-able dict: what it computes, never where) and a
content ``key``: the hash of its kind, config and the keys of the steps it reads. Changing one
setting therefore recomputes exactly the steps downstream of it. Keys never contain absolute
paths, so a study folder can be moved or copied between machines. :func:`build_plan` calls one
small builder per step kind over the study's :class:`~cxrbench.study.layout.StudyLayout`;
statuses come from :mod:`cxrbench.study.state`, sharding from :mod:`cxrbench.study.shard`.

Key stability is a contract: a study finished by an earlier cxrbench must show every step done
(tests/study/test_step_keys.py guards the keys of fixed configs).
"""

from __future__ import annotations

from typing import Any

from cxrbench.common.layout import (
    CACHE_MANIFEST,
    COMPARISON_JSON,
    INDEX_FILE,
    LOCALIZATION_FILE,
    METRICS_FILE,
    POOLED_FILE,
    PREDICTIONS_FILE,
    REPORT_FILES,
    SHORTCUT_MODEL,
)
from cxrbench.common.provenance import stable_hash
from cxrbench.study.axes import TUNING, Condition, conditions
from cxrbench.study.builder import RUN_COMPLETE, Builder, arm_start
from cxrbench.study.config import InitSpec, LoadedStudy
from cxrbench.study.facts import index_findings, source_fingerprint
from cxrbench.study.plan_tuning import tuning_steps
from cxrbench.study.sections import stable_dump
from cxrbench.study.seeds import deterministic
from cxrbench.study.shard import parse_shard, select_shard, shard_assignment
from cxrbench.study.state import marker_path, read_marker, refresh_status
from cxrbench.study.steps import (
    KINDS,
    PLAN_VERSION,
    CacheParams,
    CompareParams,
    EvalParams,
    ExternalParams,
    IndexParams,
    LocalizationParams,
    PhantomParams,
    Plan,
    PooledParams,
    ShortcutParams,
    Step,
    TrainParams,
)
from cxrbench.train.tune import TUNING_FILE

__all__ = ["INDEX_FILE", "KINDS", "PLAN_VERSION", "Plan", "Step", "build_plan", "marker_path", "parse_shard",
           "read_marker", "refresh_status", "select_shard", "shard_assignment"]

_EVAL_COMPLETE = (METRICS_FILE, PREDICTIONS_FILE)


def build_plan(study: LoadedStudy) -> Plan:
    """The full step graph of a study, keyed and with each step's status."""
    b = Builder(study)
    for name in b.cfg.datasets:
        _dataset_steps(b, name)
    train_steps = [t for label, spec in b.cfg.inits.items() for t in _init_steps(b, label, spec)]
    _contamination_notes(b)
    _external_steps(b, train_steps)
    _compare_steps(b)
    _shortcut_steps(b)
    _pooled_steps(b)
    _localization_steps(b)
    _report_step(b)
    plan = Plan(study, b.steps, b.notes)
    _assign_keys(plan)
    return refresh_status(plan)


# --- one builder per step kind ----------------------------------------------------------------------


def _dataset_steps(b: Builder, name: str) -> None:
    """phantom (synthetic datasets) -> index -> one cache per recipe in use."""
    ds = b.cfg.datasets[name]
    root = b.study.roots[name]
    deps: tuple[str, ...] = ()
    if ds.phantom is not None:
        ph = ds.phantom.model_dump(mode="json")
        ph["format"] = ph["format"] or ds.adapter
        b.add(Step(f"phantom/{name}", "phantom", root, ph, complete=("_phantom",),
                   params=PhantomParams(name, ds.phantom.model_copy(update={"format": ph["format"]}))))
        deps = (f"phantom/{name}",)
        fingerprint: Any = "phantom"
    else:
        fingerprint = source_fingerprint(root)
        if not root.is_dir():
            b.notes.append(f"dataset {name}: root {root} does not exist (yet)")
    index_cfg = {
        "adapter": ds.adapter,
        "labels": ds.labels,
        "uncertain": ds.uncertain,
        "views": ds.views,
        "split_seed": ds.split_seed,
        "options": ds.options,
        "source": fingerprint,
    }
    b.add(Step(f"index/{name}", "index", b.layout.index_dir(name), index_cfg, deps, complete=(INDEX_FILE,),
               params=IndexParams(name, str(root))))
    for r in b.recipes_used:
        b.add(Step(f"cache/{name}/{r}", "cache", b.layout.cache_dir(name, r),
                   b.cfg.preprocess[r].step_config(), (f"index/{name}",),
                   complete=(CACHE_MANIFEST,),
                   params=CacheParams(name, r, str(root), str(b.layout.index_file(name)),
                                      b.cfg.prepare_workers, b.cfg.preprocess[r])))


def _init_steps(b: Builder, label: str, spec: InitSpec) -> list[Step]:
    """For one init arm: per recipe, dataset, condition (adaptation, label budget, noise) and seed, (its
    domain pretraining,) the run, its eval."""
    runs = []
    for r in b.cfg.recipes_for(label):
        overrides = {**spec.train, **spec.recipe_train.get(r, {})}
        for name in b.cfg.datasets:
            if spec.datasets is not None and name not in spec.datasets:
                continue
            if spec.domain is not None and spec.domain == name:
                b.notes.append(f"init {label} ({spec.init}) is not trained on its own source dataset {name}")
                continue
            if spec.ssl is not None and name in spec.ssl_datasets(list(b.cfg.datasets))[1]:
                b.notes.append(f"init {label} ({spec.init}) is not trained on {name}, which its "
                               "self-supervised pretraining read whole (unlabeled)")
                continue
            for cond in conditions(b.cfg, spec):
                once = deterministic(spec, cond.as_dict["adaptation"])  # the same run for every seed
                for seed in b.cfg.seeds[:1] if once else b.cfg.seeds:
                    runs.append(_run_steps(b, label, spec, r, name, seed, overrides, cond))
    return runs


def _run_steps(b: Builder, label: str, spec: InitSpec, r: str, name: str, seed: int,
               overrides: dict[str, Any], cond: Condition) -> Step:
    """One fine-tuning run (after its domain pretraining, for ``domain:`` arms) and its evaluation;
    ``cond`` adds its id segments and training options (none for the default condition); the tuned
    condition reads the values its arm's tuning chose."""
    start = arm_start(b, label, spec, r, name, seed, overrides, f"run/{name}/{r}/{label}/{cond.path}s{seed}")
    arm = {**overrides, **cond.train_overrides(seed), **start.options}
    deps, tuning = start.deps, None
    tid = f"train/{name}/{r}/{label}/{cond.path}s{seed}"
    run_dir = b.layout.run_dir(name, r, label, seed, cond.path)
    tconf = {"init": start.init_ident, "findings": start.findings, "train": b.train_identity(arm, seed)}
    if not cond.is_default_for(TUNING.column):
        chosen = tuning_steps(b, label, spec, r, name, cond, overrides)
        deps, tuning = deps + (chosen.id,), str(chosen.out / TUNING_FILE)
        tconf["tuning"] = chosen.id  # the key follows the choice's (its trials', its space's)
    step = b.add(Step(tid, "train", run_dir, tconf, deps, complete=RUN_COMPLETE,
                      params=TrainParams(cache=str(b.layout.cache_dir(name, r)), init=start.init_value,
                                         findings=start.findings, runtime=b.train_runtime(arm), dataset=name,
                                         recipe=r, label=label, seed=seed, condition=cond,
                                         options=tconf["train"], tuning=tuning),
                      group=start.group, deferred=start.deferred))
    ev = stable_dump(b.cfg.evaluation)
    b.add(Step(f"eval/{name}/{r}/{label}/{cond.path}s{seed}", "eval", run_dir / "eval" / ev["split"], ev,
               (tid,), complete=_EVAL_COMPLETE, params=EvalParams(
                   str(run_dir), name, r, label, seed, cond, b.cfg.evaluation,
                   deterministic=deterministic(spec, cond.as_dict["adaptation"]) and len(b.cfg.seeds) > 1),
               group=start.group, deferred=start.deferred))
    return step


def _contamination_notes(b: Builder) -> None:
    """A note per init pretrained on a (real) dataset it is tested on: its scores may be inflated."""
    from cxrbench.models.contamination import contamination_warnings

    tested: dict[str, set[str]] = {}
    for s in b.steps:
        if s.kind == "eval":
            ds = b.cfg.datasets[s.params.dataset]
            if ds.phantom is None:  # synthetic images were never anyone's pretraining data
                tested.setdefault(s.params.label, set()).add(ds.adapter)
    for label, datasets in tested.items():
        spec = b.cfg.inits[label]
        init = str(spec.base) if (spec.domain or spec.ssl) else spec.init
        try:
            lines = contamination_warnings(init, sorted(datasets))
        except Exception:  # an init that cannot be resolved here is reported elsewhere
            continue
        b.notes += [f"{label}: {line}" for line in lines]


def _external_steps(b: Builder, train_steps: list[Step]) -> None:
    """External validation: a run of dataset A scored on dataset B, over the findings both share."""
    study = b.study
    ev = stable_dump(b.cfg.evaluation)
    for a, target, labels in b.cfg.external_pairs():
        for t in train_steps:
            p: TrainParams = t.params
            if p.dataset != a or (labels is not None and p.label not in labels):
                continue
            if b.cfg.external_conditions == "clean" and any(
                    not p.condition.is_default_for(c) for c in ("label_fraction", "label_noise", "tuning")):
                continue  # budgets, noise and tuned recipes are internal-test axes unless asked for
            b_findings = index_findings(study, target)
            a_unknown = p.findings is None and index_findings(study, a) is None
            deferred = t.deferred or b_findings is None or a_unknown
            run_findings = p.findings if p.findings is not None else index_findings(study, a)
            shared = [f for f in (run_findings or []) if f in set(b_findings or [])] if not deferred else None
            if shared is not None and not shared:
                b.notes.append(f"external {a} -> {target} ({p.label}): no shared finding, skipped")
                continue
            cond = p.condition
            b.add(Step(
                f"external/{a}-on-{target}/{p.recipe}/{p.label}/{cond.path}s{p.seed}", "external",
                b.layout.external_dir(a, target, p.recipe, p.label, p.seed, cond.path),
                {**ev, "findings": shared},
                (t.id, "eval/" + t.id.split("/", 1)[1], f"cache/{target}/{p.recipe}"),
                complete=_EVAL_COMPLETE,
                params=ExternalParams(run=str(t.out), cache=str(b.layout.cache_dir(target, p.recipe)),
                                      train_dataset=a, test_dataset=target, recipe=p.recipe, label=p.label,
                                      seed=p.seed, findings=shared, condition=cond,
                                      evaluation=b.cfg.evaluation),
                group=t.group, deferred=deferred))


def _compare_steps(b: Builder) -> None:
    """Paired comparisons of the inits per dataset x recipe x condition x seed (two or more inits)."""
    ev = stable_dump(b.cfg.evaluation)
    comp = b.cfg.comparisons.model_dump(mode="json")
    for name in b.cfg.datasets:
        for r in b.recipes_used:
            for cond in conditions(b.cfg):
                for seed in b.cfg.seeds:
                    evals = [s for s in b.steps if s.kind == "eval" and s.params.dataset == name
                             and s.params.recipe == r and s.params.condition == cond
                             and (s.params.seed == seed or s.params.deterministic)]
                    if len(evals) < 2 or not any(s.params.seed == seed for s in evals):
                        continue  # (deterministic arms alone: their one comparison is at the first seed)
                    runs = {s.params.label: s.params.run for s in evals}
                    how, spec = comp, b.cfg.comparisons
                    ref = comp["reference"]
                    if ref is not None and ref not in runs and not comp["all_pairs"]:
                        how = {**comp, "reference": None, "all_pairs": True}  # e.g. linear probes only
                        spec = spec.model_copy(update={"reference": None, "all_pairs": True})
                        note = (f"{cond.name}: {ref} has no run there, so its inits "
                                "are compared pairwise")
                        if note not in b.notes:
                            b.notes.append(note)
                    b.add(Step(f"compare/{name}/{r}/{cond.path}s{seed}", "compare",
                               b.layout.compare_dir(name, r, seed, cond.path),
                               {**how, "evaluation": ev}, tuple(s.id for s in evals),
                               complete=(COMPARISON_JSON,),
                               params=CompareParams(name, r, seed, runs, cond, spec, b.cfg.evaluation),
                               deferred=any(s.deferred for s in evals)))


def _shortcut_steps(b: Builder) -> None:
    """Per dataset and recipe with evaluated runs: the metadata-only baseline (view, sex, age, site ->
    each finding, logistic regression fitted on train) the report sets beside the image models."""
    for name in b.cfg.datasets:
        for r in b.recipes_used:
            evaluated = any(s.kind == "eval" and s.params.dataset == name and s.params.recipe == r
                            for s in b.steps)
            if not evaluated:
                continue
            b.add(Step(f"shortcut/{name}/{r}", "shortcut", b.layout.shortcut_dir(name, r),
                       {"model": "logistic regression on metadata", "version": 1}, (f"cache/{name}/{r}",),
                       complete=(SHORTCUT_MODEL,),
                       params=ShortcutParams(name, r, str(b.layout.cache_dir(name, r)))))


def _pooled_steps(b: Builder) -> None:
    """With several seeds: every arm of a dataset x recipe x condition pooled over its seeds (mean,
    two-level bootstrap CI, seed SD) and the paired comparisons of the pooled arms."""
    if len(b.cfg.seeds) < 2:
        return
    ev = stable_dump(b.cfg.evaluation)
    comp = b.cfg.comparisons.model_dump(mode="json")
    for name in b.cfg.datasets:
        for r in b.recipes_used:
            for cond in conditions(b.cfg):
                evals = [s for s in b.steps if s.kind == "eval" and s.params.dataset == name
                         and s.params.recipe == r and s.params.condition == cond]
                if not evals:
                    continue
                runs: dict[str, list[str]] = {}
                for s in sorted(evals, key=lambda s: s.params.seed):
                    runs.setdefault(s.params.label, []).append(s.params.run)
                b.add(Step(f"pooled/{name}/{r}" + (f"/{cond.path.rstrip('/')}" if cond.path else ""),
                           "pooled", b.layout.pooled_dir(name, r, cond.path),
                           {**comp, "evaluation": ev, "seeds": list(b.cfg.seeds)},
                           tuple(s.id for s in evals), complete=(POOLED_FILE,),
                           params=PooledParams(name, r, runs, list(b.cfg.seeds), cond, b.cfg.comparisons,
                                               b.cfg.evaluation),
                           deferred=any(s.deferred for s in evals)))


def _localization_steps(b: Builder) -> None:
    """With a ``localization`` section: every run of the default condition with a classifier, its
    saliency maps scored against the regions of its dataset's evaluation split (a note per init
    without a classifier, e.g. kNN)."""
    from cxrbench.train.methods import get_method

    spec = b.cfg.localization
    if spec is None:
        return
    ev = b.cfg.evaluation
    config = {**spec.step_config(), "split": ev.split, "bootstrap": ev.bootstrap, "cluster": ev.cluster,
              "seed": ev.seed, "ci": ev.ci}
    for t in [s for s in b.steps if s.kind == "train"]:
        p: TrainParams = t.params
        clean = all(p.condition.is_default_for(c) for c in ("label_fraction", "label_noise"))
        if not clean or (spec.datasets is not None and p.dataset not in spec.datasets):
            continue  # budgets and noise are axes of the main metrics; every adaptation method is scored
        method = get_method(str(p.condition.as_dict.get("adaptation") or "full"))
        if not method.has_classifier:
            note = f"localization: {method.name} runs are not scored ({method.no_classifier()})"
            if note not in b.notes:
                b.notes.append(note)
            continue
        cond = p.condition
        params = LocalizationParams(run=str(t.out), cache=p.cache, dataset=p.dataset, recipe=p.recipe,
                                    label=p.label, seed=p.seed, condition=cond, localization=spec,
                                    evaluation=ev, required=spec.datasets is not None)
        b.add(Step(f"localization/{p.dataset}/{p.recipe}/{p.label}/{cond.path}s{p.seed}", "localization",
                   b.layout.localization_dir(p.dataset, p.recipe, p.label, p.seed, cond.path), config,
                   (t.id,), complete=(LOCALIZATION_FILE,), params=params, group=t.group, deferred=t.deferred))


def _report_step(b: Builder) -> None:
    gathered = tuple(s.id for s in b.steps
                     if s.kind in ("eval", "external", "compare", "shortcut", "pooled", "localization"))
    b.add(Step("report", "report", b.layout.report_dir,
               {"version": PLAN_VERSION, "config_hash": b.cfg.config_hash()}, gathered,
               complete=REPORT_FILES))


def _assign_keys(plan: Plan) -> None:
    for s in plan.steps:  # steps are in dependency order
        for d in s.deps:
            if d not in plan.by_id:
                raise AssertionError(f"step {s.id} reads unknown step {d}")
        s.deferred = s.deferred or any(plan.by_id[d].deferred for d in s.deps)
        s.key = stable_hash(
            {
                "plan": PLAN_VERSION,
                "kind": s.kind,
                "config": s.config,
                "deps": {d: plan.by_id[d].key for d in s.deps},
            },
            24,
        )

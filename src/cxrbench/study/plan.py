"""The study's step graph: what has to be computed, in which order, and what is already done.

Steps flow one way::

    phantom -> index -> cache (per recipe) -> pretrain (domain:) -> train -> eval -> external
                                                                              \\-> compare -> report

Every step has an identity ``config`` (a JSON-able dict: what it computes, never where) and a
content ``key``: the hash of its kind, config and the keys of the steps it reads. A step is
*done* when its marker ``OUT/.steps/<id>.json`` records that key with status ``done`` and its
completion files exist (a cache's manifest.json, a run's best.json, an evaluation's metrics.json);
otherwise it is *pending* (never run, or interrupted: the step resumes), or *stale* (its output
was made from another config: it is set aside into ``OUT/.stale/`` and recomputed). Changing one
setting therefore recomputes exactly the steps downstream of it. Keys never contain absolute
paths, so a study folder can be moved or copied between machines.

Sharding (``--shard i/n``) assigns the training runs, with their evaluations, to shards from the
config alone (so every machine agrees without talking to the others): runs that share a domain
pretraining run stay together; groups are dealt out largest first to the least loaded shard.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.errors import InputError
from cxrbench.provenance import stable_hash
from cxrbench.study.config import LoadedStudy

PLAN_VERSION = 1
KINDS: tuple[str, ...] = (
    "phantom",
    "index",
    "cache",
    "pretrain",
    "train",
    "eval",
    "external",
    "compare",
    "report",
)
STEPS_DIR = ".steps"
STALE_DIR = ".stale"
INDEX_FILE = "index.parquet"
_META_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".json", ".yaml", ".yml", ".txt")
_FINGERPRINT_MAX_ENTRIES = 2000  # a folder with more entries is an image folder: not scanned
# runtime-only training keys: they change how a run executes, not what it computes
_RUNTIME_TRAIN_KEYS = ("workers", "device", "log_every", "checkpoint_every", "deterministic")


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
        params: what the executor needs besides ``config`` (paths...; not hashed).
        group: shard group of training runs and their evaluations; None for shared prerequisites.
        deferred: its config cannot be known yet (findings known only after indexing).
        key: content hash, set by :func:`build_plan`.
        status: ``done``, ``pending``, ``stale`` or ``deferred``, set by :func:`refresh_status`.
    """

    id: str
    kind: str
    out: Path
    config: dict[str, Any]
    deps: tuple[str, ...] = ()
    complete: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
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


# --- markers ---------------------------------------------------------------------------------------


def marker_path(out: Path, step_id: str) -> Path:
    """``OUT/.steps/<id>.json`` (the id's slashes become folders)."""
    return out / STEPS_DIR / f"{step_id}.json"


def read_marker(out: Path, step_id: str) -> dict[str, Any] | None:
    """The step's marker, or None when missing or unreadable (an unreadable marker = not done)."""
    path = marker_path(out, step_id)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def refresh_status(plan: Plan) -> Plan:
    """Set every step's status from its marker and completion files (cheap: stats and small reads)."""
    out = plan.study.out
    for s in plan.steps:
        if s.deferred:
            s.status = "deferred"
            continue
        m = read_marker(out, s.id)
        if m is not None and m.get("key") == s.key:
            finished = m.get("status") == "done" and all((s.out / c).exists() for c in s.complete)
            s.status = "done" if finished else "pending"
        elif m is not None or (s.out.exists() and _non_empty(s.out) and s.kind not in ("phantom", "report")):
            s.status = "stale"
        else:
            s.status = "pending"
    return plan


def _non_empty(path: Path) -> bool:
    if path.is_file():
        return True
    try:
        return any(path.iterdir())
    except OSError:
        return False


# --- dataset facts the plan needs ---------------------------------------------------------------------


def source_fingerprint(root: Path) -> list[list[Any]]:
    """(relative path, size, mtime_ns) of the metadata files of a dataset root (depth <= 2).

    Image folders (more than a few thousand entries) are not listed, so this stays fast on
    datasets of hundreds of thousands of images; a changed or replaced CSV changes the index key.
    """
    rows: list[list[Any]] = []

    def scan(folder: Path, depth: int) -> None:
        entries = []
        try:
            with os.scandir(folder) as it:
                for n, e in enumerate(it):
                    if n >= _FINGERPRINT_MAX_ENTRIES:
                        return
                    entries.append(e)
        except OSError:
            return
        for e in sorted(entries, key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            if e.is_file() and e.name.lower().endswith(_META_SUFFIXES):
                st = e.stat()
                rows.append([os.path.relpath(e.path, root), st.st_size, st.st_mtime_ns])
            elif e.is_dir() and depth < 2 and e.name != "_phantom":
                scan(Path(e.path), depth + 1)

    scan(root, 1)
    return rows


def static_findings(study: LoadedStudy, dataset: str) -> list[str] | None:
    """A dataset's findings known from its config alone (label preset or list), else None."""
    from cxrbench import findings as fd

    spec = study.config.datasets[dataset]
    found: list[str] | None = None
    presets = getattr(fd, "PRESETS", {})
    if spec.labels in presets:
        found = list(presets[spec.labels])
    elif spec.labels != "all" and ("," in spec.labels or spec.labels in fd.ALL_FINDINGS):
        found = [s.strip() for s in spec.labels.split(",") if s.strip()]
    if spec.findings is not None:
        return (
            [f for f in spec.findings if found is None or f in found]
            if found is not None
            else list(spec.findings)
        )
    return found


@functools.lru_cache(maxsize=256)
def _findings_in(path: str, mtime_ns: int, size: int) -> list[str] | None:
    """The finding list in an index's Parquet metadata (cached per file version); None if unreadable."""
    from cxrbench.schema import read_findings

    try:
        return read_findings(path)
    except (InputError, OSError, ValueError):
        return None


def index_findings(study: LoadedStudy, dataset: str) -> list[str] | None:
    """A dataset's findings: from its built index when present, else from its config, else None."""
    path = study.out / "index" / dataset / INDEX_FILE
    spec = study.config.datasets[dataset]
    if path.is_file():
        st = path.stat()
        found = _findings_in(str(path), st.st_mtime_ns, st.st_size)
        if found is not None:
            if spec.findings is not None:
                missing = [f for f in spec.findings if f not in found]
                if missing:
                    raise InputError(
                        f"datasets.{dataset}.findings lists {', '.join(missing)}, which the index "
                        "does not have",
                        where=str(study.path),
                        fix=f"the index has: {', '.join(found)}",
                    )
                return list(spec.findings)
            return list(found)
    return static_findings(study, dataset)


def shared_findings(study: LoadedStudy, label: str, target: str, *, static: bool = False) -> list[str] | None:
    """Findings of a ``domain:`` arm on ``target``: the init's ``labels`` for it, else the
    findings the target and the source dataset share (target order); None when not known yet."""
    from cxrbench import findings as fd

    spec = study.config.inits[label]
    explicit = spec.labels.get(target)
    if explicit is not None:
        presets = getattr(fd, "PRESETS", {})
        if explicit in presets:
            return list(presets[explicit])
        return [s.strip() for s in explicit.split(",") if s.strip()]
    get = static_findings if static else index_findings
    t, s = get(study, target), get(study, spec.domain)
    if t is None or s is None:
        return None
    shared = [f for f in t if f in set(s)]
    if not shared and not static:
        raise InputError(
            f"{target} and {spec.domain} share no finding, so init {label!r} ({spec.init}) "
            f"cannot be used on {target}",
            where=f"{study.path}: inits.{label}",
            fix=f"set inits.{label}.labels.{target} or restrict the init with 'datasets:'",
        )
    return shared


# --- building the graph ------------------------------------------------------------------------------


def _train_identity(study: LoadedStudy, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    from cxrbench.trainconfig import TrainConfig

    merged = {**study.train, **overrides, "seed": seed}
    cfg = TrainConfig(cache="-", init="-", out="-", **merged)
    ident = {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in ("cache", "out", "init", "findings") and k not in _RUNTIME_TRAIN_KEYS
    }
    return ident


def _train_runtime(study: LoadedStudy, overrides: dict[str, Any]) -> dict[str, Any]:
    merged = {**study.train, **overrides}
    return {k: merged[k] for k in _RUNTIME_TRAIN_KEYS if k in merged}


def build_plan(study: LoadedStudy) -> Plan:
    """The full step graph of a study, keyed and with each step's status."""
    cfg = study.config
    out = study.out
    steps: list[Step] = []
    notes: list[str] = []
    add = steps.append

    # datasets: phantom -> index -> caches
    recipes_used = [r for r in cfg.preprocess if any(r in cfg.recipes_for(i) for i in cfg.inits)]
    for name, ds in cfg.datasets.items():
        root = study.roots[name]
        deps: tuple[str, ...] = ()
        if ds.phantom is not None:
            ph = ds.phantom.model_dump(mode="json")
            ph["format"] = ph["format"] or ds.adapter
            add(
                Step(f"phantom/{name}", "phantom", root, ph, complete=("_phantom",), params={"dataset": name})
            )
            deps = (f"phantom/{name}",)
            fingerprint: Any = "phantom"
        else:
            fingerprint = source_fingerprint(root)
            if not root.is_dir():
                notes.append(f"dataset {name}: root {root} does not exist (yet)")
        index_cfg = {
            "adapter": ds.adapter,
            "labels": ds.labels,
            "uncertain": ds.uncertain,
            "views": ds.views,
            "split_seed": ds.split_seed,
            "options": ds.options,
            "source": fingerprint,
        }
        add(
            Step(
                f"index/{name}",
                "index",
                out / "index" / name,
                index_cfg,
                deps,
                complete=(INDEX_FILE,),
                params={"dataset": name, "root": str(root)},
            )
        )
        for r in recipes_used:
            add(
                Step(
                    f"cache/{name}/{r}",
                    "cache",
                    out / "cache" / name / r,
                    cfg.preprocess[r].model_dump(mode="json"),
                    (f"index/{name}",),
                    complete=("manifest.json",),
                    params={
                        "dataset": name,
                        "recipe": r,
                        "root": str(root),
                        "index": str(out / "index" / name / INDEX_FILE),
                        "workers": cfg.prepare_workers,
                    },
                )
            )

    # training runs (domain pretraining first) and their evaluations
    ev = cfg.evaluation.model_dump(mode="json")
    pretrain_ids: dict[tuple, str] = {}
    train_steps: list[Step] = []
    for label, spec in cfg.inits.items():
        for r in cfg.recipes_for(label):
            overrides = {**spec.train, **spec.recipe_train.get(r, {})}
            for name in cfg.datasets:
                if spec.datasets is not None and name not in spec.datasets:
                    continue
                if spec.domain is not None and spec.domain == name:
                    notes.append(
                        f"init {label} ({spec.init}) is not trained on its own source dataset {name}"
                    )
                    continue
                for seed in cfg.seeds:
                    deps = (f"cache/{name}/{r}",)
                    findings: list[str] | None = (
                        list(cfg.datasets[name].findings) if cfg.datasets[name].findings is not None else None
                    )
                    init_ident: Any = spec.init
                    init_value = spec.init
                    deferred = False
                    group = f"run/{name}/{r}/{label}/s{seed}"
                    if spec.domain is not None:
                        findings = shared_findings(study, label, name)
                        static = shared_findings(study, label, name, static=True)
                        group = f"domain/{label}/{r}/s{seed}/" + (stable_hash(static, 8) if static else "*")
                        deferred = findings is None
                        fkey = stable_hash(findings, 8) if findings is not None else "pending"
                        pid = f"pretrain/{label}/{r}/{fkey}/s{seed}"
                        if (label, r, fkey, seed) not in pretrain_ids:
                            pretrain_ids[(label, r, fkey, seed)] = pid
                            pconf = {
                                "init": spec.base,
                                "findings": findings,
                                "train": _train_identity(study, {**overrides, **spec.pretrain}, seed),
                            }
                            add(
                                Step(
                                    pid,
                                    "pretrain",
                                    out / "pretrain" / label / r / fkey / f"s{seed}",
                                    pconf,
                                    (f"cache/{spec.domain}/{r}",),
                                    complete=("best.json", "best.safetensors"),
                                    params={
                                        "cache": str(out / "cache" / spec.domain / r),
                                        "init": spec.base,
                                        "findings": findings,
                                        "runtime": _train_runtime(study, {**overrides, **spec.pretrain}),
                                    },
                                    group=group,
                                    deferred=deferred,
                                )
                            )
                        deps = deps + (pid,)
                        init_ident = {"pretrained": pid}
                        init_value = "checkpoint:" + str(
                            out / "pretrain" / label / r / fkey / f"s{seed}" / "best.safetensors"
                        )
                    arm = dict(overrides)
                    if (
                        spec.domain is not None
                        and "allow_overlap" not in {**study.train, **overrides}
                        and study.roots[spec.domain] != study.roots[name]
                    ):
                        # different releases: equal patient ids are a naming coincidence, not a leak
                        arm = {**arm, "allow_overlap": True}
                    tid = f"train/{name}/{r}/{label}/s{seed}"
                    run_dir = out / "runs" / name / r / label / f"s{seed}"
                    tconf = {
                        "init": init_ident,
                        "findings": findings,
                        "train": _train_identity(study, arm, seed),
                    }
                    step = Step(
                        tid,
                        "train",
                        run_dir,
                        tconf,
                        deps,
                        complete=("best.json", "best.safetensors"),
                        params={
                            "cache": str(out / "cache" / name / r),
                            "init": init_value,
                            "findings": findings,
                            "runtime": _train_runtime(study, arm),
                            "dataset": name,
                            "recipe": r,
                            "label": label,
                            "seed": seed,
                        },
                        group=group,
                        deferred=deferred,
                    )
                    add(step)
                    train_steps.append(step)
                    add(
                        Step(
                            f"eval/{name}/{r}/{label}/s{seed}",
                            "eval",
                            run_dir / "eval" / ev["split"],
                            ev,
                            (tid,),
                            complete=("metrics.json", "predictions.parquet"),
                            params={
                                "run": str(run_dir),
                                "dataset": name,
                                "recipe": r,
                                "label": label,
                                "seed": seed,
                            },
                            group=group,
                            deferred=deferred,
                        )
                    )

    # external validation: a run of dataset A evaluated on dataset B's split
    by_arm = {
        (s.params["dataset"], s.params["recipe"], s.params["label"], s.params["seed"]): s for s in train_steps
    }
    for a, b, labels in cfg.external_pairs():
        for (ds_a, r, label, seed), t in by_arm.items():
            if ds_a != a or (labels is not None and label not in labels):
                continue
            b_findings = index_findings(study, b)
            deferred = (
                t.deferred
                or b_findings is None
                or t.params["findings"] is None
                and index_findings(study, a) is None
            )
            run_findings = (
                t.params["findings"] if t.params["findings"] is not None else index_findings(study, a)
            )
            shared = [f for f in (run_findings or []) if f in set(b_findings or [])] if not deferred else None
            if shared is not None and not shared:
                notes.append(f"external {a} -> {b} ({label}): no shared finding, skipped")
                continue
            add(
                Step(
                    f"external/{a}-on-{b}/{r}/{label}/s{seed}",
                    "external",
                    out / "external" / f"{a}-on-{b}" / r / label / f"s{seed}",
                    {**ev, "findings": shared},
                    (t.id, "eval/" + t.id.split("/", 1)[1], f"cache/{b}/{r}"),
                    complete=("metrics.json", "predictions.parquet"),
                    params={
                        "run": str(t.out),
                        "cache": str(out / "cache" / b / r),
                        "train_dataset": a,
                        "test_dataset": b,
                        "recipe": r,
                        "label": label,
                        "seed": seed,
                        "findings": shared,
                    },
                    group=t.group,
                    deferred=deferred,
                )
            )

    # comparisons per dataset x recipe x seed, then the report
    comp = cfg.comparisons.model_dump(mode="json")
    for name in cfg.datasets:
        for r in recipes_used:
            for seed in cfg.seeds:
                evals = [
                    s
                    for s in steps
                    if s.kind == "eval"
                    and s.params["dataset"] == name
                    and s.params["recipe"] == r
                    and s.params["seed"] == seed
                ]
                if len(evals) < 2:
                    continue
                add(
                    Step(
                        f"compare/{name}/{r}/s{seed}",
                        "compare",
                        out / "compare" / name / r / f"s{seed}",
                        {**comp, "evaluation": ev},
                        tuple(s.id for s in evals),
                        complete=("comparison.json",),
                        params={
                            "dataset": name,
                            "recipe": r,
                            "seed": seed,
                            "runs": {s.params["label"]: s.params["run"] for s in evals},
                        },
                        deferred=any(s.deferred for s in evals),
                    )
                )
    gathered = tuple(s.id for s in steps if s.kind in ("eval", "external", "compare"))
    add(
        Step(
            "report",
            "report",
            out / "report",
            {"version": PLAN_VERSION, "config_hash": cfg.config_hash()},
            gathered,
            complete=("index.html", "report.md", "results.csv"),
        )
    )

    plan = Plan(study, steps, notes)
    _assign_keys(plan)
    return refresh_status(plan)


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


# --- sharding -----------------------------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n (shards are numbered from 1)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise InputError(
            f"--shard got {text!r}", where="--shard", fix="write i/n, e.g. --shard 1/4"
        ) from None
    if n < 1 or not 1 <= i <= n:
        raise InputError(
            f"--shard {text}: shard {i} of {n} does not exist",
            where="--shard",
            fix=f"use 1/{max(n, 1)} ... {max(n, 1)}/{max(n, 1)}",
        )
    return i, n


def shard_assignment(plan: Plan, n: int) -> dict[str, int]:
    """Shard (1..n) of every group of training runs: largest group first to the least loaded shard.

    Depends on the config only (group names and sizes), so every machine computes the same split.
    """
    sizes: dict[str, int] = {}
    for s in plan.steps:
        if s.group is not None and s.kind in ("train", "pretrain"):
            sizes[s.group] = sizes.get(s.group, 0) + (2 if s.kind == "pretrain" else 1)
    load = [0] * n
    out: dict[str, int] = {}
    for g in sorted(sizes, key=lambda g: (-sizes[g], g)):
        k = min(range(n), key=lambda j: (load[j], j))
        out[g] = k + 1
        load[k] += sizes[g]
    return out


def select_shard(plan: Plan, shard: tuple[int, int] | None) -> list[Step]:
    """The steps one invocation executes: with a shard, its runs, their evaluations and what they
    read; without one, everything."""
    if shard is None:
        return list(plan.steps)
    i, n = shard
    groups = shard_assignment(plan, n)
    mine = {s.id for s in plan.steps if s.group is not None and groups.get(s.group) == i}
    keep = plan.closure(mine)
    return [s for s in plan.steps if s.id in keep]

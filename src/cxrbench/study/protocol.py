"""Read back what a study did, from its output files, for the report's Methods section.

Sources: ``index/<dataset>/index.report.json`` (rows dropped and why, labels, split), each cache's
``manifest.json`` (the recipe and resampler actually used), each finished run's ``config.yaml``
and ``best.json`` (init, normalization, linear probe or fine-tuning, every training setting) and
``log.jsonl`` (epochs actually run), and each ``metrics.json`` (bootstrap unit, count and seed).
A file that is not there is skipped: the text covers what exists.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import read_json_or_none
from cxrbench.common.layout import (
    CACHE_MANIFEST,
    METRICS_FILE,
    RUN_BEST_META,
    RUN_CONFIG,
    RUN_LOG,
    index_report_path,
)
from cxrbench.report.protocol import (
    AnalysisFacts,
    ComparisonFacts,
    DatasetFacts,
    EvaluationFacts,
    Protocol,
    RecipeFacts,
    RunFacts,
    TuningFacts,
)
from cxrbench.study.axes import study_axes
from cxrbench.study.steps import Plan

# Training settings quoted in the Methods text (config.yaml's train section; the rest is runtime).
TRAIN_SETTINGS: tuple[str, ...] = (
    "epochs", "batch_size", "grad_accum", "lr", "min_lr", "weight_decay", "betas", "schedule",
    "warmup_epochs", "layer_decay", "clip_grad", "pos_weight", "augment", "hflip", "rotate", "patience",
)


def _yaml(path: Path) -> Any:
    from cxrbench.common.yamlio import load_yaml

    try:
        return load_yaml(path, RUN_CONFIG)[0]
    except InputError:
        return None


def dataset_facts(name: str, report: dict[str, Any]) -> DatasetFacts:
    """The Methods facts of one index report (``index.report.json``)."""
    opts = report.get("options") or {}
    dropped: dict[str, int] = {}
    for key, value in (report.get("dropped") or {}).items():
        if key == "views" and isinstance(value, dict):
            for view, n in value.items():
                dropped[f"{view} views"] = dropped.get(f"{view} views", 0) + int(n)
        elif isinstance(value, (int, float)) and value:
            dropped[key.replace("_", " ")] = int(value)
        elif isinstance(value, dict):  # e.g. PadChest's {"no_labels": 103, "exclude": 8}
            for sub, n in value.items():
                if isinstance(n, (int, float)) and n:
                    dropped[f"{key.replace('_', ' ')}: {sub.replace('_', ' ')}"] = int(n)
    split = report.get("split") or {}
    return DatasetFacts(
        name=name,
        source=str(report.get("dataset", "")),
        images=int(report.get("images_indexed") or 0),
        patients=int(report.get("patients_indexed") or 0),
        findings=tuple(report.get("findings") or ()),
        views=str(opts.get("views", "frontal")),
        label_definition=str(report.get("label_definition") or ""),
        dropped={k: v for k, v in dropped.items() if v},
        split_method=str(split.get("method", "")),
        split_fractions=tuple(float(x) for x in split.get("fractions") or ()),
        split_seed=split.get("seed"),
        warnings=tuple(str(w) for w in report.get("warnings") or ()),
    )


def run_facts(run_dir: Path, dataset: str, label: str) -> RunFacts | None:
    """The Methods facts of one finished run folder (None when its files are not there)."""
    config, best = _yaml(run_dir / RUN_CONFIG), read_json_or_none(run_dir / RUN_BEST_META)
    if not isinstance(config, dict) or not isinstance(best, dict):
        return None
    train = config.get("train") or {}
    model = config.get("model") or {}
    derived = config.get("derived") or {}
    settings = {k: train.get(k) for k in TRAIN_SETTINGS if k in train}
    settings["precision"] = derived.get("precision") or best.get("precision")
    weights = best.get("pretrained_weights") or model.get("weights")
    epochs = [rec.get("epoch") for rec in _log(run_dir / RUN_LOG) if rec.get("kind") == "epoch"]
    return RunFacts(
        dataset=dataset,
        init=label,
        init_name=str(best.get("init") or train.get("init") or ""),
        arch=str(best.get("arch") or model.get("arch") or ""),
        pretrained=best.get("family") != "random" and weights is not None,
        weights=str(weights) if weights else None,
        mean=tuple(float(x) for x in best.get("mean") or ()),
        std=tuple(float(x) for x in best.get("std") or ()),
        linear_probe=bool(best.get("linear_probe", train.get("linear_probe", False))),
        n_findings=len(best.get("findings") or ()),
        settings=settings,
        best_epoch=best.get("epoch"),
        epochs_run=max((int(e) for e in epochs if e is not None), default=None),
        adaptation=_adaptation_facts(train, best),
    )


def _adaptation_facts(train: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    """``{"method": "lora", "lora_rank": 8, ...}``: the run's adaptation method and what its Methods
    sentence uses (the method's own options; kNN: the k and temperature chosen on validation)."""
    from cxrbench.train.methods import get_method
    from cxrbench.train.settings import DEFAULT_ADAPTATION

    method = get_method(str(best.get("adaptation") or train.get("adaptation") or DEFAULT_ADAPTATION))
    return method.facts(train, best)


def ssl_objective(config: dict[str, Any]) -> str:
    """The self-supervised objective a pretraining run's ``config.yaml`` (``pretrain`` section) ran:
    DINO self-distillation, with iBOT's masked-patch loss and the KoLeo regularizer only when on."""
    section = config.get("pretrain")
    pre: dict[str, Any] = section if isinstance(section, dict) else {}
    dino = float(pre.get("dino_weight", 1.0) or 0) > 0
    ibot = bool(pre.get("ibot", True)) and float(pre.get("ibot_weight", 1.0) or 0) > 0
    koleo = float(pre.get("koleo_weight", 0.1) or 0) > 0
    parts = [p for p, on in (("the DINO image-level loss", dino), ("the iBOT masked-patch loss", ibot),
                             ("the KoLeo regularizer", koleo)) if on]
    kind = "DINOv2-style self-distillation" if dino and ibot else "DINO self-distillation" if dino else \
        "iBOT masked-patch self-distillation"
    return f"{kind} ({' + '.join(parts)}; teacher = EMA of the student)"


def ssl_sentence(run_dir: Path) -> str | None:
    """``3,200 images of 1,100 patients (train splits of a and b, every image of src)`` from a
    pretraining run's ``best.json``, its objective from its ``config.yaml``; None when the run is not
    there."""
    meta = read_json_or_none(run_dir / RUN_BEST_META)
    pre = (meta or {}).get("pretraining") if isinstance(meta, dict) else None
    if not isinstance(pre, dict):
        return None
    per = pre.get("per_dataset") or {}
    where = ", ".join(f"{d} ({n:,})" for d, n in per.items())
    config = _yaml(run_dir / RUN_CONFIG)
    method = ssl_objective(config) if isinstance(config, dict) else str(pre.get("method", "self-supervised"))
    return (f"{method} for {pre.get('epochs')} epochs on "
            f"{pre.get('images', 0):,} images of {pre.get('patients', 0):,} patients: {where}; "
            f"{pre.get('split', 'train split')}, "
            "no validation or test patient of any dataset of the study")


def _log(path: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def read_protocol(plan: Plan) -> Protocol:
    """Every fact the Methods text states, from the study's output files."""
    study = plan.study
    cfg = study.config
    layout = study.layout
    datasets = []
    for name in cfg.datasets:
        report = read_json_or_none(index_report_path(layout.index_file(name)))
        if isinstance(report, dict):
            datasets.append(dataset_facts(name, report))
    recipes = []
    for name, spec in cfg.preprocess.items():
        seen: list[dict[str, Any]] = []
        for d in cfg.datasets:
            manifest = read_json_or_none(layout.cache_dir(d, name) / CACHE_MANIFEST)
            if isinstance(manifest, dict) and isinstance(manifest.get("recipe"), dict):
                seen.append({**manifest["recipe"], "dtype": manifest.get("dtype", "uint8")})
        if not seen:
            continue
        first = seen[0]
        recipes.append(RecipeFacts(
            name=name, size=int(first.get("size", spec.size)), resize=str(first.get("resize", spec.resize)),
            equalize=bool(first.get("equalize", spec.equalize)),
            resample=tuple(dict.fromkeys(str(r.get("resample", "pil-box")) for r in seen)),
            dtype=str(first.get("dtype")),
        ))
    from cxrbench.study.seeds import deterministic, seed_variance

    runs, metrics = [], []
    for s in plan.of_kind("eval"):
        if s.status != "done":
            continue
        p = s.params
        facts = run_facts(Path(p.run), p.dataset, p.label)
        arm = cfg.inits.get(p.label)
        if facts is not None and arm is not None:  # the study's own name of the init, not a temp path
            ssl = _ssl_of(plan, s.id) if arm.ssl is not None else None
            method = p.condition.as_dict.get("adaptation", "full")
            facts = replace(facts, init_name=arm.init, pretrained_on=arm.domain, base=arm.base,
                            self_supervised=ssl, condition=p.condition.as_dict,
                            seed_variance=seed_variance(arm, method),
                            deterministic=deterministic(arm, method) and len(cfg.seeds) > 1)
        if facts is not None:
            runs.append(facts)
        m = read_json_or_none(s.out / METRICS_FILE)
        if isinstance(m, dict):
            metrics.append(m)
    return Protocol(datasets=datasets, recipes=recipes, runs=runs,
                    evaluation=evaluation_facts(metrics, cfg.evaluation.split),
                    comparisons=ComparisonFacts(
                        reference=cfg.comparisons.reference, alternative=cfg.comparisons.alternative,
                        fdr=cfg.comparisons.fdr, alpha=cfg.comparisons.alpha,
                        method=cfg.comparisons.method),
                    seeds=tuple(cfg.seeds),
                    axes=study_axes(cfg),
                    analyses=analysis_facts(plan),
                    tuning=tuning_facts(plan),
                    pooled=any(s.status == "done" for s in plan.of_kind("pooled")))


def analysis_facts(plan: Plan) -> AnalysisFacts | None:
    """What the subgroup, calibration and shortcut analyses did, from their files' settings."""
    from cxrbench.common.layout import CALIBRATION_FILE, SHORTCUT_MODEL, SUBGROUPS_FILE

    variables: list[str] = []
    mins: list[int] = []
    edges: tuple[float, ...] = ()
    bins: list[int] = []
    recal: list[str] = []
    warned, forced = 0, False
    for s in plan.of_kind("eval"):
        if s.status != "done":
            continue
        sub = read_json_or_none(s.out / SUBGROUPS_FILE)
        if isinstance(sub, dict):
            st = sub.get("settings") or {}
            variables += [v for v in st.get("variables") or [] if v not in variables]
            mins.append(int(st.get("min_positives") or 0))
            edges = edges or tuple(float(x) for x in st.get("age_edges") or ())
        cal = read_json_or_none(s.out / CALIBRATION_FILE)
        if isinstance(cal, dict):
            st = cal.get("settings") or {}
            bins.append(int(st.get("n_bins") or 0))
            if st.get("recalibrate"):
                recal.append(str(st["recalibrate"]))
            warned += len(cal.get("warnings") or [])
            forced = forced or bool(st.get("forced"))
    features: list[str] = []
    shortcut_datasets: list[str] = []
    for s in plan.of_kind("shortcut"):
        doc = read_json_or_none(s.out / SHORTCUT_MODEL) if s.status == "done" else None
        if isinstance(doc, dict):
            features += [f for f in doc.get("features") or [] if f not in features]
            shortcut_datasets.append(s.params.dataset)
    if not (variables or bins or features):
        return None
    return AnalysisFacts(subgroup_variables=tuple(variables), subgroup_min=min(mins) if mins else None,
                         age_edges=edges, calibration_bins=tuple(dict.fromkeys(bins)),
                         recalibration=tuple(dict.fromkeys(recal)), recalibration_warnings=warned,
                         recalibration_forced=forced, shortcut_features=tuple(features),
                         shortcut_datasets=tuple(dict.fromkeys(shortcut_datasets)))


def tuning_facts(plan: Plan) -> list[TuningFacts]:
    """Every finished tuning choice (``tuning.json``): space, strategy, budget, trials, the choice."""
    from cxrbench.train.tune import TUNING_FILE

    out = []
    for s in plan.of_kind("tuned"):
        doc = read_json_or_none(s.out / TUNING_FILE) if s.status == "done" else None
        if not isinstance(doc, dict):
            continue
        st = doc.get("settings") or {}
        p = s.params
        out.append(TuningFacts(
            init=p.label, dataset=p.dataset, method=str(p.condition.as_dict.get("adaptation", "full")),
            strategy=str(st.get("strategy", "grid")), space=dict(st.get("space") or {}),
            chosen=dict(doc.get("chosen") or {}), value=float(doc.get("value") or float("nan")),
            n_trials=len(doc.get("trials") or []), trial_epochs=int(doc.get("trial_epochs") or 0),
            epochs=st.get("epochs"), seed=st.get("seed"), budget=st.get("budget"),
            rungs=tuple((int(r["configs"]), int(r["epochs"])) for r in doc.get("rungs") or []),
            tie_rule=str(doc.get("tie_rule") or "")))
    return out


def _ssl_of(plan: Plan, eval_id: str) -> str | None:
    """The Methods sentence of the self-supervised run the evaluated run started from."""
    train = plan.by_id.get("train/" + eval_id.split("/", 1)[1])
    pre = next((plan[d] for d in (train.deps if train else ()) if plan[d].kind == "ssl"), None)
    return ssl_sentence(pre.out) if pre is not None else None


def evaluation_facts(metrics: list[dict[str, Any]], split: str) -> EvaluationFacts | None:
    """What the metrics.json files say about their bootstrap and thresholds (distinct values)."""
    if not metrics:
        return None

    def distinct(get: Any) -> tuple:
        return tuple(dict.fromkeys(v for v in map(get, metrics) if v is not None))

    boot = [m.get("bootstrap") or {} for m in metrics]
    return EvaluationFacts(
        split=str(metrics[0].get("split", split)),
        n_resamples=tuple(dict.fromkeys(int(b.get("n_resamples") or 0) for b in boot)),
        cluster=tuple(dict.fromkeys(str(b["cluster"]) for b in boot if b.get("cluster"))),
        seed=tuple(dict.fromkeys(int(b["seed"]) for b in boot if b.get("seed") is not None)),
        ci=float((metrics[0].get("ci") or {}).get("level", 0.95)),
        threshold=distinct(lambda m: (m.get("threshold_policy") or {}).get("source")),
    )

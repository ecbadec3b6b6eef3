"""What an export says about a run: the facts gathered from its folder, and the model card.

:func:`collect` reads only the run folder (``best.json``, ``config.yaml``, ``eval/*/metrics.json``)
and, when it is still there, the run's cache (datasets, counts per split); :func:`model_card` renders
the README.md of the hub folder: intended use, the model and how to load it, the training data and
the definition of every label, the metrics with their confidence intervals, subgroups and
calibration where the evaluation computed them, the decision thresholds, limitations and licences.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cxrbench.common.fileio import file_sha256, read_json
from cxrbench.common.layout import EXPORT_ONNX, EXPORT_WEIGHTS, METRICS_FILE, RUN_BEST_WEIGHTS, RUN_EVAL
from cxrbench.export.card_sections import (
    arch_name,
    calibration_lines,
    label_definitions,
    small_mark,
    small_note,
    subgroup_lines,
)
from cxrbench.train.checkpoint import read_best_meta
from cxrbench.train.methods import method_of
from cxrbench.train.runfolder import read_run_config

DISCLAIMER = (
    "Research use only. This model is not a medical device, has not been cleared or approved by "
    "any regulator, and must not be used for diagnosis or treatment decisions."
)


@dataclass
class RunFacts:
    """Everything the export writes about a run, read once."""

    run_dir: Path
    meta: dict[str, Any]
    config: dict[str, Any]
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    thresholds: dict[str, float | None] | None = None
    threshold_source: str | None = None
    datasets: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    weights_sha256: str = ""
    label_definitions: list[str] = field(default_factory=list)  # the index's coding (csv: its mapping)

    @property
    def findings(self) -> list[str]:
        return list(self.meta["findings"])


def _load_snippet(files: list[str], load_name: str) -> list[str]:
    """How to load the export: timm for the hub folder, onnxruntime for ``model.onnx``."""
    if EXPORT_ONNX in files and EXPORT_WEIGHTS not in files:
        hub = load_name.startswith("hf-hub:")
        path = (f'hf_hub_download("{load_name.removeprefix("hf-hub:")}", "{EXPORT_ONNX}")' if hub
                else f'"{load_name.removeprefix("local-dir:")}/{EXPORT_ONNX}"')
        imports = ["import onnxruntime"] + (["from huggingface_hub import hf_hub_download"] if hub else [])
        return ["```python", *imports, "", f"session = onnxruntime.InferenceSession({path})",
                '# input "image" [batch, 3, S, S], normalized as above; outputs "logits" and "probabilities"',
                "```"]
    return ["```python", "import timm", "",
            f'model = timm.create_model("{load_name}", pretrained=True).eval()',
            "labels = model.pretrained_cfg['label_names']", "```"]


def collect(run_dir: str | os.PathLike) -> RunFacts:
    """The run's facts (InputError when it has no best weights)."""
    from cxrbench.evaluate.predict import run_thresholds

    run_dir = Path(run_dir)
    meta = read_best_meta(run_dir)
    facts = RunFacts(
        run_dir=run_dir,
        meta=meta,
        config=read_run_config(run_dir),
        weights_sha256=file_sha256(run_dir / RUN_BEST_WEIGHTS),
    )
    eval_root = run_dir / RUN_EVAL
    for split_dir in sorted(eval_root.iterdir()) if eval_root.is_dir() else []:
        if (split_dir / METRICS_FILE).is_file():
            facts.metrics[split_dir.name] = read_json(split_dir / METRICS_FILE)
    facts.thresholds, facts.threshold_source = run_thresholds(run_dir, facts.findings)
    facts.label_definitions = label_definitions(facts.config)
    cache = (facts.config.get("cache") or {}).get("path")
    if cache and Path(cache).is_dir():
        try:
            from cxrbench.cache.read import open_cache

            c = open_cache(cache)
            facts.datasets = sorted(set(c.columns(["dataset"])["dataset"].astype(str)))
            facts.counts = dict((c.manifest.get("counts") or {}).get("by_split") or {})
        except Exception:  # a cache that moved or changed: the card says less, the export goes on
            pass
    return facts


def label_terms(finding: str, datasets: list[str]) -> str:
    """The source terms feeding ``finding`` in these datasets (the explicit term tables)."""
    from cxrbench.index.findings import DERIVED
    from cxrbench.index.sources.terms import SOURCE_TERMS

    parts = []
    for ds in datasets:
        terms = [t for t, fs in SOURCE_TERMS.get(ds, {}).items() if finding in fs]
        if terms:
            parts.append(f"{ds}: " + ", ".join(f"'{t}'" for t in terms))
    if finding in DERIVED:
        parts.append("derived: " + " OR ".join(DERIVED[finding]))
    if finding.endswith(("_left", "_right")):
        parts.append("one side only")
    return "; ".join(parts) or "as mapped by the dataset's cxrbench index (docs/datasets.md)"


def _ci(m: dict[str, Any] | None) -> str:
    if not isinstance(m, dict) or m.get("value") is None:
        return "n/a"
    lo, hi = m.get("ci_low"), m.get("ci_high")
    return (
        f"{m['value']:.3f} ({lo:.3f}-{hi:.3f})" if lo is not None and hi is not None else f"{m['value']:.3f}"
    )


def _metrics_section(split: str, m: dict[str, Any], split_dir: Path | None = None) -> list[str]:
    boot = m.get("bootstrap") or {}
    ci = m.get("ci") or {}
    policy = (m.get("threshold_policy") or {}).get("source", "?")
    lines = [
        f"### `{split}` split",
        "",
        f"{m.get('n_images', '?')} images of {m.get('n_patients', '?')} patients; "
        f"{int(round(100 * float(ci.get('level', 0.95))))}% bootstrap CIs over "
        f"{boot.get('n_resamples', '?')} resamples ({boot.get('cluster', '?')} level); thresholds from "
        f"the `{policy}` split"
        + (
            " (optimistic: chosen on the evaluated split itself)"
            if policy == "test" and split == "test"
            else ""
        )
        + ".",
        "",
        "| finding | n (positive) | AUROC (CI) | AP (CI) | sensitivity | specificity | threshold |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for f, pf in (m.get("per_finding") or {}).items():
        mm = pf.get("metrics") or {}
        sens, spec = (mm.get("sensitivity") or {}).get("value"), (mm.get("specificity") or {}).get("value")
        t = pf.get("threshold")
        lines.append(
            f"| {f} | {pf.get('n', '?')} ({pf.get('n_positive', '?')}) | "
            f"{_ci(mm.get('auroc'))}{small_mark(pf)} | "
            f"{_ci(mm.get('average_precision'))} | {'n/a' if sens is None else f'{sens:.3f}'} | "
            f"{'n/a' if spec is None else f'{spec:.3f}'} | {'n/a' if t is None else f'{t:.4f}'} |"
        )
    macro = (m.get("macro") or {}).get("metrics") or {}
    per = m.get("per_finding") or {}
    if macro:
        mark = " \u2020" if any(small_mark(e) for e in per.values()) else ""
        lines.append(
            f"| **mean** | | {_ci(macro.get('auroc'))}{mark} | {_ci(macro.get('average_precision'))} | | | |"
        )
    lines += small_note(per)
    for key, title in (("subgroups", "Subgroups"), ("calibration", "Calibration")):
        if m.get(key):
            lines += ["", f"{title} (`{split}`):", "", *_generic(m[key])]
    if split_dir is not None:
        lines += subgroup_lines(split_dir) + calibration_lines(split_dir)
    return lines + [""]


def _generic(value: Any, depth: int = 0) -> list[str]:
    """A nested result the card does not know the shape of, as an indented list (metrics with CIs inline)."""
    pad = "  " * depth
    if isinstance(value, dict):
        if "value" in value and not isinstance(value["value"], dict):
            return [f"{pad}- {_ci(value)}"]
        out = []
        for k, v in value.items():
            if isinstance(v, dict) and "value" in v and not isinstance(v["value"], dict):
                out.append(f"{pad}- {k}: {_ci(v)}")
            elif isinstance(v, dict | list):
                out += [f"{pad}- {k}:", *_generic(v, depth + 1)]
            else:
                out.append(f"{pad}- {k}: {v:.4g}" if isinstance(v, float) else f"{pad}- {k}: {v}")
        return out
    if isinstance(value, list):
        return [line for v in value for line in _generic(v, depth)]
    return [f"{pad}- {value}"]


def model_card(facts: RunFacts, files: list[str], load_name: str) -> str:
    """README.md of the export (YAML front matter for the hub, then Markdown)."""
    meta, cfg = facts.meta, facts.config
    train = cfg.get("train") or {}
    licence = meta.get("license")
    findings = facts.findings
    datasets = facts.datasets or ["(the run's cache is no longer available)"]
    size = int(meta["image_size"])
    recipe = meta.get("recipe") or {}
    cache_cfg = cfg.get("cache") or {}
    augment = (f"flip p={train.get('hflip')}, rotation {train.get('rotate')} deg"
               if train.get("augment", True) else "off")
    on = ", ".join(facts.datasets) or "chest radiographs"
    method = method_of(meta)
    trained = method.uses_training_data
    arch = arch_name(meta)
    title = (f"{arch} from `{meta['init']}`, fine-tuned on {on}" if trained else
             f"{arch} from `{meta['init']}`, {method.name} (no training labels), validated on {on}")
    lines = [
        "---",
        f"license: {licence or 'other'}",
        "library_name: timm",
        "tags: [image-classification, timm, chest-x-ray, multi-label, cxrbench]",
        "pipeline_tag: image-classification",
        "---",
        "",
        f"# {title}",
        "",
        "## Intended use",
        "",
        DISCLAIMER,
        "",
        f"A multi-label classifier of frontal chest radiographs: one independent probability per finding "
        f"({', '.join(findings)}), for research on transfer learning, benchmarking and method development. "
        "It was trained and selected on the data below only; use it elsewhere only after validating it "
        "there.",
        "",
        "## Model",
        "",
        f"- architecture: `{arch_name(meta)}` ({meta.get('family', '?')}), input {size} x {size} px, "
        f"{len(findings)} outputs (logits; sigmoid = probability)",
        f"- initialization: `{meta['init']}`"
        + (f", weights {meta.get('pretrained_weights')}" if meta.get("pretrained_weights") else ""),
        f"- normalization: mean {list(meta['mean'])}, std {list(meta['std'])} (inputs in [0, 1])",
        f"- preprocessing (as in training): the gray radiograph resized to {recipe.get('size', size)} px "
        f"(`{recipe.get('resize', 'stretch')}`), histogram equalization "
        f"{'on' if recipe.get('equalize', True) else 'off'}, copied to 3 channels "
        "(`cxrbench predict RUN` does exactly this)",
        f"- best epoch {meta.get('epoch')} of {train.get('epochs', '?')} by validation mean AUROC "
        f"{float((meta.get('metric') or {}).get('value') or float('nan')):.4f}; precision "
        f"{meta.get('precision', '?')}; seed {train.get('seed', '?')}",
        f"- files: {', '.join(f'`{f}`' for f in files)}; exported from the run's best.safetensors "
        f"(SHA-256 `{facts.weights_sha256}`)",
        "",
        *_load_snippet(files, load_name),
        "",
        "## Training data",
        "",
        f"- dataset(s): {', '.join(datasets)}; images per split: "
        + (
            ", ".join(f"{k} {v:,}" for k, v in sorted(facts.counts.items()))
            or f"train {cache_cfg.get('n_train', '?')}, val {cache_cfg.get('n_val', '?')}"
        ),
        "- patient-level splits; checkpoint and thresholds chosen on the validation split, the test split "
        "never seen in training",
        (f"- recipe: {train.get('epochs', '?')} epochs max (patience {train.get('patience', '?')}), batch "
         f"{train.get('batch_size', '?')}, lr {train.get('lr', '?')} ({train.get('schedule', '?')}), "
         f"weight decay {train.get('weight_decay', '?')}, augmentation "
         f"{augment}"
         + (", linear probe" if train.get("linear_probe") else "")) if trained else
        "- no training: the training split was not read",
        f"- adaptation: {method.sentence([method.facts(train, meta)])}",
        "",
        "Label definitions (the source terms mapped to each finding; 1 = positive, 0 = negative, unknown "
        "labels masked out of loss and metrics):",
        *[f"> {d}" for d in facts.label_definitions],
        "",
        "| finding | defined as | train prevalence |",
        "| --- | --- | --- |",
    ]
    pos_weight = (cfg.get("derived") or {}).get("pos_weight") or {}
    for f in findings:
        pw = pos_weight.get(f)
        prev = f"{1.0 / (1.0 + float(pw)):.3f}" if isinstance(pw, int | float) and pw >= 0 else "n/a"
        lines.append(f"| {f} | {label_terms(f, facts.datasets)} | {prev} |")
    lines += ["", "## Evaluation", ""]
    if not facts.metrics:
        lines += ["The run was not evaluated when it was exported (`cxrbench evaluate RUN`).", ""]
    for split, m in facts.metrics.items():
        lines += _metrics_section(split, m, facts.run_dir / RUN_EVAL / split)
    lines += ["## Decision thresholds", ""]
    if facts.thresholds:
        lines += [
            f"`thresholds.json`: {facts.threshold_source}.",
            "",
            "| finding | threshold |",
            "| --- | --- |",
        ]
        lines += [f"| {f} | {'n/a' if t is None else f'{t:.4f}'} |" for f, t in facts.thresholds.items()]
    else:
        lines.append("None: the run has no evaluation with thresholds chosen outside the test split.")
    lines += _closing_lines(facts, licence)
    return "\n".join(lines)


def _closing_lines(facts: RunFacts, licence: Any) -> list[str]:
    """Limitations, licence and provenance of the card."""
    meta = facts.meta
    return [
        "",
        "## Limitations",
        "",
        "- Trained and tested on the dataset(s) above: hospitals, scanners, protocols, populations and "
        "label sources elsewhere differ, and performance there is unknown until measured.",
        "- Labels mined from reports or assigned by readers are noisy; the metrics are measured against "
        "those labels, not against a reference standard.",
        "- The confidence intervals cover the sampling of test patients only, not other sites or "
        "time periods; a threshold moves sensitivity and specificity where prevalence differs.",
        "- One output per finding, independent; the model does not localize, and it says nothing about "
        "findings it was not trained on.",
        "",
        "## Licence",
        "",
        f"- initialization `{meta['init']}`: "
        + (
            f"`{licence}` (its weights' licence applies to this derived model)"
            if licence
            else "no pretrained weights recorded (trained from scratch "
            "or from a local checkpoint: check its origin)"
        ),
        "- training data: check the dataset's data use agreement before sharing these weights (e.g. "
        "PhysioNet-credentialed data such as MIMIC-CXR restricts redistribution).",
        "",
        "## Provenance",
        "",
        f"- exported by cxrbench from the run folder `{facts.run_dir.name}`; run created "
        f"{meta.get('created', '?')}; "
        f"cache manifest SHA-256 `{(meta.get('cache') or {}).get('manifest_sha256', '?')}`",
        f"- model: {arch_name(meta)}, timm build options {meta.get('model_kwargs') or {}}",
        "",
    ]


def thresholds_doc(facts: RunFacts) -> dict[str, Any]:
    """``thresholds.json``: the validation thresholds per finding (probability >= threshold = positive)."""
    return {
        "findings": facts.findings,
        "thresholds": facts.thresholds,
        "source": facts.threshold_source,
        "rule": "positive when the probability (sigmoid of the logit) is >= the threshold",
    }


def cxrbench_config(facts: RunFacts) -> dict[str, Any]:
    """The ``cxrbench`` section of config.json (timm ignores it): what timm's keys do not say."""
    meta = facts.meta
    return {
        "init": meta["init"],
        "recipe": meta.get("recipe"),
        "findings": facts.findings,
        "val_mean_auroc": (meta.get("metric") or {}).get("value"),
        "epoch": meta.get("epoch"),
        "weights_sha256": facts.weights_sha256,
        "thresholds": facts.thresholds,
        "output": "logits; sigmoid = probability per finding",
    }

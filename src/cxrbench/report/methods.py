"""The generated Methods section: what was actually done, from a :class:`~cxrbench.report.protocol.Protocol`.

Each paragraph states facts read from the study's output files (data, preprocessing, models and
training, evaluation, comparisons), so the text cannot drift from the runs. Adapt it before
publishing; every number in it is also in the tables or the run folders.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
from cxrbench.report.results import StudyResults

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_RESIZE = {"stretch": "stretched to the square (aspect ratio not kept)",
           "pad": "letterboxed (aspect ratio kept, padded with black)",
           "crop": "centre-cropped to a square, then scaled"}
_RESAMPLE = {"area": "exact area averaging (OpenCV INTER_AREA)",
             "pil-box": "Pillow's box filter (a cache made before cxrbench 0.2; exact only at integer "
                        "factors)"}


def _join(items: Sequence[str], last: str = "and") -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" {last} " + items[-1]


def _pct(x: float) -> str:
    return f"{100 * x:g}%"


def normalization(mean: Sequence[float], std: Sequence[float]) -> str:
    """``ImageNet mean and std`` / ``mean 0.5 and std 0.5`` / the numbers."""
    m, s = tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
    if (m, s) == IMAGENET:
        return "the ImageNet mean and standard deviation"
    if len(set(m)) == 1 and len(set(s)) == 1 and m:
        return f"mean {m[0]:g} and standard deviation {s[0]:g}"
    return (f"mean ({', '.join(f'{v:g}' for v in m)}) and standard deviation "
            f"({', '.join(f'{v:g}' for v in s)})")


def data_paragraph(d: DatasetFacts) -> str:
    """One dataset: images, views, rows dropped and why, labels, split."""
    views = ("every view" if d.views in ("all", "*") else
             "frontal views: PA, AP, AP supine" if d.views == "frontal" else f"views {d.views}")
    text = (f"{d.name} (source '{d.source}'): {d.images:,} images of {d.patients:,} patients ({views} kept)"
            + (f"; rows dropped: {_join([f'{n:,} {why}' for why, n in d.dropped.items()])}" if d.dropped
               else "; no row dropped") + ". ")
    if d.findings:
        kind = ("one finding, binary classification" if len(d.findings) == 1
                else f"{len(d.findings)} findings, multi-label classification")
        text += f"Task: {kind} ({', '.join(f.replace('_', ' ') for f in d.findings)}). "
    if d.label_definition:
        text += d.label_definition.rstrip(".") + ". "
    if d.split_method:
        fr = "/".join(_pct(x) for x in d.split_fractions)
        text += (f"Split by patient (no patient in two splits): {d.split_method}"
                 + (f", fractions train/val/test {fr}" if fr else "")
                 + (f", seed {d.split_seed}" if d.split_seed is not None else "") + ".")
    return text.strip()


def preprocess_paragraph(recipes: Sequence[RecipeFacts]) -> str:
    """How pixels were made: decoding, grey levels, size, resize mode and resampler, equalization."""
    parts = []
    for r in recipes:
        res = _join([_RESAMPLE.get(x, x) for x in r.resample], "or")
        parts.append(f"{r.name}: {r.size} x {r.size} px, {_RESIZE.get(r.resize, r.resize)}, downscaled by "
                     f"{res}, " + ("histogram-equalized" if r.equalize else "not equalized"))
    depth = {"uint8": "8-bit", "uint16": "16-bit"}.get(recipes[0].dtype, recipes[0].dtype)
    return (f"Every image was decoded once at its full bit depth (DICOM through its modality LUT and its "
            f"VOI LUT or window, MONOCHROME1 inverted) and stored as {depth} grayscale "
            f"({'; '.join(parts)}). At training and test time the grey image was repeated to three "
            "channels and normalized as the model's initialization expects (below).")


def _init_sentence(runs: Sequence[RunFacts]) -> str:
    r = runs[0]
    how = ("a linear probe (backbone frozen, only the linear classification head trained)" if r.linear_probe
           else "fine-tuned end to end")
    if r.self_supervised:
        start = (f"from the teacher of a self-supervised pretraining run ({r.self_supervised}; started "
                 f"from {r.base})")
    elif r.pretrained_on:
        start = (f"from the weights of a supervised pretraining run on {r.pretrained_on} (itself started "
                 f"from {r.base})")
    elif r.pretrained:
        start = f"from pretrained weights ({r.weights.rsplit('/', 1)[-1] if r.weights else r.init_name})"
    else:
        start = "from random initialization (no pretrained weights)"
    where = sorted({x.dataset for x in runs})
    arch = r.arch if r.pretrained else r.arch.split(".", 1)[0]  # a timm tag would suggest loaded weights
    return (f"{r.init} ('{r.init_name}', architecture {arch}): {how} {start}; inputs normalized with "
            f"{normalization(r.mean, r.std)}" + (f" (on {_join(where)})" if len(where) > 0 else ""))


def _settings_sentence(s: dict[str, Any], single: bool) -> str:
    loss = ("binary classification with one sigmoid output and binary cross-entropy" if single
            else "multi-label classification with one sigmoid output per finding and binary cross-entropy")
    if s.get("pos_weight", True):
        loss += " weighted per finding by the training split's negatives/positives"
    batch = int(s.get("batch_size") or 0) * int(s.get("grad_accum") or 1)
    betas = s.get("betas")
    opt = (f"AdamW (learning rate {s.get('lr'):g}, weight decay {s.get('weight_decay'):g}"
           + (f", betas {tuple(betas)}" if betas else "")
           + (f", layer-wise decay {s.get('layer_decay'):g}" if s.get("layer_decay") else "") + ")")
    sched = s.get("schedule", "cosine")
    sched_text = (f"{sched} schedule with {s.get('warmup_epochs', 0):g} warm-up epoch(s)"
                  + (f" down to {s.get('min_lr'):g}" if s.get("min_lr") else ""))
    stop = (f", early stopping after {s['patience']} epochs without improvement" if s.get("patience") else "")
    aug = []
    if s.get("augment", True):
        if s.get("hflip"):
            aug.append(f"horizontal flips (p = {s['hflip']:g})")
        if s.get("rotate"):
            aug.append(f"rotations up to {s['rotate']:g} degrees")
    return (f"{loss}; {opt}, batch size {batch}, {sched_text}, up to {s.get('epochs')} epochs{stop}; "
            + (f"augmentation: {_join(aug)}" if aug else "no augmentation")
            + (f"; gradient clipping at {s['clip_grad']:g}" if s.get("clip_grad") else "")
            + f"; precision {s.get('precision') or 'fp32'}")


_NAMES = {"lr": "learning rate", "min_lr": "final learning rate", "hflip": "flip probability",
          "rotate": "rotation (degrees)", "patience": "early-stopping patience",
          "grad_accum": "gradient accumulation"}


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    return str(v)


def training_paragraphs(runs: Sequence[RunFacts]) -> list[str]:
    """One sentence per initialization, then the training settings (once when every run shares them);
    the runs at tuned values are left to the tuning paragraph."""
    by_init: dict[str, list[RunFacts]] = {}
    untuned = [r for r in runs if r.condition.get("tuning", "default") == "default"] or list(runs)
    for r in untuned:
        by_init.setdefault(r.init, []).append(r)
    runs = untuned
    models = "Models: " + "; ".join(_init_sentence(v) for v in by_init.values()) + "."
    single = all(r.n_findings == 1 for r in runs)
    common = runs[0].settings
    exceptions = []
    for init, rs in by_init.items():
        for r in rs:
            differ = [k for k in sorted(set(common) | set(r.settings)) if r.settings.get(k) != common.get(k)]
            text = ", ".join(f"{_NAMES.get(k, k.replace('_', ' '))} {_value(r.settings.get(k))} "
                             f"(not {_value(common.get(k))})" for k in differ)
            same = all(x.settings == r.settings for x in rs)
            line = f"{init}: {text}" if same else f"{init} on {r.dataset}: {text}"
            if differ and line not in exceptions:
                exceptions.append(line)
    train = ("Training (every run" + (", except as listed" if exceptions else "") + "): "
             + _settings_sentence(common, single) + "."
             + (f" Exceptions: {'; '.join(exceptions)}." if exceptions else ""))
    best = [(r.best_epoch, r.epochs_run) for r in runs if r.best_epoch is not None]
    kept = "The checkpoint with the highest mean validation AUROC was kept"
    if best:
        lo, hi = min(b for b, _ in best), max(b for b, _ in best)
        ran = [e for _, e in best if e is not None]
        kept += (f" (epoch {lo}" if lo == hi else f" (epochs {lo} to {hi}") + " of the runs"
        kept += (f", which ran {min(ran)} to {max(ran)} epochs)" if ran and min(ran) != max(ran)
                 else (f", which ran {ran[0]} epochs)" if ran else ")"))
    kept += "; the test split was used only for the final evaluation."
    return [models, train + " " + kept]


_CLUSTER = {"patient": "by patient (all images of a drawn patient together)", "image": "by image"}
_THRESHOLD = {
    "val": "chosen on the validation split by Youden's J and applied unchanged to the test split",
    "test": "chosen on the test split itself by Youden's J (as the reference code does; optimistic)",
    "fixed": "fixed in advance",
}


def evaluation_paragraph(ev: EvaluationFacts, ci: float, pooled: bool = False) -> str:
    """Metrics, CIs, the bootstrap unit and the threshold rule, from the metrics.json files; with pooled
    seeds, which intervals the tables show (two-level) and which each run has (one level)."""
    n = _join([f"{x:,}" for x in ev.n_resamples], "or")
    unit = _join([_CLUSTER.get(c, c) for c in ev.cluster], "or") or "by image"
    thr = _join([_THRESHOLD.get(t, t) for t in ev.threshold], "or")
    level = f"{round(100 * ci)}%"
    if not any(ev.n_resamples):
        boot = "without bootstrap intervals"
    elif pooled:
        boot = (f"with {level} two-level bootstrap confidence intervals in the tables (the training seeds "
                f"and the test patients resampled, {n} resamples of test patients drawn {unit}, seed "
                f"{_join([str(s) for s in ev.seed], 'or')}); each run's own interval, over test patients "
                "only (one level), is in results.csv; every model was scored on the same resamples, so "
                "comparisons are paired")
    else:
        boot = (f"with {level} percentile confidence intervals from {n} bootstrap resamples of the test "
                f"set drawn {unit} (one level: the test patients; seed "
                f"{_join([str(s) for s in ev.seed], 'or')}); every model was scored on the same resamples, "
                "so comparisons are paired")
    return (f"Performance on the {ev.split} split is AUROC per finding (images whose label is unknown left "
            f"out) and its mean over findings, {boot}. Sensitivity, specificity, accuracy and F1 use a "
            f"threshold per finding {thr}. A finding with fewer than 10 positive or negative test images, "
            "and a mean over such a finding, is marked as unreliable where it is shown.")


def comparison_paragraph(c: ComparisonFacts, pooled: bool = False) -> str:
    """The tests, the multiplicity correction and the power statement; with pooled seeds the tables'
    tests are the paired two-level bootstrap (DeLong has no version for pooled seeds)."""
    who = f"each initialization with {c.reference}" if c.reference else "every pair of initializations"
    alt = "one-sided (the first better than the second)" if c.alternative == "greater" else "two-sided"
    if pooled:
        test = ("paired two-level bootstrap test on the difference of the seed-pooled AUROCs (DeLong's test "
                "has no version for pooled seeds and is not shown; it is computed for each seed's "
                "comparison, "
                "p_delong in results.csv)")
    elif c.method == "delong":
        test = "DeLong test (the paired bootstrap computed as well, in results.csv)"
    else:
        test = "paired bootstrap test on the AUROC difference (DeLong's test computed as well, p_delong in "
        test += "results.csv)"
    fdr = ("p-values were adjusted with the Benjamini-Hochberg procedure over the findings of each dataset "
           "(for the mean AUROC: over every dataset and initialization of the main table)"
           if c.fdr == "bh" else "p-values were not adjusted for multiple testing")
    return (f"We compared {who} with a {alt} {test}; {fdr}; significance level {c.alpha:g}. Beside each "
            "result that is not significant the report gives the smallest difference the test set could "
            "detect "
            "with 80% power at the 5% level (binormal AUROC variances from the test positives and negatives "
            "and the observed correlation of the paired AUROCs), so that 'not significant' reads as 'could "
            "not tell' where the test set was too small.")


def analyses_paragraph(a: AnalysisFacts) -> str | None:
    """The subgroup, calibration and shortcut analyses that ran, as their files record them."""
    parts = []
    if a.subgroup_variables:
        ages = (f" (age bands at {', '.join(f'{x:g}' for x in a.age_edges)} years)"
                if "age" in a.subgroup_variables and a.age_edges else "")
        few = (f"; subgroups with fewer than {a.subgroup_min} positives or negatives are reported but left "
               "out of the gaps, and a gap with fewer than two usable subgroups is not estimable"
               if a.subgroup_min else "")
        parts.append(f"per subgroup of {_join(list(a.subgroup_variables))}{ages}: AUROC, sensitivity and "
                     "specificity at the evaluation's thresholds on the same patient resamples, and the "
                     f"largest gap per variable with a paired bootstrap CI and Bonferroni-adjusted p{few}")
    if a.calibration_bins:
        bins = _join([str(b) for b in a.calibration_bins], "or")
        text = (f"calibration: ECE over {bins} equal-mass bins and the Brier score with bootstrap CIs, and "
                "the slope and intercept of a logistic fit (flagged unstable when implausible or fitted on "
                "fewer than 10 positives or negatives)")
        if a.recalibration:
            text += (f"; {_join(list(a.recalibration), 'or')} recalibration fitted on the validation split "
                     "only and refused for a finding with fewer than 10 validation positives or negatives"
                     + (" unless forced (it was forced)" if a.recalibration_forced else ""))
            if a.recalibration_warnings:
                text += f" ({a.recalibration_warnings} map(s) flagged as fitted on fewer than 30)"
        parts.append(text)
    if a.shortcut_features:
        parts.append("a metadata-only shortcut baseline (a logistic regression on "
                     f"{_join(list(a.shortcut_features))}, fitted on the train split of "
                     f"{_join(list(a.shortcut_datasets))}), against which every image model was tested "
                     "(one-sided paired bootstrap, BH over the findings)")
    return ("Further analyses (default condition): " + "; ".join(parts) + ".") if parts else None


_STRATEGY = {"grid": "a grid search (a seeded random subset of the grid where it exceeded the budget)",
             "halving": "successive halving (every point on a short schedule, the best on longer ones)"}


def tuning_paragraph(tuning: Sequence[TuningFacts], seeds: Sequence[int]) -> str | None:
    """How each arm's training options were chosen on validation (from its tuning.json), and what was
    chosen."""
    if not tuning:
        return None
    first = tuning[0]
    how = _join([_STRATEGY.get(s, s) for s in sorted({t.strategy for t in tuning})], "or")

    def space_text(t: TuningFacts) -> str:
        return "; ".join(f"{k} {', '.join(_value(v) for v in vals)}" for k, vals in t.space.items())

    space = space_text(first) if all(t.space == first.space for t in tuning) else \
        "its own search space (" + " | ".join(f"{t.init}: {space_text(t)}" for t in tuning) + ")"
    rungs = {t.rungs for t in tuning if len(t.rungs) > 1}
    rung_text = (" in rungs of " + " | ".join(", ".join(f"{n} x {e} epoch(s)" for n, e in r) for r in rungs)
                 if rungs else "")
    budget = _join(sorted({str(t.budget) for t in tuning if t.budget}), "or")
    epochs = _join(sorted({str(t.epochs) for t in tuning if t.epochs}), "or")
    seed = _join(sorted({str(t.seed) for t in tuning if t.seed is not None}), "or")
    spent = f"{sum(t.n_trials for t in tuning)} trials, {sum(t.trial_epochs for t in tuning):,} trial-epochs"
    chosen = "; ".join(f"{t.init}" + (f" ({t.method})" if t.method != "full" else "") + f" on {t.dataset}: "
                       + ", ".join(f"{k} {_value(v)}" for k, v in t.chosen.items()) for t in tuning)
    return (f"Tuning: each initialization's training options were chosen by {how} over {space}{rung_text} "
            f"({spent}" + (f"; budget {budget} trial-epochs per arm" if budget else "") + ")"
            + (f", each trial trained for up to {epochs} epochs" if epochs else "")
            + f" with one seed ({seed}) on the train split and scored on the validation split only (no "
            "tuning run read the test split); selection by the validation mean AUROC over the dataset's "
            f"findings ({first.tie_rule or 'ties: the first point'}). Chosen: {chosen}. The tuned runs were "
            f"then trained at these values with every seed ({_join([str(s) for s in seeds])}) and evaluated "
            "like the runs at the default recipe, beside which the report sets them.")


def design_paragraph(p: Protocol) -> str | None:
    """Seeds pooled, label budgets, label noise: the study's axes beyond the recipes."""
    parts = []
    if len(p.seeds) > 1:
        seeds = _join([str(s) for s in p.seeds])
        parts.append(f"Every run was repeated with {len(p.seeds)} training seeds ({seeds}); results are "
                     "the mean over the seeds with a two-level bootstrap confidence interval "
                     "(seeds and test patients resampled, the same patient resamples for every "
                     "initialization, so comparisons stay paired), with the seed-to-seed SD beside it")
    fr = p.axes.get("label_fraction")
    if fr:
        parts_fr = [f"{_join([f'{v:g}' for v in fr if v <= 1])} of the training patients"] if any(
            v <= 1 for v in fr) else []
        parts_fr += [f"{_join([str(int(v)) for v in fr if v > 1])} training patients"] if any(
            v > 1 for v in fr) else []
        shares = " and ".join(parts_fr)
        parts.append(f"label budgets of {shares}: nested subsets (each smaller one "
                     "inside the larger), stratified by the patients' rarest positive finding, drawn per "
                     "seed; validation and test splits unchanged")
    nz = p.axes.get("label_noise")
    if nz:
        parts.append(f"symmetric label noise: a share of {_join([f'{v:g}' for v in nz])} of the known "
                     "training labels of each finding flipped (0 <-> 1, drawn per seed); validation and test "
                     "labels untouched")
    methods = p.axes.get("adaptation")
    if methods:
        parts.append("adaptation methods " + _join([_adaptation_words(m, p.runs) for m in methods]))
    if len(p.seeds) > 1:
        covers = {}
        for r in p.runs:
            key = f"{r.init}" + (f" ({r.adaptation.get('method')})" if len(methods or ()) > 1 else "")
            if r.seed_variance and key not in covers:
                covers[key] = r.seed_variance
        if covers:
            parts.append("the seed SD and CI of each arm cover: "
                         + "; ".join(f"{k}: {v}" for k, v in covers.items()))
        once = sorted({r.init + f" ({r.adaptation.get('method')})" for r in p.runs if r.deterministic})
        if once:
            parts.append(f"{_join(once)} ran once, as every seed gives the same run (a method that does not "
                         "depend on the seed on fixed weights), and is shown as deterministic with a "
                         "one-level "
                         "interval")
    if not parts:
        return None
    return "Design: " + "; ".join(parts) + "."


def _adaptation_words(method: str, runs: list[RunFacts]) -> str:
    """How one adaptation method was run, in words (its registry entry's sentence, with what its runs
    recorded)."""
    from cxrbench.train.methods import get_method

    return get_method(method).sentence([r.adaptation for r in runs if r.adaptation.get("method") == method])


def methods_text(res: StudyResults) -> list[str]:
    """The Methods paragraphs for ``res`` (empty when nothing was read back)."""
    p: Protocol = res.protocol
    if not isinstance(p, Protocol) or p.empty:
        return []
    out = [data_paragraph(d) for d in p.datasets]
    if p.recipes:
        out.append(preprocess_paragraph(p.recipes))
    if p.runs:
        out += training_paragraphs(p.runs)
    design = design_paragraph(p)
    if design:
        out.append(design)
    tuned = tuning_paragraph(p.tuning, p.seeds)
    if tuned:
        out.append(tuned)
    if p.evaluation is not None:
        out.append(evaluation_paragraph(p.evaluation, res.ci_level, p.pooled))
    if p.comparisons is not None and res.inits and len(res.inits) > 1:
        out.append(comparison_paragraph(p.comparisons, p.pooled))
    analyses = analyses_paragraph(p.analyses) if p.analyses is not None else None
    if analyses:
        out.append(analyses)
    return out

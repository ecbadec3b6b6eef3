"""The generated Methods text states what the protocol facts say, and nothing the runs did not do."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from cxrbench.report.methods import (
    data_paragraph,
    evaluation_paragraph,
    methods_text,
    normalization,
    preprocess_paragraph,
    training_paragraphs,
)
from cxrbench.report.protocol import DatasetFacts, EvaluationFacts, Protocol, RecipeFacts, RunFacts
from cxrbench.report.results import StudyResults

SETTINGS = {"lr": 1e-4, "epochs": 20, "batch_size": 16, "grad_accum": 2, "weight_decay": 0.05,
            "schedule": "cosine", "warmup_epochs": 1.0, "patience": 5, "augment": True, "hflip": 0.5,
            "rotate": 0.0, "pos_weight": True, "precision": "bf16"}


def run(**kw) -> RunFacts:
    base = dict(dataset="nih", init="dino", init_name="dinov2-vitb14", arch="vit_base_patch14_dinov2",
                pretrained=True, weights="/hub/dinov2/model.safetensors", mean=(0.485, 0.456, 0.406),
                std=(0.229, 0.224, 0.225), linear_probe=False, n_findings=3, settings=dict(SETTINGS),
                best_epoch=7, epochs_run=12)
    return RunFacts(**{**base, **kw})


def test_data_paragraph_names_views_drops_labels_and_split():
    d = DatasetFacts(name="covid", source="csv", images=54, patients=40, findings=("covid_19",),
                     views="PA,AP", label_definition="Labels: from the CSV (finding: column f: 1 positive).",
                     dropped={"LATERAL views": 3, "missing images": 184},
                     split_method="stratified by patient",
                     split_fractions=(0.7, 0.1, 0.2), split_seed=3)
    text = data_paragraph(d)
    assert text.startswith("covid (source 'csv'): 54 images of 40 patients (views PA,AP kept); rows dropped: "
                           "3 LATERAL views and 184 missing images.")
    assert "one finding, binary classification (covid 19)" in text
    assert "Labels: from the CSV (finding: column f: 1 positive)." in text
    assert text.endswith("stratified by patient, fractions train/val/test 70%/10%/20%, seed 3.")
    frontal = data_paragraph(replace(d, views="frontal", dropped={}, findings=("a", "b")))
    assert "(frontal views: PA, AP, AP supine kept); no row dropped" in frontal
    assert "2 findings, multi-label classification" in frontal


def test_training_states_fine_tune_or_probe_random_or_pretrained_and_normalization():
    runs = [run(), run(dataset="chexpert"),
            run(init="scratch", init_name="random-vit-base", pretrained=False, weights=None,
                mean=(0.5,) * 3, std=(0.5,) * 3),
            run(init="probe", init_name="imagenet-vitb16", linear_probe=True, weights="/w/in21k.safetensors",
                settings={**SETTINGS, "lr": 1e-3})]
    models, train = training_paragraphs(runs)
    assert ("dino ('dinov2-vitb14', architecture vit_base_patch14_dinov2): fine-tuned end to end from "
            "pretrained weights (model.safetensors); inputs normalized with the ImageNet mean and standard "
            "deviation (on "
            "chexpert and nih)") in models
    assert "scratch ('random-vit-base', architecture vit_base_patch14_dinov2): fine-tuned end to end from " \
           "random initialization (no pretrained weights); inputs normalized with mean 0.5 and standard " \
           "deviation 0.5" in models
    assert ("probe ('imagenet-vitb16', architecture vit_base_patch14_dinov2): a linear probe (backbone "
            "frozen") in models
    assert "multi-label classification with one sigmoid output per finding" in train
    assert "batch size 32" in train  # 16 x 2 accumulation steps
    assert "horizontal flips (p = 0.5)" in train and "rotations" not in train and "precision bf16" in train
    assert "Exceptions: probe: learning rate 0.001 (not 0.0001)." in train
    assert "(epoch 7 of the runs, which ran 12 epochs)" in train
    _, single = training_paragraphs([run(n_findings=1)])
    assert "binary classification with one sigmoid output" in single and "Exceptions" not in single


def test_normalization_names_known_statistics():
    assert normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).startswith("the ImageNet")
    assert normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) == "mean 0.5 and standard deviation 0.5"
    assert normalization((0.1, 0.2, 0.3), (1, 1, 1)) == ("mean (0.1, 0.2, 0.3) and standard deviation "
                                                         "(1, 1, 1)")


def test_preprocess_and_evaluation_read_the_files_facts():
    text = preprocess_paragraph([RecipeFacts("r224", 224, "pad", False, resample=("area", "pil-box"))])
    assert "r224: 224 x 224 px, letterboxed" in text and "not equalized" in text
    assert "exact area averaging (OpenCV INTER_AREA) or Pillow's box filter (a cache made before" in text
    ev = EvaluationFacts(split="test", n_resamples=(2000,), cluster=("image",), seed=(4,), ci=0.9,
                         threshold=("test",))
    text = evaluation_paragraph(ev, 0.9)
    assert ("90% percentile confidence intervals from 2,000 bootstrap resamples of the test set drawn by "
            "image (one level: the test patients; seed 4)") in text
    assert "chosen on the test split itself" in text
    none = evaluation_paragraph(replace(ev, n_resamples=(0,)), 0.95)
    assert "without bootstrap intervals" in none and "resamples drawn" not in none


def test_methods_text_is_empty_without_facts_and_ordered_with_them():
    table = pd.DataFrame(columns=["dataset", "recipe", "seed", "init", "finding", "auroc", "auroc_lo",
                                  "auroc_hi"])
    res = StudyResults(name="s", inits=["dino"], datasets=["nih"], table=table)
    assert methods_text(res) == []
    res.protocol = Protocol(
        datasets=[DatasetFacts("nih", "nih", 10, 5, ("a",), "frontal")],
        recipes=[RecipeFacts("r", 32, "stretch", True)], runs=[run()],
        evaluation=EvaluationFacts("test", (100,), ("patient",), (0,), 0.95, ("val",)))
    paras = methods_text(res)
    assert [p.split(" ", 1)[0] for p in paras] == ["nih", "Every", "Models:", "Training", "Performance"]


def test_the_design_paragraph_names_seeds_budgets_and_noise():
    from cxrbench.report.methods import design_paragraph

    assert design_paragraph(Protocol(seeds=(0,))) is None
    axes = {"label_fraction": [0.1, 1.0], "label_noise": [0.0, 0.2]}
    text = design_paragraph(Protocol(seeds=(0, 1, 2), axes=axes))
    assert "3 training seeds (0, 1 and 2)" in text and "two-level bootstrap" in text
    assert "label budgets of 0.1 and 1 of the training patients: nested subsets" in text
    assert "share of 0 and 0.2 of the known training labels" in text


def test_intervals_and_tests_are_named_as_the_tables_show_them_single_seed_or_pooled():
    from cxrbench.report.methods import comparison_paragraph
    from cxrbench.report.protocol import ComparisonFacts

    ev = EvaluationFacts(split="test", n_resamples=(1000,), cluster=("patient",), seed=(0,), ci=0.95,
                         threshold=("val",))
    pooled = evaluation_paragraph(ev, 0.95, pooled=True)
    assert "95% two-level bootstrap confidence intervals in the tables" in pooled
    assert "one level" in pooled and "results.csv" in pooled  # each run's own interval
    assert "two-level" not in evaluation_paragraph(ev, 0.95)
    c = ComparisonFacts(reference="imagenet", alternative="two-sided", fdr="bh", alpha=0.05)
    one = comparison_paragraph(c)
    assert "reported alongside" not in one and "p_delong in results.csv" in one
    many = comparison_paragraph(c, pooled=True)
    assert "paired two-level bootstrap test" in many
    assert "DeLong's test has no version for pooled seeds" in many
    assert "reported alongside" not in many and "80% power" in many and "could not tell" in many


def test_analyses_that_ran_are_stated_from_their_settings():
    from cxrbench.report.methods import analyses_paragraph
    from cxrbench.report.protocol import AnalysisFacts

    a = AnalysisFacts(subgroup_variables=("sex", "age"), subgroup_min=10, age_edges=(40.0, 60.0),
                      calibration_bins=(10,), recalibration=("isotonic",), recalibration_warnings=2,
                      shortcut_features=("view", "sex", "age"), shortcut_datasets=("nih",))
    text = analyses_paragraph(a)
    assert "per subgroup of sex and age (age bands at 40, 60 years)" in text and "not estimable" in text
    assert "ECE over 10 equal-mass bins" in text and "isotonic recalibration fitted on the validation" in text
    assert "2 map(s) flagged" in text and "logistic regression on view, sex and age" in text
    assert analyses_paragraph(AnalysisFacts()) is None
    assert "shortcut" not in analyses_paragraph(AnalysisFacts(calibration_bins=(15,)))


def test_tuning_seed_variance_and_deterministic_arms_in_the_methods():
    from cxrbench.report.methods import design_paragraph, tuning_paragraph
    from cxrbench.report.protocol import TuningFacts

    t = [TuningFacts(init=i, dataset="nih", method="full", strategy="halving",
                     space={"lr": [1e-5, 1e-4], "weight_decay": [0.0, 0.05]}, chosen={"lr": lr}, value=0.8,
                     n_trials=7, trial_epochs=15, epochs=5, seed=0, budget=20, rungs=((4, 1), (2, 3)),
                     tie_rule="ties to 4 decimals: the first point")
         for i, lr in (("dino", 1e-5), ("scratch", 1e-4))]
    text = tuning_paragraph(t, (0, 1, 2))
    assert "successive halving" in text and "lr 1e-05, 1e-04; weight_decay 0, 0.05" not in text
    assert "lr 1e-05, 0.0001; weight_decay 0, 0.05" in text
    assert "in rungs of 4 x 1 epoch(s), 2 x 3 epoch(s)" in text
    assert "14 trials, 30 trial-epochs; budget 20" in text and "no tuning run read the test split" in text
    assert "Chosen: dino on nih: lr 1e-05; scratch on nih: lr 0.0001" in text and "(0, 1 and 2)" in text
    assert tuning_paragraph([], (0,)) is None
    runs = [run(seed_variance="fine-tuning; the pretrained weights are fixed"),
            run(init="knn", adaptation={"method": "knn"}, deterministic=True,
                seed_variance="none: deterministic, one run (the same for every seed)")]
    design = design_paragraph(Protocol(seeds=(0, 1), runs=runs))
    assert "the seed SD and CI of each arm cover: dino: fine-tuning; the pretrained weights are fixed" \
        in design
    assert "knn (knn) ran once, as every seed gives the same run" in design


def test_tuned_runs_are_not_listed_as_exceptions_to_the_recipe():
    runs = [run(), run(settings={**SETTINGS, "lr": 3e-4}, condition={"tuning": "tuned"})]
    _, train = training_paragraphs(runs)
    assert "Exceptions" not in train

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
    assert "90% percentile confidence intervals from 2,000 bootstrap resamples drawn by image (seed 4)" \
        in text
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

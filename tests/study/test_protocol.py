"""Methods facts read back from the files the stages wrote (index report, run folder)."""

from __future__ import annotations

from cxrbench.index.build import build_index
from cxrbench.phantom.generate import generate
from cxrbench.study.protocol import dataset_facts, evaluation_facts, run_facts


def test_dataset_facts_from_a_real_index_report(tmp_path):
    generate(tmp_path / "chex", "chexpert", 30, size=32, seed=1, quiet=True)
    _, findings, report = build_index("chexpert", tmp_path / "chex", views="frontal", uncertain="ignore",
                                      split_mode="stratified", split_seed=4)
    facts = dataset_facts("chex", report)
    assert facts.source == "chexpert" and facts.images == report["images_indexed"] > 0
    assert facts.findings == tuple(findings) and facts.views == "frontal"
    lateral = sum(n for k, n in report["dropped"]["views"].items() if k == "LATERAL")
    assert facts.dropped.get("LATERAL views", 0) == lateral
    assert facts.label_definition.startswith("Labels: the CheXpert labeler's report mentions")
    assert "uncertain counted as unknown" in facts.label_definition
    assert facts.split_method.startswith("stratified") and facts.split_seed == 4
    assert facts.split_fractions == (0.7, 0.1, 0.2)


def test_run_facts_from_a_trained_run_folder(tiny_run, tmp_path):
    run, _ = tiny_run
    facts = run_facts(run, "nih", "scratch")
    assert facts.init_name == "random-vit-test" and not facts.pretrained and facts.weights is None
    assert facts.mean == (0.5, 0.5, 0.5) and not facts.linear_probe and facts.n_findings == 2
    assert facts.settings["lr"] == 1e-3 and facts.settings["epochs"] == 4
    assert facts.settings["batch_size"] == 8
    assert facts.settings["precision"] == "fp32" and facts.epochs_run == 4 and 1 <= facts.best_epoch <= 4
    assert run_facts(tmp_path, "nih", "none") is None  # not a run folder: skipped


def test_evaluation_facts_list_every_distinct_setting():
    metrics = [{"split": "test", "bootstrap": {"n_resamples": 100, "seed": 0, "cluster": "patient"},
                "threshold_policy": {"source": "val"}, "ci": {"level": 0.95}},
               {"split": "test", "bootstrap": {"n_resamples": 100, "seed": 0, "cluster": "image"},
                "threshold_policy": {"source": "val"}, "ci": {"level": 0.95}}]
    ev = evaluation_facts(metrics, "test")
    assert ev.cluster == ("patient", "image") and ev.n_resamples == (100,) and ev.threshold == ("val",)
    assert evaluation_facts([], "test") is None


def test_the_self_supervised_objective_is_named_from_what_the_run_trained():
    from cxrbench.study.protocol import ssl_objective

    assert ssl_objective({"pretrain": {}}).startswith("DINOv2-style self-distillation (the DINO image-level "
                                                      "loss + the iBOT masked-patch loss + the KoLeo")
    no_ibot = ssl_objective({"pretrain": {"ibot": False, "koleo_weight": 0}})
    assert no_ibot.startswith("DINO self-distillation (the DINO image-level loss;") and "iBOT" not in no_ibot
    assert "dinov2" not in no_ibot.lower()

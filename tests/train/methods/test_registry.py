"""train.methods: the registry is the one list of adaptation methods: TrainConfig's options, the CLI's
choices, the study's `adaptations:` and the Methods sentences all come from it."""

from __future__ import annotations

import pytest

from cxrbench.common.errors import InputError
from cxrbench.train.config import TrainConfig
from cxrbench.train.methods import METHODS, AllMethodOptions, get_method, method_of, owned_options
from cxrbench.train.methods.base import Method
from cxrbench.train.settings import DEFAULT_ADAPTATION, TrainSettings


def test_every_method_is_complete_for_its_regime():
    assert DEFAULT_ADAPTATION in METHODS and list(METHODS)[0] == DEFAULT_ADAPTATION
    for name, m in METHODS.items():
        assert m.name == name and m.summary and m.regime in ("loop", "embeddings")
        hook = "prepare" if m.regime == "loop" else "fit"
        assert getattr(type(m), hook) is not getattr(Method, hook), f"{name} lacks its {hook} hook"
        assert isinstance(m.sentence([]), str) and m.sentence([])


def test_each_option_has_one_owner_and_survives_joining_into_train_config():
    owners = owned_options()
    shared = set(TrainSettings.model_fields)
    for m in METHODS.values():
        if m.options is None:
            continue
        assert issubclass(AllMethodOptions, m.options), f"{m.name}'s options are not joined into TrainConfig"
        for key in m.options.model_fields:
            assert key not in shared and owners[key] == m.name and key in TrainConfig.model_fields
        # validators are joined by name: a name used twice would silently hide the other
        own = set(m.options.__pydantic_decorators__.field_validators)
        assert own <= set(TrainConfig.__pydantic_decorators__.field_validators)
    assert set(owners) == set(AllMethodOptions.model_fields)


def test_an_options_validator_still_runs_inside_train_config():
    with pytest.raises(InputError, match="every k must be at least 1"):
        TrainConfig.from_dict({"cache": "c", "init": "i", "out": "o", "adaptation": "knn", "knn_k": "0,5"})
    assert TrainConfig(cache="c", init="i", out="o", lora_targets="qkv, fc2").lora_targets == ("qkv", "fc2")


def test_unknown_methods_are_one_error_with_the_closest_name():
    with pytest.raises(InputError, match="did you mean 'lora'"):
        get_method("lorra")
    with pytest.raises(InputError, match="adaptation method 'lorra'"):
        TrainConfig.from_dict({"cache": "c", "init": "i", "out": "o", "adaptation": "lorra"})
    assert method_of({}) is METHODS["full"] and method_of({"adaptation": "knn"}) is METHODS["knn"]


def test_study_adaptations_and_report_sentences_come_from_the_registry():
    from cxrbench.report.methods import _adaptation_words
    from cxrbench.report.protocol import RunFacts
    from cxrbench.study.sections import adaptation_list

    assert adaptation_list(list(METHODS)) == list(METHODS)
    with pytest.raises(ValueError, match="unknown adaptation 'knnn'"):
        adaptation_list(["full", "knnn"])
    runs = [RunFacts(dataset="a", init="x", init_name="x", arch="a", pretrained=False, weights=None, mean=(),
                     std=(), linear_probe=False, n_findings=1, settings={}, best_epoch=1, epochs_run=1,
                     adaptation=METHODS["knn"].facts({}, {"knn": {"k": k, "temperature": 0.07}}))
            for k in (10, 100)]
    assert "chosen: k 10 to 100, temperature 0.07" in _adaptation_words("knn", runs)


def test_stochastic_flags():
    assert METHODS["full"].stochastic and METHODS["lora"].stochastic and METHODS["linear"].stochastic
    assert not METHODS["knn"].stochastic  # a fixed backbone and bank vote the same for every seed

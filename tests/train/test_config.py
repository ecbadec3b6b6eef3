import pytest

from cxrbench.common.errors import InputError
from cxrbench.train.config import RUNTIME_KEYS, TrainConfig

BASE = {"cache": "c", "init": "random-vit-test", "out": "r"}


def test_defaults_are_the_reference_study():
    cfg = TrainConfig(**BASE)
    assert (cfg.lr, cfg.weight_decay, cfg.batch_size, cfg.epochs) == (1e-5, 0.0, 30, 100)
    assert (cfg.hflip, cfg.rotate, cfg.pos_weight, cfg.augment) == (0.5, 7.0, True, True)
    assert cfg.schedule == "constant" and cfg.layer_decay is None and not cfg.linear_probe


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(InputError) as info:
        TrainConfig.from_dict({**BASE, "lrr": 1e-4}, where="x.yaml")
    msg = info.value.one_line()
    assert msg.startswith("x.yaml:") and "'lrr'" in msg and "did you mean 'lr'" in msg


@pytest.mark.parametrize(("key", "value"), [("lr", -1.0), ("batch_size", 0), ("precision", "fp8"),
                                            ("schedule", "linear"), ("hflip", 1.5), ("device", "tpu")])
def test_bad_values_name_the_key(key, value):
    with pytest.raises(InputError) as info:
        TrainConfig.from_dict({**BASE, key: value})
    assert info.value.one_line().split(":")[1].strip().startswith(key)
    assert repr(value) in info.value.one_line()


def test_missing_required_key():
    with pytest.raises(InputError, match="'init' is required"):
        TrainConfig.from_dict({"cache": "c", "out": "r"})


def test_cross_field_checks():
    with pytest.raises(InputError, match="min_lr"):
        TrainConfig.from_dict({**BASE, "lr": 1e-5, "min_lr": 1e-3})
    with pytest.raises(InputError, match="not divisible by grad_accum"):
        TrainConfig.from_dict({**BASE, "batch_size": 30, "grad_accum": 4})
    with pytest.raises(InputError, match="keep_shared_head needs"):
        TrainConfig.from_dict({**BASE, "keep_shared_head": True})


def test_findings_parse_from_comma_string_and_refuse_duplicates():
    assert TrainConfig(**BASE, findings="a, b").findings == ("a", "b")
    with pytest.raises(InputError, match="twice"):
        TrainConfig.from_dict({**BASE, "findings": "a,a"})


def test_frozen():
    cfg = TrainConfig(**BASE)
    with pytest.raises(Exception, match="frozen"):
        cfg.lr = 1.0


def test_identity_ignores_runtime_keys_and_differences_name_keys():
    a = TrainConfig(**BASE, workers=0, device="cpu")
    b = TrainConfig(**{**BASE, "cache": "elsewhere", "out": "r2"}, workers=3, log_every=1)
    assert not set(a.identity()) & RUNTIME_KEYS
    assert a.differences(b) == []
    c = TrainConfig(**BASE, lr=3e-5)
    assert a.differences(c) == ["lr: saved 1e-05, given 3e-05"]


def test_micro_batch_splits_the_global_batch():
    cfg = TrainConfig(**BASE, batch_size=32, grad_accum=2)
    assert cfg.micro_batch(1) == 16 and cfg.micro_batch(4) == 4
    with pytest.raises(InputError, match="cannot be split over 3 processes"):
        cfg.micro_batch(3)


def test_to_dict_roundtrips():
    cfg = TrainConfig(**BASE, findings=["a"], betas=(0.8, 0.9))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_compile_is_runtime_and_step_identity_is_stable():
    a = TrainConfig(cache="c", init="i", out="o", compile=False)
    b = TrainConfig(cache="c", init="i", out="o", compile=True)
    assert "compile" not in a.identity() and a.differences(b) == []  # resume may toggle it
    # a study hashes compile as false forever: toggling it retrains nothing, old keys stay valid
    assert a.step_identity() == b.step_identity() and a.step_identity()["compile"] is False
    assert not {"cache", "init", "out", "findings", "workers", "device"} & set(a.step_identity())


def test_step_identity_hashes_a_new_key_only_when_set(monkeypatch):
    from cxrbench.train import config as config_module

    # pretend 'clip_grad' were added after the key list was frozen: at its default it is not hashed
    keyed = tuple(k for k in config_module._KEYED_V1 if k != "clip_grad")
    monkeypatch.setattr(config_module, "_KEYED_V1", keyed)
    assert "clip_grad" not in TrainConfig(cache="c", init="i", out="o").step_identity()
    changed = TrainConfig(cache="c", init="i", out="o", clip_grad=1.0).step_identity()
    assert changed["clip_grad"] == 1.0


def test_for_run_is_the_one_resume_merge_rule(tmp_path):
    import yaml

    run = tmp_path / "run"
    with pytest.raises(InputError, match="cache= is required for a new run"):
        TrainConfig.for_run(run, {"init": "random-vit-test"})
    run.mkdir()
    saved = TrainConfig(cache="cache", init="random-vit-test", out=str(run), lr=3e-4, epochs=7)
    (run / "config.yaml").write_text(yaml.safe_dump({"train": saved.to_dict()}))
    resumed = TrainConfig.for_run(run, {"epochs": None, "workers": 0})  # None = not given
    assert (resumed.lr, resumed.epochs, resumed.workers) == (3e-4, 7, 0)
    (tmp_path / "over.yaml").write_text("lr: 1.0e-3\nepochs: 2\n")
    given = TrainConfig.for_run(run, {"epochs": 5}, config_file=tmp_path / "over.yaml")
    assert (given.lr, given.epochs) == (1e-3, 5)  # saved < --config < options
    with pytest.raises(InputError, match="init= is required"):  # overwrite ignores the saved config
        TrainConfig.for_run(run, {"cache": "x"}, overwrite=True)

"""pretrain.config: validation, identity, the resume merge rule."""

from __future__ import annotations

import pytest
import yaml

from cxrbench.common.errors import InputError
from cxrbench.pretrain.config import RUNTIME_KEYS, PretrainConfig


def test_defaults_validation_and_identity():
    cfg = PretrainConfig(caches="c", init="dinov2-vitb14", out="o")
    assert (
        cfg.caches == ("c",) and cfg.local_crops == 8 and cfg.out_dim == 65536 and cfg.centering == "center"
    )
    assert cfg.global_scale == (0.4, 1.0) and cfg.local_scale == (0.1, 0.4)
    assert set(cfg.identity()).isdisjoint(RUNTIME_KEYS) and "init" in cfg.identity()
    with pytest.raises(InputError, match=r"unknown key 'lrr'.*did you mean 'lr'"):
        PretrainConfig.from_dict({"caches": ["c"], "init": "x", "out": "o", "lrr": 1})
    with pytest.raises(InputError, match="global_scale"):
        PretrainConfig.from_dict({"caches": ["c"], "init": "x", "out": "o", "global_scale": [0.5, 0.2]})
    with pytest.raises(InputError, match="centering"):
        PretrainConfig.from_dict({"caches": ["c"], "init": "x", "out": "o", "centering": "kmeans"})
    with pytest.raises(InputError, match="momentum_end"):
        PretrainConfig.from_dict(
            {"caches": ["c"], "init": "x", "out": "o", "momentum": 0.999, "momentum_end": 0.99}
        )
    with pytest.raises(InputError, match="caches: .*at least one"):
        PretrainConfig.from_dict({"caches": [], "init": "x", "out": "o"})
    assert PretrainConfig(caches=["c"], init="x", out="o", batch_size=8).micro_batch(2) == 4
    with pytest.raises(InputError, match="at least 2 images"):
        PretrainConfig(caches=["c"], init="x", out="o", batch_size=4).micro_batch(4)


def test_for_run_merges_saved_config_file_and_options(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(InputError, match="caches= is required"):
        PretrainConfig.for_run(run, {"init": "x"})
    run.mkdir()
    (run / "config.yaml").write_text(
        yaml.safe_dump(
            {"pretrain": {"caches": ["c"], "init": "x", "out": str(run), "epochs": 5, "lr": 0.001}}
        )
    )
    extra = tmp_path / "extra.yaml"
    extra.write_text(yaml.safe_dump({"epochs": 7, "seed": 3}))
    cfg = PretrainConfig.for_run(run, {"lr": None, "seed": 4}, config_file=extra)
    assert (cfg.caches, cfg.epochs, cfg.lr, cfg.seed) == (("c",), 7, 0.001, 4)
    fresh = PretrainConfig.for_run(run, {"caches": ("d",), "init": "y"}, overwrite=True)
    assert fresh.epochs == 100 and fresh.caches == ("d",)
    a, b = cfg, cfg.model_copy(update={"lr": 0.002, "workers": 3})
    assert a.differences(b) == ["lr: saved 0.001, given 0.002"]  # workers is a runtime key


def test_step_identity_is_what_a_study_hashes():
    from cxrbench.common.provenance import stable_hash

    cfg = PretrainConfig(caches=["c"], init="dinov2-vitb14", out="o")
    ident = cfg.step_identity()
    assert "init" not in ident and "caches" not in ident and "workers" not in ident and ident["epochs"] == 100
    moved = PretrainConfig(caches=["elsewhere"], init="dinov2-vitb14", out="p", workers=0, unlabeled=["u"])
    assert stable_hash(moved.step_identity()) == stable_hash(ident)  # paths and runtime keys are not hashed
    assert stable_hash(cfg.model_copy(update={"lr": 1e-3}).step_identity()) != stable_hash(ident)
    assert stable_hash(ident) == "9009393dee7dd143"  # pinned: changing it moves every study's step keys

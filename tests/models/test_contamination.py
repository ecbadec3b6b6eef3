"""models.contamination: what each init was pretrained on, and the warning a study prints."""

from __future__ import annotations

import pytest

from cxrbench.common.errors import InputError
from cxrbench.models.contamination import contamination_warnings, pretraining_datasets


def test_registered_inits_state_their_pretraining_data():
    assert pretraining_datasets("dinov2-vitb14") == ("lvd-142m",)
    assert pretraining_datasets("imagenet21k-vitb16") == ("imagenet-21k",)
    assert set(pretraining_datasets("rad-dino")) == {"mimic", "chexpert", "nih", "padchest", "brax"}
    assert pretraining_datasets("random-vit-test") == ()
    with pytest.raises(InputError, match="unknown initialization"):
        pretraining_datasets("rad-dinoo")


def test_warnings_name_each_tested_dataset_the_init_has_seen():
    lines = contamination_warnings("rad-dino", ["nih", "vindr", "mimic", "nih"])
    assert len(lines) == 2 and "pretrained on nih" in lines[0] and "pretrained on mimic" in lines[1]
    assert "cxrbench audit --init rad-dino" in lines[0]
    assert contamination_warnings("dinov2-vitb14", ["nih", "mimic"]) == []


def test_checkpoints_carry_their_pretraining_data(tmp_path, tiny_run):
    run, _ = tiny_run  # a supervised run on a 'nih' cache from random-vit-test
    assert pretraining_datasets(f"checkpoint:{run / 'best.safetensors'}") == ("nih",)
    import json
    import shutil

    ssl = tmp_path / "ssl"
    ssl.mkdir()
    shutil.copy(run / "best.safetensors", ssl / "best.safetensors")
    meta = json.loads((run / "best.json").read_text())
    meta.pop("cache")
    meta.update(pretrained_on=["lvd-142m", "chexpert"])  # as cxrbench pretrain writes it
    (ssl / "best.json").write_text(json.dumps(meta))
    assert pretraining_datasets(f"checkpoint:{ssl}") == ("chexpert", "lvd-142m")
    assert contamination_warnings(f"checkpoint:{ssl}", ["chexpert"])

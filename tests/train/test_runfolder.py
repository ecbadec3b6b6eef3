"""train/runfolder: --overwrite deletes only the run's own files; interrupted writes leave no litter."""

from __future__ import annotations

import pytest

from cxrbench.cli import app
from cxrbench.common.errors import InputError, TrainingDiverged
from cxrbench.common.layout import is_run_file
from cxrbench.train.config import TrainConfig
from cxrbench.train.loop import train

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def cfg_for(cache, out, **kw) -> TrainConfig:
    base = dict(cache=str(cache), init="random-vit-test", out=str(out), epochs=1, batch_size=8, lr=1e-3,
                workers=0, seed=0)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize(("rel", "owned"), [
    ("config.yaml", True), ("best.json", True), (".best.json.x1y2.tmp", True), ("checkpoints/last.pt", True),
    ("checkpoints/.last.pt.abc.tmp", True), ("tensorboard/events.out.tfevents.1.host", True),
    ("eval/test/metrics.json", True), ("eval/val/predictions.parquet", True),
    ("notes.txt", False), ("eval/test/my_plot.png", False), ("checkpoints/epoch3.pt", False),
    ("eval/holdout/metrics.json", False), ("tensorboard/my.csv", False), ("data/x.png", False),
    ("tracker.json", True), ("wandb/offline-run-1/run-1.wandb", True), ("pretrain_images.parquet", False),
])
def test_the_run_contract_names_its_files(rel, owned):
    assert is_run_file(rel) is owned


def test_overwrite_on_a_folder_that_is_not_a_run_deletes_nothing(tmp_path, tiny_cache_factory, cli_runner):
    """The adversarial pass: `train --out DIR --overwrite` deleted the user's DIR/eval and checkpoints."""
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    out = tmp_path / "mine"
    (out / "eval" / "test").mkdir(parents=True)
    (out / "eval" / "test" / "metrics.json").write_text("my own results")
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.pt").write_bytes(b"my own model")
    result = cli_runner.invoke(app, ["train", "--cache", str(cache), "--init", "random-vit-test", "--out",
                                     str(out), "--epochs", "1", "--overwrite", "-q"])
    assert result.exit_code == 2
    assert "not a cxrbench run" in result.stderr and "checkpoints/last.pt" in result.stderr
    assert (out / "eval" / "test" / "metrics.json").read_text() == "my own results"
    assert (out / "checkpoints" / "last.pt").read_bytes() == b"my own model"


def test_overwrite_of_a_run_keeps_foreign_files_and_refuses(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    run = tmp_path / "run"
    train(cfg_for(cache, run), quiet=True)
    (run / "eval" / "test").mkdir(parents=True)
    (run / "eval" / "test" / "figure.png").write_bytes(b"mine")
    with pytest.raises(InputError, match="not the run's own: eval/test/figure.png"):
        train(cfg_for(cache, run, lr=2e-3), overwrite=True, quiet=True)
    assert (run / "eval" / "test" / "figure.png").read_bytes() == b"mine" and (run / "best.json").is_file()
    (run / "eval" / "test" / "figure.png").unlink()
    train(cfg_for(cache, run, lr=2e-3), overwrite=True, quiet=True)  # only its own files: restarted
    assert "0.002" in (run / "config.yaml").read_text()


def test_a_killed_save_leaves_no_litter_after_resume(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    run = tmp_path / "run"
    train(cfg_for(cache, run, epochs=1), quiet=True)
    litter = [run / "checkpoints" / ".last.pt.k1ll3d.tmp", run / ".best.json.k1ll3d.tmp"]
    for p in litter:
        p.write_bytes(b"half a file")  # what os.replace never got to move, after SIGKILL
    (run / "notes.tmp").write_text("mine")  # not the pattern of an atomic write: stays
    train(cfg_for(cache, run, epochs=1), quiet=True)  # the same run again: resumed (here: already complete)
    assert not any(p.exists() for p in litter) and (run / "notes.tmp").exists()


def test_nan_stop_names_the_checkpoint_only_when_one_exists(tmp_path, tiny_cache_factory):
    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)

    def poison(step, loss):
        return loss * float("nan")

    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it") as first:
        train(cfg_for(cache, tmp_path / "a"), quiet=True, loss_hook=poison)
    assert "last.pt" not in str(first.value).split("Fix:")[0]

    def late(step, loss):
        return loss * float("nan") if step >= 5 else loss

    with pytest.raises(TrainingDiverged, match="last good checkpoint is kept in"):
        train(cfg_for(cache, tmp_path / "b", epochs=3), quiet=True, loss_hook=late)


def test_a_tampered_label_is_named_not_blamed_on_the_learning_rate(tmp_path, tiny_cache_factory):
    import numpy as np

    from cxrbench.index.schema import read_index, write_index

    cache = tiny_cache_factory(tmp_path / "cache", n_patients=40)
    df, findings = read_index(cache / "index.parquet")
    df.loc[3, "cardiomegaly"] = np.inf
    write_index(df, cache / "index.parquet", findings)
    with pytest.raises(InputError, match=r"finding 'cardiomegaly' has label inf at cache row 3"):
        train(cfg_for(cache, tmp_path / "run"), quiet=True)

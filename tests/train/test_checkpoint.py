import json
import os
import pickle
import signal

import pytest
import torch

from cxrbench.common.errors import InputError
from cxrbench.train.checkpoint import (
    capture_rng,
    load_best,
    load_last,
    read_best_meta,
    restore_rng,
    save_best,
    save_last,
    state_dict_cpu,
)


def _state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "progress": {"epoch": 1, "step": 7},
            "best": {"value": float("-inf")}, "history": [{"epoch": 1, "val": 0.5}], "rng": [capture_rng()]}


def test_last_roundtrip_with_weights_only(tmp_path):
    state = _state()
    save_last(tmp_path / "checkpoints" / "last.pt", state)
    back = load_last(tmp_path / "checkpoints" / "last.pt")
    assert back["progress"] == {"epoch": 1, "step": 7} and back["history"] == state["history"]
    assert torch.equal(back["model"]["weight"], state["model"]["weight"])
    assert back["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)
    assert torch.equal(back["rng"][0]["torch"], state["rng"][0]["torch"])


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_last(path, {"progress": {"step": 1}})

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_last(path, {"progress": {"step": 2}})
    monkeypatch.undo()
    assert load_last(path)["progress"] == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


class Preempted(Exception):
    pass


def test_a_signal_during_the_save_is_handled_once_the_checkpoint_is_whole(tmp_path, monkeypatch):
    """submitit's USR2 handler (SLURM time-out or preemption) raises wherever Python is; inside
    torch.save that used to leave a zip-writer RuntimeError instead of its own exception."""
    path = tmp_path / "last.pt"
    save_last(path, {"progress": {"step": 1}})
    real_save, calls = torch.save, []

    def save_then_signal(obj, f):
        os.kill(os.getpid(), signal.SIGUSR2)  # arrives mid-write: its Python handler must wait
        calls.append("save")
        real_save(obj, f)

    def handler(signum, frame):
        calls.append("handler")
        raise Preempted(signum)

    previous = signal.signal(signal.SIGUSR2, handler)
    try:
        monkeypatch.setattr(torch, "save", save_then_signal)
        with pytest.raises(Preempted):
            save_last(path, {"progress": {"step": 2}})
        assert calls == ["save", "handler"] and signal.getsignal(signal.SIGUSR2) is handler
    finally:
        signal.signal(signal.SIGUSR2, previous)
    monkeypatch.undo()
    assert load_last(path)["progress"] == {"step": 2}  # written in full before the handler ran


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_load_refuses_damaged_foreign_and_pickled_code(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_last(tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InputError, match="cannot read the checkpoint"):
        load_last(bad)
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"format": 1, "x": Evil()}, f, protocol=2)
    with pytest.raises(InputError, match="could run arbitrary code"):
        load_last(evil)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(InputError, match="not a cxrbench checkpoint"):
        load_last(foreign)


def test_rng_capture_restore_replays_global_and_named_generators():
    g = torch.Generator().manual_seed(3)
    state = capture_rng({"augment": g})
    first = (torch.rand(3), torch.rand(3, generator=g))
    torch.rand(5)
    torch.rand(5, generator=g)
    restore_rng(state, {"augment": g})
    again = (torch.rand(3), torch.rand(3, generator=g))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    with pytest.raises(InputError, match="no state for RNG 'other'"):
        restore_rng(state, {"other": torch.Generator()})


def _meta(epoch=3):
    return {"findings": ["a", "b"], "arch": "test_vit", "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3,
            "init": "random-vit-test", "epoch": epoch}


def test_best_roundtrip_and_pairing(tmp_path):
    model = torch.nn.Linear(3, 2)
    save_best(tmp_path, state_dict_cpu(model), _meta())
    weights, meta = load_best(tmp_path)
    assert torch.equal(weights["weight"], model.weight.detach()) and meta["findings"] == ["a", "b"]
    assert load_best(tmp_path / "best.safetensors")[1] == meta
    # best.json from another epoch than the weights: refused
    (tmp_path / "best.json").write_text(json.dumps(_meta(epoch=4)))
    with pytest.raises(InputError, match="do not belong together"):
        load_best(tmp_path)


def test_best_meta_errors(tmp_path):
    with pytest.raises(InputError, match="no best.json"):
        read_best_meta(tmp_path)
    (tmp_path / "best.json").write_text(json.dumps({"findings": ["a"]}))
    with pytest.raises(InputError, match="lacks key 'arch'"):
        read_best_meta(tmp_path)
    (tmp_path / "best.json").write_text(json.dumps(_meta()))
    with pytest.raises(InputError, match="best weights not found"):
        load_best(tmp_path)
    (tmp_path / "best.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="damaged safetensors"):
        load_best(tmp_path)


def test_state_dict_cpu_copies():
    model = torch.nn.Linear(2, 2)
    sd = state_dict_cpu(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(sd["weight"], model.weight)


def test_missing_run_folder_is_named(tmp_path):
    from cxrbench.common.errors import InputError
    from cxrbench.train.checkpoint import read_best_meta

    with pytest.raises(InputError, match="run folder or checkpoint not found") as info:
        read_best_meta(tmp_path / "runX")
    assert str(tmp_path / "runX") in info.value.one_line()

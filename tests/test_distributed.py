import json
import socket

import numpy as np
import pytest
import torch

from cxrbench import distributed as d
from cxrbench.errors import InputError


def test_detect_reads_torchrun_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    env = d.detect()
    assert (env.rank, env.world_size, env.enabled, env.is_main) == (0, 1, False, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = d.detect()
    assert (env.rank, env.world_size, env.local_rank, env.enabled, env.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="not a valid position"):
        d.detect()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError, match="RANK='x' is not an integer"):
        d.detect()


def test_device_for():
    assert d.device_for(d.DistEnv(), "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA was requested"):
            d.device_for(d.DistEnv(), "cuda")
        assert d.device_for(d.DistEnv(), None).type == "cpu"


def test_single_process_collectives_are_identities():
    env = d.DistEnv()
    t = torch.tensor([2.0])
    assert d.all_reduce_sum(t, env) is t and t.item() == 2.0
    assert d.all_gather_objects({"a": 1}, env) == [{"a": 1}]
    assert d.broadcast_object(5, env) == 5
    assert d.any_flag(True, env, torch.device("cpu")) is True
    idx, val = d.gather_predictions(np.array([2, 0, 1]), np.array([[2.0], [0.0], [1.0]]), env)
    assert idx.tolist() == [0, 1, 2] and val[:, 0].tolist() == [0.0, 1.0, 2.0]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    env = d.init(torch.device("cpu"))
    try:
        total = d.all_reduce_sum(torch.tensor([float(rank + 1)]), env).item()
        gathered = d.all_gather_objects(rank * 10, env)
        shared = d.broadcast_object({"from": rank}, env)
        flag = d.any_flag(rank == 1, env, torch.device("cpu"))
        # 5 rows over 2 ranks, padded like DistributedSampler: rank 0 has 0, 2, 4; rank 1 has 1, 3, 0
        mine = np.array([0, 2, 4]) if rank == 0 else np.array([1, 3, 0])
        idx, val = d.gather_predictions(mine, mine[:, None] * 1.5, env)
        d.barrier(env)
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump({"backend": env.backend, "total": total, "gathered": gathered, "shared": shared,
                       "flag": flag, "idx": idx.tolist(), "val": val[:, 0].tolist()}, f)
    finally:
        d.destroy(env)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        r = json.loads((tmp_path / f"{rank}.json").read_text())
        assert r["backend"] == "gloo" and r["total"] == 3.0 and r["gathered"] == [0, 10]
        assert r["shared"] == {"from": 0} and r["flag"] is True
        assert r["idx"] == [0, 1, 2, 3, 4] and r["val"] == [0.0, 1.5, 3.0, 4.5, 6.0]


def test_rank0_writer_and_truncation(tmp_path):
    w = d.Rank0Writer(tmp_path, enabled=True)
    for step in (1, 2, 3):
        w.log({"kind": "step", "step": step, "loss": float("nan") if step == 2 else 0.5})
        w.scalars(step, {"train/loss": 0.5})
    w.log({"kind": "epoch", "step": 3, "epoch": 1})
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 3] and lines[1]["loss"] is None
    assert any((tmp_path / "tensorboard").iterdir())
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"kind": "step", "ste')  # a line cut by SIGKILL
    w = d.Rank0Writer(tmp_path, enabled=True, resume_step=2)  # resuming after step 2
    w.log({"kind": "resumed", "step": 2})
    w.close()
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]


def test_non_main_rank_writes_nothing(tmp_path):
    w = d.Rank0Writer(tmp_path / "run", enabled=False)
    w.log({"step": 1})
    w.scalars(1, {"a": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()

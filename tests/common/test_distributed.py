import json
import socket

import numpy as np
import pytest
import torch

from cxrbench.common import distributed
from cxrbench.common.errors import InputError
from cxrbench.train import runlog


def test_detect_reads_torchrun_environment(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    env = distributed.detect()
    assert (env.rank, env.world_size, env.enabled, env.is_main) == (0, 1, False, True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    env = distributed.detect()
    assert (env.rank, env.world_size, env.local_rank, env.enabled, env.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(InputError, match="not a valid position"):
        distributed.detect()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(InputError, match="RANK='x' is not an integer"):
        distributed.detect()


def test_device_for():
    assert distributed.device_for(distributed.DistEnv(), "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA was requested"):
            distributed.device_for(distributed.DistEnv(), "cuda")
        assert distributed.device_for(distributed.DistEnv(), None).type == "cpu"


def test_single_process_collectives_are_identities():
    env = distributed.DistEnv()
    t = torch.tensor([2.0])
    assert distributed.all_reduce_sum(t, env) is t and t.item() == 2.0
    assert distributed.all_gather_objects({"a": 1}, env) == [{"a": 1}]
    assert distributed.broadcast_object(5, env) == 5
    assert distributed.any_flag(True, env, torch.device("cpu")) is True
    idx, val = distributed.gather_predictions(np.array([2, 0, 1]), np.array([[2.0], [0.0], [1.0]]), env)
    assert idx.tolist() == [0, 1, 2] and val[:, 0].tolist() == [0.0, 1.0, 2.0]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    env = distributed.init(torch.device("cpu"))
    try:
        total = distributed.all_reduce_sum(torch.tensor([float(rank + 1)]), env).item()
        gathered = distributed.all_gather_objects(rank * 10, env)
        shared = distributed.broadcast_object({"from": rank}, env)
        flag = distributed.any_flag(rank == 1, env, torch.device("cpu"))
        # 5 rows over 2 ranks, padded like DistributedSampler: rank 0 has 0, 2, 4; rank 1 has 1, 3, 0
        mine = np.array([0, 2, 4]) if rank == 0 else np.array([1, 3, 0])
        idx, val = distributed.gather_predictions(mine, mine[:, None] * 1.5, env)
        distributed.barrier(env)
        with open(f"{out_dir}/{rank}.json", "w") as f:
            json.dump({"backend": env.backend, "total": total, "gathered": gathered, "shared": shared,
                       "flag": flag, "idx": idx.tolist(), "val": val[:, 0].tolist()}, f)
    finally:
        distributed.destroy(env)


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
    w = runlog.Rank0Writer(tmp_path, enabled=True)
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
    w = runlog.Rank0Writer(tmp_path, enabled=True, resume_step=2)  # resuming after step 2
    w.log({"kind": "resumed", "step": 2})
    w.close()
    steps = [json.loads(x)["step"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2]


def test_non_main_rank_writes_nothing(tmp_path):
    w = runlog.Rank0Writer(tmp_path / "run", enabled=False)
    w.log({"step": 1})
    w.scalars(1, {"a": 1.0})
    w.close()
    assert not (tmp_path / "run").exists()


def test_resolve_device_is_the_one_device_resolver():
    import pytest
    import torch

    from cxrbench.common.distributed import resolve_device
    from cxrbench.common.errors import InputError

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(InputError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA was requested"):
            resolve_device("cuda:1")

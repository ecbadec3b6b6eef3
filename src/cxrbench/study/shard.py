"""Sharding a study over machines (``--shard i/n``) from the config alone, so every machine agrees
without talking to the others: runs that share a domain pretraining run stay together; groups are
dealt out largest first to the least loaded shard."""

from __future__ import annotations

from cxrbench.common.errors import InputError
from cxrbench.study.steps import Plan, Step


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 1 <= i <= n (shards are numbered from 1)."""
    try:
        i_text, n_text = text.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise InputError(
            f"--shard got {text!r}", where="--shard", fix="write i/n, e.g. --shard 1/4"
        ) from None
    if n < 1 or not 1 <= i <= n:
        raise InputError(
            f"--shard {text}: shard {i} of {n} does not exist",
            where="--shard",
            fix=f"use 1/{max(n, 1)} ... {max(n, 1)}/{max(n, 1)}",
        )
    return i, n


def shard_assignment(plan: Plan, n: int) -> dict[str, int]:
    """Shard (1..n) of every group of training runs: largest group first to the least loaded shard.

    Depends on the config only (group names and sizes), so every machine computes the same split.
    """
    sizes: dict[str, int] = {}
    for s in plan.steps:
        if s.group is not None and s.kind in ("train", "pretrain", "ssl", "tune"):
            sizes[s.group] = sizes.get(s.group, 0) + {"pretrain": 2, "ssl": 3}.get(s.kind, 1)
    load = [0] * n
    out: dict[str, int] = {}
    for g in sorted(sizes, key=lambda g: (-sizes[g], g)):
        k = min(range(n), key=lambda j: (load[j], j))
        out[g] = k + 1
        load[k] += sizes[g]
    return out


def select_shard(plan: Plan, shard: tuple[int, int] | None) -> list[Step]:
    """The steps one invocation executes: with a shard, its runs, their evaluations and what they
    read; without one, everything."""
    if shard is None:
        return list(plan.steps)
    i, n = shard
    groups = shard_assignment(plan, n)
    mine = {s.id for s in plan.steps if s.group is not None and groups.get(s.group) == i}
    keep = plan.closure(mine)
    return [s for s in plan.steps if s.id in keep]


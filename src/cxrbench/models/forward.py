"""Batched inference of a model over a dataset: logits for every item, sharded under torchrun.

Used by the training loop (validation) and by :mod:`cxrbench.evaluate.inference` (predictions),
so both score images the same way.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict_dataset(model: nn.Module, dataset, transform: nn.Module, device: torch.device,
                    batch_size: int = 64, env=None, autocast: contextlib.AbstractContextManager | None = None,
                    workers: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``float32 [N, K]`` for every item of ``dataset`` (rows in dataset order).

    Under torchrun (``env`` with world size > 1) each rank scores every ``world_size``-th item and
    the results are gathered, so every rank returns the whole split.
    """
    from torch.utils.data import DataLoader

    from cxrbench.common import distributed as dist_

    env = env or dist_.DistEnv()
    mine = np.arange(env.rank, len(dataset), env.world_size)
    model.eval()
    transform.eval()
    # each "index" is a list of positions: a CacheDataset reads the whole batch with one memmap call
    chunks = [mine[i:i + batch_size].tolist() for i in range(0, len(mine), batch_size)]
    loader = DataLoader(dataset, batch_size=None, sampler=chunks, num_workers=workers,
                        pin_memory=device.type == "cuda")
    out = []
    for images, _ in loader:
        with autocast or contextlib.nullcontext():
            logits = model(transform(images.to(device, non_blocking=True)))
        out.append(logits.float().cpu())
    k = out[0].shape[1] if out else len(getattr(dataset, "findings", []))
    logits = torch.cat(out).numpy() if out else np.zeros((0, k), dtype=np.float32)
    idx, logits = dist_.gather_predictions(mine, logits, env)
    if len(idx) != len(dataset):
        raise RuntimeError(f"gathered {len(idx)} predictions for {len(dataset)} items")
    return idx, logits

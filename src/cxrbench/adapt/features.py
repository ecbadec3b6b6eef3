"""The features a timm classifier head sees, for a frozen backbone, batch by batch on the device.

:func:`pooled_features` is ``forward_head(forward_features(x), pre_logits=True)``: the CLS token for
token-pooled ViTs (after the final norm), the averaged feature map after the head's norm for
ConvNeXts. For every timm model whose classifier is one linear layer on these features,
``model(x) == model.get_classifier()(pooled_features(model, x))`` (:func:`check_linear_head`), which
is what lets a head fitted on cached features be saved as the whole model.

:func:`extract_features` runs a dataset through the backbone in inference mode, with autocast when
given, starting with a large batch and halving it whenever the device runs out of memory.
"""

from __future__ import annotations

import contextlib
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from cxrbench.common.errors import InputError


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B, D]`` pre-logits features of the images ``x`` (``[B, 3, S, S]``, normalized)."""
    timm_model: Any = model
    return timm_model.forward_head(timm_model.forward_features(x), pre_logits=True)


def feature_dim(model: nn.Module) -> int:
    """D, the width of :func:`pooled_features` (timm's ``num_features`` / ``head_hidden_size``)."""
    timm_model: Any = model
    return int(getattr(timm_model, "head_hidden_size", None) or timm_model.num_features)


def check_linear_head(model: nn.Module, x: torch.Tensor, atol: float = 1e-4) -> None:
    """InputError unless the model's output is its classifier applied to :func:`pooled_features`
    (eval mode, float32): the condition for fitting the head on cached features."""
    was = model.training
    model.eval()
    with torch.no_grad():
        full = model(x).float()
        head = cast(Any, model).get_classifier()(pooled_features(model, x)).float()
    model.train(was)
    if full.shape != head.shape or not torch.allclose(full, head, atol=atol, rtol=1e-4):
        raise InputError(f"{type(model).__name__}'s output is not a linear layer on its pooled features, "
                         "so a head fitted on cached embeddings cannot be saved as the model",
                         where="adaptation linear",
                         fix="train its head through the backbone instead: --adaptation full --linear-probe")


def default_batch(device: torch.device) -> int:
    """The first batch size tried: large on a GPU (halved on out-of-memory), moderate on a CPU."""
    return 256 if device.type == "cuda" else 64


@torch.no_grad()
def extract_features(model: nn.Module, dataset, transform: nn.Module, device: torch.device, *,
                     batch_size: int | None = None, env=None,
                     autocast: contextlib.AbstractContextManager | None = None,
                     quiet: bool = True, description: str = "embeddings") -> tuple[np.ndarray, int]:
    """``(float32 [N, D] features of every item of dataset, the batch size that fit)``.

    Items in dataset order. Under torchrun each rank computes every ``world_size``-th item and the
    results are gathered, so every rank returns the whole array. ``autocast`` (e.g. bf16 on CUDA)
    wraps the forward pass; features are returned in float32.
    """
    from cxrbench.common import distributed as dist_
    from cxrbench.common.progress import make_progress

    env = env or dist_.DistEnv()
    mine = np.arange(env.rank, len(dataset), env.world_size)
    batch = int(batch_size or default_batch(device))
    model.eval()
    transform.eval()
    out: list[np.ndarray] = []
    start = 0
    with make_progress(quiet or not env.is_main) as bar:
        task = bar.add_task(description, total=len(mine))
        while start < len(mine):
            idx = mine[start:start + batch]
            try:
                images, _ = dataset.batch(idx)
                x = transform(images.to(device, non_blocking=True))
                with autocast or contextlib.nullcontext():
                    feats = pooled_features(model, x)
                out.append(feats.float().cpu().numpy())
            except torch.OutOfMemoryError:
                if batch == 1:
                    raise InputError("the backbone does not fit in device memory even for one image",
                                     where=str(device), fix="use a larger GPU, a smaller --image-size or "
                                                            "--precision bf16") from None
                batch = max(1, batch // 2)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start += len(idx)
            bar.advance(task, len(idx))
    dim = out[0].shape[1] if out else feature_dim(model)
    mine_feats = np.concatenate(out) if out else np.zeros((0, dim), dtype=np.float32)
    idx, every = dist_.gather_predictions(mine, mine_feats, env)
    if len(idx) != len(dataset):
        raise RuntimeError(f"gathered {len(idx)} embeddings for {len(dataset)} items")
    return every.astype(np.float32, copy=False), batch

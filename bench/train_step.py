"""Training throughput of the cxrbench loop against a bare minimal PyTorch loop.

Both loops train the same tiny ViT (``random-vit-test``, same seed) on the same batches of the same
cache (same loader, sampler order and batch augmentation), one epoch each, no logging. Every full
optimizer step after ``--warmup`` is timed, so start-up (model build, TensorBoard writer) and the
end-of-epoch validation are not part of either figure. Two figures per loop: images/s from the
median wall-clock step (robust to other processes preempting this one) and from the mean CPU time
per step (single-threaded, so machine load hardly affects it). Runs alternate (bare, cxrbench,
bare, ...) and the medians over runs are compared. Goal: cxrbench's overhead (masked loss, global
loss normalization, schedule, NaN checks, progress bookkeeping) at most 5%.

    python bench/train_step.py                          # full size
    python bench/train_step.py --images 160 --repeats 1 # smoke run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

FINDINGS = ["cardiomegaly", "pleural_effusion", "pneumothorax"]


def write_cache(out: Path, n_train: int, n_val: int, size: int, seed: int = 0) -> Path:
    """A synthetic Contract-3 cache (the library's cache writer): uint8 noise images, random labels."""
    import pandas as pd

    from cxrbench.cache.build import write_cache as write_library_cache

    rng = np.random.default_rng(seed)
    n = n_train + n_val
    images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
    labels = (rng.random((n, len(FINDINGS))) < 0.3).astype(np.float32)
    labels[rng.random(labels.shape) < 0.05] = np.nan
    labels[:2], labels[n_train:n_train + 2] = [1, 1, 1], [0, 0, 0]  # both classes everywhere
    labels[2:4], labels[n_train + 2:n_train + 4] = [0, 0, 0], [1, 1, 1]
    df = pd.DataFrame({
        "image_id": [f"i{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)], "study_id": None,
        "path": [f"{i}.png" for i in range(n)], "view": "PA",
        "split": ["train"] * n_train + ["val"] * n_val, "dataset": "bench", "sex": None, "age": np.nan,
        **{f: labels[:, k] for k, f in enumerate(FINDINGS)},
    })
    write_library_cache(out, images, df, FINDINGS)
    return out


def _rates(marks: list[tuple[float, float]], batch: int) -> tuple[float, float]:
    """images/s from per-step (wall, CPU) end times: batch / median wall step, batch / mean CPU step."""
    wall = np.diff([m[0] for m in marks])
    cpu = np.diff([m[1] for m in marks])
    return batch / float(np.median(wall)), batch / float(np.mean(cpu))


def _mark() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bare_loop(cache: Path, args) -> tuple[float, float]:
    """The minimal loop: loader -> augment -> forward -> BCE -> backward -> AdamW step."""
    from cxrbench.data.augment import AugmentConfig, BatchTransform
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.data.loader import ResumableSampler, make_loader
    from cxrbench.models.build import create_model

    ds = CacheDataset(cache, split="train")
    model, info = create_model(args.init, len(ds.findings), image_size=args.size, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
    tf = BatchTransform(info.mean, info.std, out_size=args.size, augment=AugmentConfig()).train()
    gen = torch.Generator().manual_seed(0)
    sampler = ResumableSampler(len(ds), shuffle=True, seed=0)  # the order cxrbench's loop uses for seed 0
    loader = make_loader(ds, args.batch, sampler=sampler, num_workers=0, drop_last=True)
    model.train()
    marks = []
    for step, (images, labels) in enumerate(loader, start=1):
        logits = model(tf(images, generator=gen))
        loss = F.binary_cross_entropy_with_logits(logits, torch.nan_to_num(labels))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= args.warmup:
            marks.append(_mark())
    return _rates(marks, args.batch)


def cxrbench_loop(cache: Path, out: Path, args) -> tuple[float, float]:
    """cxrbench.train.train for one epoch, each optimizer step timed (the end-of-epoch validation is not)."""
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    marks: list[tuple[float, float]] = []
    full_steps = args.images // args.batch

    def on_step(step: int, epoch: int) -> None:
        if args.warmup <= step <= full_steps:
            marks.append(_mark())

    cfg = TrainConfig(cache=str(cache), init=args.init, out=str(out), epochs=1, batch_size=args.batch,
                      lr=1e-4, workers=0, log_every=10**6, patience=0, device="cpu")
    train(cfg, quiet=True, on_step=on_step, overwrite=True)
    return _rates(marks, args.batch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1536, help="training images (one epoch)")
    p.add_argument("--size", type=int, default=64, help="image side, px")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=int, default=3, help="optimizer steps excluded from timing")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (same for both loops)")
    p.add_argument("--init", default="random-vit-test")
    args = p.parse_args()
    if args.images < args.batch * (args.warmup + 2):
        p.error("--images must cover at least warmup + 2 batches")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(Path(tmp) / "cache", args.images, 32, args.size)
        bare, cxr = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(cache, args))
            cxr.append(cxrbench_loop(cache, Path(tmp) / "run", args))
    print(f"train_step: {args.init} at {args.size} px, batch {args.batch}, {args.images} images/epoch, "
          f"{args.threads} thread(s), {args.repeats} alternating repeats")
    for k, what in ((0, "wall clock, median step"), (1, "CPU time, mean step")):
        b = statistics.median(r[k] for r in bare)
        c = statistics.median(r[k] for r in cxr)
        runs_b = ", ".join(f"{r[k]:.1f}" for r in bare)
        runs_c = ", ".join(f"{r[k]:.1f}" for r in cxr)
        print(f"  [{what}]")
        print(f"    bare PyTorch loop     {b:9.1f} images/s   (runs: {runs_b})")
        print(f"    cxrbench train loop   {c:9.1f} images/s   (runs: {runs_c})")
        print(f"    ratio cxrbench/bare   {c / b:9.3f}          overhead {100 * (1 - c / b):+.1f}% "
              "(goal <= 5%)")


if __name__ == "__main__":
    main()

"""The linear probe on cached embeddings against the linear probe through the frozen backbone.

Both fit the same head with the same seed, batches, optimizer and schedule on the same cache, with
augmentation off (embeddings are fixed, so the fast probe cannot augment): ``cxrbench train
--linear-probe --no-augment`` sends every training image through the frozen backbone at every
epoch, ``--adaptation linear`` computes the embeddings once (stored beside the cache) and fits on
them. Three wall times, from the call to ``train`` to its return, each as a ratio against the probe
through the backbone measured in the same run: through the backbone; on embeddings computed in the
run; on embeddings already stored (a second initialization-independent run, e.g. another lr). The
results must agree: best validation mean AUROC, best epoch, largest difference of the head weights.

    python bench/linear_probe.py            # random-vit-tiny at 64 px, 2,000 train / 500 val, 10 epochs
    python bench/linear_probe.py --smoke    # random-vit-test at 32 px, 200 / 80 images, 2 epochs
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

FINDINGS = ["cardiomegaly", "pleural_effusion", "pneumothorax"]


def write_cache(out: Path, n_train: int, n_val: int, size: int, seed: int = 0) -> Path:
    """A learnable Contract-3 cache (the library's writer): finding k brightens band k of noise."""
    import pandas as pd

    from cxrbench.cache.build import write_cache as write_library_cache

    rng = np.random.default_rng(seed)
    n = n_train + n_val
    labels = (rng.random((n, len(FINDINGS))) < 0.35).astype(np.float32)
    labels[rng.random(labels.shape) < 0.05] = np.nan
    images = rng.normal(90, 25, (n, size, size))
    band = size // len(FINDINGS)
    for k in range(len(FINDINGS)):
        images[np.nan_to_num(labels[:, k]) == 1, k * band:(k + 1) * band, : size // 2] += 40
    df = pd.DataFrame({
        "image_id": [f"i{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)], "study_id": None,
        "path": [f"{i}.png" for i in range(n)], "view": "PA",
        "split": ["train"] * n_train + ["val"] * n_val, "dataset": "bench", "sex": None, "age": np.nan,
        **{f: labels[:, k] for k, f in enumerate(FINDINGS)},
    })
    write_library_cache(out, np.clip(images, 0, 255).astype(np.uint8), df, FINDINGS)
    return out


def timed(cfg) -> tuple[float, object]:
    from cxrbench.train.loop import train

    start = time.perf_counter()
    result = train(cfg, quiet=True, overwrite=True)
    return time.perf_counter() - start, result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="random-vit-tiny")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=500)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    if args.smoke:
        args.init, args.size, args.train, args.val, args.epochs = "random-vit-test", 32, 200, 80, 2
    torch.set_num_threads(args.threads)
    from cxrbench.common.layout import CACHE_EMBEDDINGS
    from cxrbench.train.checkpoint import load_best
    from cxrbench.train.config import TrainConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cache = write_cache(root / "cache", args.train, args.val, args.size)
        common = dict(cache=str(cache), init=args.init, epochs=args.epochs, batch_size=args.batch, lr=1e-3,
                      workers=0, augment=False, patience=0, device="cpu", log_every=10**6, seed=0)
        t_probe, probe = timed(TrainConfig(**common, out=str(root / "probe"), linear_probe=True))
        shutil.rmtree(cache / CACHE_EMBEDDINGS, ignore_errors=True)
        t_fresh, fresh = timed(TrainConfig(**common, out=str(root / "fresh"), adaptation="linear"))
        t_reused, reused = timed(TrainConfig(**common, out=str(root / "reused"), adaptation="linear"))
        wp, mp = load_best(root / "probe")
        wf, _ = load_best(root / "fresh")
        head_diff = max(float((wp[k] - wf[k]).abs().max()) for k in mp["head"])
    print(f"linear_probe: {args.init} at {args.size} px, {args.train:,} train / {args.val:,} val images, "
          f"{args.epochs} epochs, batch {args.batch}, {args.threads} thread(s), CPU; one run, shared machine")
    rows = (("through the frozen backbone (--linear-probe)", t_probe, probe),
            ("on cached embeddings, computed in the run", t_fresh, fresh),
            ("on cached embeddings, already stored", t_reused, reused))
    for what, t, r in rows:
        print(f"  {what:46s} {t:8.2f} s   x{t_probe / t:6.1f} faster   best val mean AUROC "
              f"{r.best_metric:.6f} (epoch {r.best_epoch})")
    print(f"  same result: largest head-weight difference {head_diff:.2e}; best epochs "
          f"{probe.best_epoch} / {fresh.best_epoch}")


if __name__ == "__main__":
    main()

"""Benchmark: images/s of ``predict --saliency`` versus plain ``predict`` on the same images, one run.

A run of the chosen architecture is trained for one epoch on a small synthetic cache (the weights do
not matter for the timing), then ``cxrbench.evaluate.predict.predict_files`` scores the same PNG
files without maps (the baseline), with Grad-CAM (one map per finding: a backward pass per finding
through every ViT block) and, for ViTs, with attention rollout (one forward with explicit attention).
Each figure is images/s and the slow-down relative to the baseline; overlays are written to a
temporary folder, so PNG encoding is included.

    python bench/saliency.py                                   # vit-small at 224 px, 14 findings, 32 images
    python bench/saliency.py --arch vit-test --size 64 --images 4 --findings 2    # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _synthetic import radiographs


def make_run(root: Path, arch: str, size: int, findings: list[str], device: str) -> Path:
    """A one-epoch run on a 40-image synthetic cache."""
    from cxrbench.cache.build import write_cache
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    n = 40
    rng = np.random.default_rng(0)
    images = np.stack(list(radiographs(n, size, seed=1)))
    labels = (rng.random((n, len(findings))) < 0.4).astype(np.float32)
    labels[0], labels[1] = 1, 0  # both classes in every split
    labels[24], labels[25], labels[32], labels[33] = 1, 0, 1, 0
    split = np.array(["train"] * 24 + ["val"] * 8 + ["test"] * 8, dtype=object)
    df = pd.DataFrame(
        {
            "image_id": [f"i{i:03d}" for i in range(n)],
            "patient_id": [f"p{i:03d}" for i in range(n)],
            "study_id": None,
            "path": [f"{i}.png" for i in range(n)],
            "view": "PA",
            "split": split,
            "dataset": "bench",
            **{f: labels[:, k] for k, f in enumerate(findings)},
        }
    )
    write_cache(root / "cache", images, df, findings)
    cfg = TrainConfig(
        cache=str(root / "cache"),
        init=f"random-{arch}",
        out=str(root / "run"),
        epochs=1,
        batch_size=8,
        workers=0,
        device=device,
        augment=False,
    )
    train(cfg, quiet=True)
    return root / "run"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--arch", default="vit-small", help="random-<arch>: vit-test, vit-tiny, vit-small, convnext-test"
    )
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--findings", type=int, default=14)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats per mode (the best is kept)")
    a = p.parse_args()
    import torch
    from PIL import Image

    from cxrbench.evaluate.predict import predict_files

    findings = [f"finding{k:02d}" for k in range(a.findings)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        run = make_run(root, a.arch, a.size, findings, a.device)
        files = []
        for i, img in enumerate(radiographs(a.images, a.size, seed=2)):
            files.append(root / "in" / f"scan{i:03d}.png")
            files[-1].parent.mkdir(exist_ok=True)
            Image.fromarray(img).save(files[-1])
        print(
            f"predict on {a.images} PNG files, random-{a.arch} at {a.size} px, {a.findings} findings, "
            f"batch {a.batch_size}, {a.device}, torch threads {torch.get_num_threads()}"
        )
        modes = [("plain predict (baseline)", None), ("predict --saliency (gradcam)", "gradcam")]
        if "vit" in a.arch:
            modes.append(("predict --saliency --saliency-method rollout", "rollout"))
        base = None
        for label, method in modes:
            best = float("inf")
            for r in range(a.repeats):
                out = root / f"maps-{method}-{r}" if method else None
                t0 = time.perf_counter()
                predict_files(
                    run,
                    files,
                    batch_size=a.batch_size,
                    device=a.device,
                    saliency_dir=out,
                    saliency_method=method or "gradcam",
                )
                best = min(best, time.perf_counter() - t0)
            rate = a.images / best
            base = base or rate
            extra = "" if method is None else f", {base / rate:.1f}x slower than the baseline"
            maps = "" if method is None else f" ({a.images * a.findings} overlays)"
            print(f"{label}: {rate:.1f} images/s{maps}{extra}")


if __name__ == "__main__":
    main()

"""Benchmark: saliency of a model trained on phantoms with known regions, scored against them (pointing
game, energy, IoU, hit) beside chance; and the cost of localization scoring per image against plain
prediction of the same run.

An NIH-format phantom (boxes of the findings NIH annotates, in the release's 1024-px space, written
where the renderer drew the finding) goes through the real pipeline: ``index`` (regions beside the
index), ``prepare`` (regions carried into cache pixels), ``train`` (a small random-init ViT), then
:func:`cxrbench.evaluate.localization.evaluate_localization` on the test split. Every figure is
printed with its baseline measured in the same run: each metric against its chance level (the same
maps at a random position), as a difference with its patient-bootstrap CI and as a ratio; the
localization time per image against ``predict_split`` on the same split (the same run, device and
cache), for Grad-CAM and attention rollout.

    python bench/localization.py                                    # 500 patients, 64 px, 12 epochs
    python bench/localization.py --patients 120 --epochs 2 --bootstrap 50    # smoke run
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

FINDINGS = ("atelectasis", "cardiomegaly", "mass", "nodule", "pleural_effusion", "pneumonia", "pneumothorax")
PREVALENCE = "cardiomegaly=0.3,pleural_effusion=0.3,pneumothorax=0.25,atelectasis=0.2,mass=0.2,nodule=0.2"


def build(root: Path, a: argparse.Namespace) -> tuple[Path, Path]:
    """Phantom -> index (with its boxes) -> cache (boxes in cache pixels) -> a trained run."""
    from cxrbench.cache.build import prepare_cache
    from cxrbench.index.build import build_index
    from cxrbench.phantom import generate
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    generate(root / "data", "nih", a.patients, size=a.source_size, seed=a.seed, quiet=True, views="PA=1",
             prevalence=PREVALENCE)
    index = root / "nih.parquet"
    build_index("nih", root / "data", out=index, labels=",".join(FINDINGS), views="frontal")
    prepare_cache(index, root / "data", root / "cache", size=a.size, workers=1, quiet=True)
    cfg = TrainConfig(cache=str(root / "cache"), init=f"random-{a.arch}", out=str(root / "run"),
                      epochs=a.epochs, batch_size=32, lr=a.lr, workers=0, device=a.device, seed=a.seed,
                      patience=a.epochs)
    train(cfg, quiet=True)
    return root / "run", root / "cache"


def timed(fn, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one untimed warm-up (imports, first allocations)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patients", type=int, default=500)
    p.add_argument("--source-size", type=int, default=128, help="side of the phantom images, px")
    p.add_argument("--size", type=int, default=64, help="cache (and model input) side, px")
    p.add_argument("--arch", default="vit-test", help="random-<arch>: vit-test, vit-tiny, ...")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=2, help="timed repeats (the best is kept)")
    p.add_argument("--out", type=Path, default=None, help="keep the phantom, cache and run here (a finished "
                   "run there is reused: only the scoring and the timings run again)")
    a = p.parse_args()
    import torch

    from cxrbench.evaluate.inference import predict_split
    from cxrbench.evaluate.localization import LocalizationOptions, evaluate_localization, localization_rows
    from cxrbench.evaluate.scoring import evaluate_predictions

    with tempfile.TemporaryDirectory() as tmp:
        root = a.out or Path(tmp)
        t0 = time.perf_counter()
        done = (root / "run" / "best.json").is_file()
        run, cache = (root / "run", root / "cache") if done else build(root, a)
        print(("reused: " if done else "") + f"phantom nih, {a.patients} patients at {a.source_size} px -> "
              f"cache {a.size} px; random-{a.arch} trained {a.epochs} epochs on {a.device} "
              f"({time.perf_counter() - t0:.0f} s, torch threads {torch.get_num_threads()})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            preds = predict_split(run, "test", device=a.device)
            auroc = evaluate_predictions(preds, None, threshold_from="test", n_resamples=0)
        print("test AUROC: " + ", ".join(f"{f} {e['metrics']['auroc']['value']:.3f}"
                                         for f, e in auroc["per_finding"].items() if e["estimable"]))
        doc = evaluate_localization(run, "test", device=a.device, n_resamples=a.bootstrap, seed=0,
                                    out_dir=root / "localization")
        table = pd.DataFrame(doc["table"])
        print(f"\nGrad-CAM against the NIH-format boxes of the test split ({a.bootstrap} patient resamples); "
              "chance = the same map at a random position")
        for r in table.to_dict(orient="records"):
            ratio = f"{r['value'] / r['chance']:.2f}x chance" if r["chance"] > 0 else "chance 0"
            print(f"  {r['finding']:<17} {r['metric']:<9} {r['value']:.3f} [{r['lo']:.3f}, {r['hi']:.3f}]  "
                  f"chance {r['chance']:.3f}  difference {r['diff']:+.3f} [{r['diff_lo']:+.3f}, "
                  f"{r['diff_hi']:+.3f}]  p {r['p']:.3g}  {ratio}  ({r['n_images']} images)")
        n_test = len(preds)
        plain = timed(lambda: predict_split(run, "test", device=a.device), a.repeats)
        print(f"\nspeed on the test split ({n_test} images, {a.device}):")
        print(f"  plain prediction (baseline): {1000 * plain / n_test:.2f} ms per image")
        for method in ("gradcam", "rollout"):
            opts = LocalizationOptions(method=method)
            rows: list[pd.DataFrame] = []
            t = timed(lambda o=opts, r=rows: r.append(
                localization_rows(run, "test", device=a.device, options=o)), a.repeats)
            scored = rows[-1]
            images = scored["image_id"].nunique()
            maps = len(scored.drop_duplicates(["image_id", "finding"]))
            print(f"  localization, {method}: {1000 * t / images:.2f} ms per scored image ({images} images, "
                  f"{maps} maps), {(t / images) / (plain / n_test):.1f}x the plain prediction per image")


if __name__ == "__main__":
    main()

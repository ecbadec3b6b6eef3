"""Benchmark: ONNX export versus eager PyTorch on the same model and the same inputs.

Builds a ViT with random weights (``random-vit-tiny``: ViT-Ti/16, 224 px, 14 findings; no download),
exports it with ``cxrbench.export.onnx.export_onnx`` (the code behind ``cxrbench export --format
onnx``, which checks onnxruntime against PyTorch), then prints

* the largest absolute difference of the logits, onnxruntime versus PyTorch (the export's check),
* CPU images/s of onnxruntime and of eager PyTorch (``torch.no_grad``, float32) on the same batch,
  both with the same number of threads, and their ratio (PyTorch is the baseline).

Full:   python bench/export.py              (random-vit-tiny, 224 px, batch 16)
Smoke:  python bench/export.py --smoke      (random-vit-test, 32 px)
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cxrbench.export.card import RunFacts
from cxrbench.export.onnx import export_onnx
from cxrbench.models.build import create_model


def images_per_s(fn, batch: int, seconds: float) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10.0, help="timing window per engine")
    ap.add_argument("--threads", type=int, default=None, help="threads of both engines [torch's default]")
    args = ap.parse_args()
    import onnxruntime as ort

    init, size = ("random-vit-test", 32) if args.smoke else ("random-vit-tiny", 224)
    seconds = 1.0 if args.smoke else args.seconds
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    findings = [f"f{k}" for k in range(14)]
    model, info = create_model(init, len(findings), image_size=size, seed=0)
    model.eval()
    meta = {
        "image_size": size,
        "findings": findings,
        "mean": list(info.mean),
        "std": list(info.std),
        "init": init,
        "arch": info.arch,
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        facts = RunFacts(run_dir=Path(tmp), meta=meta, config={})
        t = time.perf_counter()
        diff = export_onnx(model, facts, path)
        t_export = time.perf_counter() - t
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        x = np.random.default_rng(1).standard_normal((args.batch, 3, size, size)).astype(np.float32)
        xt = torch.from_numpy(x)
        with torch.no_grad():
            diff_batch = float(np.max(np.abs(session.run(["logits"], {"image": x})[0] - model(xt).numpy())))

            def eager():
                model(xt)

            ips_torch = images_per_s(eager, args.batch, seconds)
        ips_ort = images_per_s(lambda: session.run(["logits"], {"image": x}), args.batch, seconds)
    print(f"machine: {os.cpu_count()} CPUs, {threads} thread(s) per engine (a shared machine slows both)")
    print(
        f"{init} ({info.num_params / 1e6:.1f}M params) at {size} px: exported and checked in "
        f"{t_export:.1f} s; "
        f"max abs difference onnxruntime vs PyTorch {max(diff, diff_batch):.2e} (tolerance 1e-4)"
    )
    print(
        f"CPU images/s at batch {args.batch}: onnxruntime {ips_ort:.1f}, eager PyTorch {ips_torch:.1f} "
        f"= {ips_ort / ips_torch:.2f}x PyTorch"
    )


if __name__ == "__main__":
    main()

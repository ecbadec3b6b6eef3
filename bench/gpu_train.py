"""GPU training throughput and model FLOPs utilization (MFU) of the cxrbench loop, three setups.

The model is the DINOv2 ViT-B/14 architecture (``random-dinov2-vitb14``: same network, random
weights, so nothing is downloaded) at 224 px, global batch 64, trained by ``cxrbench.train.train``
on a synthetic cache (data loading, augmentation and the whole loop included):

  (a) the reference study's setup: fp32, eager (TF32 matmuls off, PyTorch's default)
  (b) bf16 autocast + fused AdamW (cxrbench's default on CUDA)
  (c) (b) + torch.compile

Images/s is measured between optimizer step ``--warmup`` (after compilation) and the last step,
with CUDA synchronized at both ends. MFU = images/s x 3 x forward FLOPs per image (counted with
torch.utils.flop_counter) / the GPU's dense bf16 peak. Goal on an H100: (c) >= 4x (a) and MFU >= 35%.

    python bench/gpu_train.py                 # on a GPU; one call, a few minutes
    python bench/gpu_train.py --tiny          # CPU proof that it runs: tiny ViT at 32 px
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_step import write_cache  # sibling script

MODES = {
    "a": ("fp32 eager (reference study)", dict(precision="fp32", compile=False)),
    "b": ("bf16 autocast + fused AdamW", dict(precision="bf16", compile=False)),
    "c": ("(b) + torch.compile", dict(precision="bf16", compile=True)),
}
# dense bf16 tensor-core peak, FLOP/s (NVIDIA datasheets; sparsity not counted)
PEAKS = (("H100 PCIe", 756e12), ("H100", 989.4e12), ("H200", 989.4e12), ("GH200", 989.4e12),
         ("A100", 312e12), ("L40S", 362.05e12), ("A10G", 70e12), ("L4", 121e12))


def peak_flops(device: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (given)"
    if device.type != "cuda":
        return None, "CPU: no peak, MFU not reported"
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAKS:
        if key in name:
            return flops, f"{name}, {flops / 1e12:.0f} TFLOP/s dense bf16"
    return None, f"{name}: unknown peak (give --peak-tflops)"


def forward_flops(init: str, size: int, device: torch.device) -> float:
    """Forward FLOPs for one image (matmuls, convolutions, attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    from cxrbench.models.build import create_model

    model, _ = create_model(init, 14, image_size=size)
    model.to(device).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, 3, size, size, device=device))
    return float(counter.get_total_flops())


def run_mode(cache: Path, out: Path, args, options: dict) -> float:
    from cxrbench.train.config import TrainConfig
    from cxrbench.train.loop import train

    device = torch.device(args.device)
    total = args.steps
    marks: dict[int, float] = {}

    def mark(step: int, epoch: int) -> None:
        if step in (args.warmup, total):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            marks[step] = time.perf_counter()

    cfg = TrainConfig(cache=str(cache), init=args.init, out=str(out), epochs=1, batch_size=args.batch,
                      lr=1e-5,
                      workers=args.workers, log_every=10**6, patience=0, device=args.device, **options)
    train(cfg, quiet=True, on_step=mark, overwrite=True)
    return args.batch * (total - args.warmup) / (marks[total] - marks[args.warmup])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU-sized proof run: random-vit-test, 32 px, batch 8")
    p.add_argument("--init", default=None, help="[random-dinov2-vitb14; tiny: random-vit-test]")
    p.add_argument("--size", type=int, default=None, help="image side, px [224; tiny: 32]")
    p.add_argument("--batch", type=int, default=None, help="global batch [64; tiny: 8]")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per mode [60; tiny: 10]")
    p.add_argument("--warmup", type=int, default=None, help="steps excluded from timing [15; tiny: 3]")
    p.add_argument("--modes", default="a,b,c", help="comma-separated subset of a,b,c")
    p.add_argument("--workers", type=int, default=None, help="loader processes [8; tiny: 0]")
    p.add_argument("--device", default=None, help="[cuda if available, else cpu]")
    p.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's dense bf16 peak")
    args = p.parse_args()
    tiny = args.tiny
    args.init = args.init or ("random-vit-test" if tiny else "random-dinov2-vitb14")
    args.size = args.size or (32 if tiny else 224)
    args.batch = args.batch or (8 if tiny else 64)
    args.steps = args.steps or (10 if tiny else 60)
    args.warmup = args.warmup or (3 if tiny else 15)
    args.workers = args.workers if args.workers is not None else (0 if tiny else 8)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.steps <= args.warmup:
        p.error("--steps must exceed --warmup")
    device = torch.device(args.device)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    peak, peak_text = peak_flops(device, args.peak_tflops)
    fwd = forward_flops(args.init, args.size, device)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(Path(tmp) / "cache", args.batch * args.steps, 32, args.size)
        for m in modes:
            t0 = time.perf_counter()
            ips = run_mode(cache, Path(tmp) / f"run_{m}", args, MODES[m][1])
            rows.append((m, ips, time.perf_counter() - t0))
            if device.type == "cuda":
                torch.cuda.empty_cache()

    print(f"gpu_train: {args.init} at {args.size} px, global batch {args.batch}, {args.steps} steps per mode "
          f"({args.warmup} warmup) on {args.device}; {peak_text}")
    note = "; on CPU bf16 is emulated and AdamW is fused on CUDA only" if device.type == "cpu" else ""
    print(f"  forward {fwd / 1e9:.4g} GFLOPs/image, training ~3x = {3 * fwd / 1e9:.4g} GFLOPs/image{note}")
    base = next((ips for m, ips, _ in rows if m == "a"), None)
    print(f"  {'setup':40s} {'images/s':>10s} {'vs (a)':>8s} {'MFU':>7s} {'wall s':>7s}")
    for m, ips, wall in rows:
        ratio = f"{ips / base:.2f}x" if base else "-"
        mfu = f"{100 * ips * 3 * fwd / peak:.1f}%" if peak else "n/a"
        print(f"  ({m}) {MODES[m][0]:36s} {ips:10.1f} {ratio:>8s} {mfu:>7s} {wall:7.1f}")
    print("  goal on an H100: (c) >= 4x (a) and MFU >= 35%")


if __name__ == "__main__":
    main()

"""Self-supervised pretraining: the cxrbench loop against a bare loop, and student/teacher cost.

Part 1 (overhead). Both loops run the same student/teacher (``build_networks``, same seed), the same
multi-crop views (``MultiCrop`` on the same generator), the same loss (``SSLObjective``: DINO + iBOT +
KoLeo) and the same batches (same loader and sampler order) for one epoch; the bare loop does nothing
else (no schedules, gradient clipping, NaN checks, logging, checkpoints). Every optimizer step after
``--warmup`` is timed; images/s from the median wall-clock step and from the mean CPU time per step;
runs alternate and medians over runs are compared. Goal: cxrbench's overhead at most 5%.

Part 2 (cost). For ViT-S/14 and ViT-B/14 (DINOv2 architectures, random weights: nothing is
downloaded) at 224 px with 2 global (224) + 8 local (98) views: parameter memory of student,
teacher and AdamW state, peak memory of one step, and step time; on CUDA in bf16 autocast with
images/s and MFU (3 x student forward FLOPs + teacher forward FLOPs per image, counted with
torch.utils.flop_counter, over the GPU's dense bf16 peak).

    python bench/pretrain.py                # part 1 on CPU at 64 px; part 2 at full size on a GPU
    python bench/pretrain.py --tiny         # smoke: tiny ViT at 32 px, both parts, a minute on a CPU
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train import peak_flops  # sibling script
from train_step import write_cache  # sibling script


def _mark() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _rates(marks, images_per_step: int) -> tuple[float, float]:
    wall = np.diff([m[0] for m in marks])
    cpu = np.diff([m[1] for m in marks])
    return images_per_step / float(np.median(wall)), images_per_step / float(np.mean(cpu))


def _cfg(cache: Path, out: Path, args, **kw):
    from cxrbench.pretrain.config import PretrainConfig

    return PretrainConfig(
        caches=[str(cache)],
        init=args.init,
        out=str(out),
        epochs=1,
        batch_size=args.batch,
        out_dim=args.out_dim,
        local_crops=args.local_crops,
        global_size=args.size,
        workers=0,
        log_every=10**6,
        device=args.device,
        warmup_epochs=0.0,
        **kw,
    )


def bare_loop(cache: Path, args) -> tuple[float, float]:
    """loader -> views + masks -> teacher -> student -> loss -> backward -> AdamW -> EMA; nothing else."""
    from cxrbench.data.loader import ResumableSampler, make_loader
    from cxrbench.pretrain.crops import MultiCrop, sample_masks
    from cxrbench.pretrain.heads import ema_update
    from cxrbench.pretrain.losses import SSLObjective
    from cxrbench.pretrain.model import build_networks, param_groups
    from cxrbench.pretrain.selection import PretrainImages, select_images

    cfg = _cfg(cache, Path("-"), args)
    device = torch.device(args.device)
    data = PretrainImages(select_images(cfg.caches))
    nets = build_networks(cfg, data.size)
    student, teacher = nets.student.to(device), nets.teacher.to(device)
    objective = SSLObjective(cfg.out_dim, 2, cfg.local_crops).to(device)
    opt = torch.optim.AdamW(param_groups(student, cfg.layer_decay), lr=cfg.lr, fused=device.type == "cuda")
    crops = MultiCrop(
        nets.info.mean, nets.info.std, nets.global_size, nets.local_size, 2, cfg.local_crops
    ).to(device)
    grid = student.grid(nets.global_size)
    gen = torch.Generator(device=device).manual_seed(0)
    loader = make_loader(
        data, args.batch, sampler=ResumableSampler(len(data), seed=0), num_workers=0, drop_last=True
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    marks = []
    for step, images in enumerate(loader, start=1):
        images = images.to(device)
        with torch.no_grad():
            g, loc = crops(images, generator=gen)
            masks = sample_masks(g.shape[0], grid, gen, device)
        with autocast:
            t_logits, t_patch = teacher.teacher(g, masks)
            out = student(g, loc, masks)
        parts = objective(
            {k: v.float() for k, v in out.items()}, t_logits.float(), t_patch.float(), masks, 0.04
        )
        parts["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(teacher, student, 0.996)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= args.warmup:
            marks.append(_mark())
    return _rates(marks, args.batch)


def cxrbench_loop(cache: Path, out: Path, args) -> tuple[float, float]:
    """cxrbench.pretrain for one epoch, each optimizer step timed (start-up and epoch end are not)."""
    from cxrbench.pretrain.loop import pretrain

    marks: list[tuple[float, float]] = []

    def on_step(step: int, epoch: int) -> None:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        if step >= args.warmup:
            marks.append(_mark())

    pretrain(_cfg(cache, out, args), quiet=True, on_step=on_step, overwrite=True)
    return _rates(marks, args.batch)


def overhead(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(Path(tmp) / "cache", args.images, 8, args.size)
        bare, cxr = [], []
        for _ in range(args.repeats):
            bare.append(bare_loop(cache, args))
            cxr.append(cxrbench_loop(cache, Path(tmp) / "run", args))
    print(
        f"pretrain loop: {args.init} at {args.size} px, 2 global + {args.local_crops} local views, batch "
        f"{args.batch}, {args.images} images/epoch, {args.threads} thread(s), {args.device}, {args.repeats} "
        "alternating repeats"
    )
    for k, what in ((0, "wall clock, median step"), (1, "CPU time, mean step")):
        b = statistics.median(r[k] for r in bare)
        c = statistics.median(r[k] for r in cxr)
        print(f"  [{what}]")
        print(
            f"    bare SSL loop          {b:9.1f} images/s   (runs: {', '.join(f'{r[k]:.1f}' for r in bare)})"
        )
        print(
            f"    cxrbench pretrain      {c:9.1f} images/s   (runs: {', '.join(f'{r[k]:.1f}' for r in cxr)})"
        )
        print(
            f"    ratio cxrbench/bare    {c / b:9.3f}          overhead {100 * (1 - c / b):+.1f}% "
            "(goal <= 5%)"
        )


def _mb(params) -> float:
    return sum(p.numel() * p.element_size() for p in params) / 2**20


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cost(
    init: str, size: int, local: int, n_local: int, batch: int, steps: int, device: torch.device, out_dim: int
) -> dict:
    """Memory and step time of one student/teacher pair (random weights) on synthetic images."""
    from torch.utils.flop_counter import FlopCounterMode

    from cxrbench.pretrain.config import PretrainConfig
    from cxrbench.pretrain.crops import MultiCrop, sample_masks
    from cxrbench.pretrain.heads import ema_update
    from cxrbench.pretrain.losses import SSLObjective
    from cxrbench.pretrain.model import build_networks, param_groups

    cfg = PretrainConfig(
        caches=["-"],
        init=init,
        out="-",
        global_size=size,
        local_size=local,
        local_crops=n_local,
        out_dim=out_dim,
    )
    nets = build_networks(cfg, size)
    student, teacher = nets.student.to(device), nets.teacher.to(device)
    objective = SSLObjective(out_dim, 2, n_local).to(device)
    opt = torch.optim.AdamW(param_groups(student, cfg.layer_decay), lr=1e-4, fused=device.type == "cuda")
    crops = MultiCrop(nets.info.mean, nets.info.std, size, local, 2, n_local).to(device)
    grid = student.grid(size)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with torch.no_grad():
            g, loc = crops(images, generator=gen)
            masks = sample_masks(g.shape[0], grid, gen, device)
        with autocast:
            t_logits, t_patch = teacher.teacher(g, masks)
            out = student(g, loc, masks)
        parts = objective(
            {k: v.float() for k, v in out.items()}, t_logits.float(), t_patch.float(), masks, 0.04
        )
        parts["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(teacher, student, 0.996)

    step()  # warm-up; creates the optimizer state
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    res = {
        "student_mb": _mb(student.parameters()),
        "teacher_mb": _mb(teacher.parameters()),
        "adam_mb": sum(_mb(v for v in s.values() if torch.is_tensor(v)) for s in opt.state.values()),
        "step_s": dt,
        "images_per_s": batch / dt,
    }
    if device.type == "cuda":
        res["peak_step_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        one = images[:1]
        with torch.no_grad(), autocast:
            g, loc = crops(one, generator=gen)
            counter = FlopCounterMode(display=False)
            with counter:
                student(g, loc, None)
            s_flops = counter.get_total_flops()
            counter = FlopCounterMode(display=False)
            with counter:
                teacher.teacher(g, None)
            t_flops = counter.get_total_flops()
        res["flops_per_image"] = 3 * s_flops + t_flops
    else:
        res["peak_rss_growth_mb"] = max(0.0, _rss_mb() - rss0)
    return res


def costs(args) -> None:
    device = torch.device(args.device)
    if args.tiny:
        setups = [("random-vit-test", 32, 16, args.local_crops, 8, 2)]
    else:
        setups = [
            (f"random-dinov2-vit{s}14", 224, 98, 8, args.cost_batch, args.cost_steps) for s in ("s", "b")
        ]
    peak, peak_text = peak_flops(device, args.peak_tflops)
    print(
        f"\nstudent/teacher cost on {device} "
        f"({'bf16 autocast' if device.type == 'cuda' else 'fp32'}; {peak_text})"
    )
    for init, size, local, n_local, batch, steps in setups:
        r = cost(init, size, local, n_local, batch, steps, device, args.cost_out_dim)
        line = (
            f"  {init:<22} 2x{size}+{n_local}x{local} px, batch {batch}: student {r['student_mb']:.1f} MB, "
            f"teacher {r['teacher_mb']:.1f} MB, AdamW {r['adam_mb']:.1f} MB, step {r['step_s'] * 1e3:.1f} ms "
            f"({r['images_per_s']:.1f} images/s)"
        )
        if "peak_step_mb" in r:
            line += f", peak step memory {r['peak_step_mb']:.0f} MB"
            if peak:
                line += f", MFU {r['images_per_s'] * r['flops_per_image'] / peak:.1%}"
        else:
            line += f", peak RSS growth {r['peak_rss_growth_mb']:.0f} MB"
        print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="smoke mode: tiny ViT at 32 px")
    p.add_argument("--images", type=int, default=384, help="images of the overhead epoch")
    p.add_argument("--size", type=int, default=64, help="global view side of the overhead runs, px")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--local-crops", type=int, default=8)
    p.add_argument("--out-dim", type=int, default=4096, help="prototypes in the overhead runs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", default="random-vit-test")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--cost-batch", type=int, default=64, help="images per step of the ViT-S/B cost runs")
    p.add_argument("--cost-steps", type=int, default=10)
    p.add_argument("--cost-out-dim", type=int, default=65536)
    p.add_argument("--peak-tflops", type=float, default=None)
    p.add_argument("--skip-cost", action="store_true", help="part 1 only")
    args = p.parse_args()
    if args.tiny:
        args.images, args.size, args.batch, args.local_crops, args.out_dim = 96, 32, 8, 2, 256
        args.repeats, args.cost_out_dim = 2, 256
    if args.images < args.batch * (args.warmup + 2):
        p.error("--images must cover at least warmup + 2 batches")
    torch.set_num_threads(args.threads)
    overhead(args)
    if not args.skip_cost and (args.tiny or args.device.startswith("cuda")):
        costs(args)
    elif not args.skip_cost:
        print("\nstudent/teacher cost of ViT-S/B at 224 px: needs a GPU (or --tiny); skipped on CPU")


if __name__ == "__main__":
    main()

"""LoRA against full fine-tuning of the same ViT: optimizer-step time and peak memory.

Each mode runs ``cxrbench.train`` (the real loop) for one epoch on the same synthetic cache, in a
fresh child process so that its peak memory is its own: on a CPU the peak resident set size of the
process (``ru_maxrss``) and its growth over the process before training; on CUDA
``torch.cuda.max_memory_allocated``. Step time is the median wall time between optimizer steps
after ``--warmup`` (the ``on_step`` hook; start-up and the end-of-epoch validation are not timed).
Modes alternate (full, lora, full, ...) for ``--repeats`` rounds and the medians are compared: LoRA
saves the gradients and AdamW state of the frozen weights, while its forward and backward still
run through the whole network, so the memory falls more than the step time. The size of
``last.pt`` (weights plus AdamW state) is printed as the exact part of that saving; on a CPU the
peak RSS also holds the activations, the allocator's slack and the adapters' own activations, so a
tiny ViT shows no saving there (the frozen weights' gradients and AdamW state are a few MB).

    python bench/lora.py                                  # random-vit-tiny at 96 px, CPU
    python bench/lora.py --smoke                          # random-vit-test at 32 px
    python bench/lora.py --init random-vit-base --size 224 --device cuda --batch 32   # ViT-B on a GPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, resource, sys, time
import peft, timm, torch  # imported before the baseline: their memory is not the training's
from cxrbench.train.config import TrainConfig
from cxrbench.train.loop import train

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
marks = []
def on_step(step, epoch):
    if args["device"].startswith("cuda"):
        torch.cuda.synchronize()
    marks.append(time.perf_counter())
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cfg = TrainConfig(cache=args["cache"], init=args["init"], out=args["out"], epochs=1, batch_size=args["batch"],
                  lr=1e-4, workers=0, log_every=10**6, patience=0, device=args["device"], augment=False,
                  adaptation=args["mode"], lora_rank=args["rank"], image_size=args["size"])
train(cfg, quiet=True, on_step=on_step, overwrite=True)
steps = [b - a for a, b in zip(marks[args["warmup"]:], marks[args["warmup"] + 1:])]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
meta = json.load(open(args["out"] + "/best.json"))
import os
state_mb = os.path.getsize(args["out"] + "/checkpoints/last.pt") / 2**20  # weights + optimizer state
print(json.dumps({"step_s": sorted(steps)[len(steps) // 2], "rss_mb": peak / 1024,
                  "grown_mb": (peak - base) / 1024, "gpu_mb": gpu, "trainable": meta["trainable_params"],
                  "params": meta["num_params"], "state_mb": state_mb}))
"""


def run_child(mode: str, cache: Path, out: Path, args) -> dict:
    payload = json.dumps({"mode": mode, "cache": str(cache), "out": str(out), "init": args.init,
                          "batch": args.batch, "device": args.device, "threads": args.threads,
                          "warmup": args.warmup, "rank": args.rank, "size": args.size})
    done = subprocess.run([sys.executable, "-c", CHILD, payload], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{mode} run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="random-vit-tiny")
    p.add_argument("--size", type=int, default=96, help="model input, px (the cache is this size too)")
    p.add_argument("--images", type=int, default=512, help="training images (one epoch)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2, help="optimizer steps excluded from timing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="random-vit-test at 32 px, 128 images, 1 repeat")
    args = p.parse_args()
    if args.smoke:
        args.init, args.size, args.images, args.batch, args.repeats = "random-vit-test", 32, 128, 16, 1
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from train_step import write_cache

    rows: dict[str, list[dict]] = {"full": [], "lora": []}
    with tempfile.TemporaryDirectory() as tmp:
        cache = write_cache(Path(tmp) / "cache", args.images, 32, args.size)
        for _ in range(args.repeats):
            for mode in rows:
                rows[mode].append(run_child(mode, cache, Path(tmp) / mode, args))
    keys = ("step_s", "rss_mb", "grown_mb", "state_mb")
    full, lora = ({k: statistics.median(r[k] for r in rows[m]) for k in keys} for m in ("full", "lora"))
    print(f"lora: {args.init} at {args.size} px, batch {args.batch}, rank {args.rank}, {args.device}, "
          f"{args.threads} thread(s), {args.repeats} alternating repeats (medians); a shared machine")
    for mode, fig in (("full fine-tuning", full), (f"lora r={args.rank}", lora)):
        r = rows["full" if mode.startswith("full") else "lora"][0]
        print(f"  {mode:18s} step {fig['step_s'] * 1000:8.1f} ms   peak RSS {fig['rss_mb']:8.1f} MB "
              f"(+{fig['grown_mb']:.1f} MB while training)   weights + optimizer state "
              f"{fig['state_mb']:.1f} MB   trainable {r['trainable']:,} of {r['params']:,}"
              + (f"   GPU peak {r['gpu_mb']:.0f} MB" if r["gpu_mb"] else ""))
    growth = lora["grown_mb"] / max(full["grown_mb"], 1e-9)
    print(f"  ratio lora/full    step {lora['step_s'] / full['step_s']:8.3f}      peak RSS "
          f"{lora['rss_mb'] / full['rss_mb']:8.3f}      growth {growth:.3f}      weights + optimizer state "
          f"{lora['state_mb'] / full['state_mb']:.3f}")
    if rows["full"][0]["gpu_mb"]:
        gpu = {m: statistics.median(r["gpu_mb"] for r in rows[m]) for m in rows}
        g = gpu["lora"] / gpu["full"]
        print(f"  ratio lora/full    GPU peak {g:.3f}")


if __name__ == "__main__":
    main()

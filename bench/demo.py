"""Benchmark: wall time of `cxrbench demo` (goal: under 10 minutes on 2 cores) and of its rerun.

Runs the demo as a user does (a fresh ``cxrbench demo --out DIR`` process) into a temporary
folder, then runs it again unchanged (every step is skipped by its content key); prints both
times and the rerun as a fraction of the first run. The tests check what the demo computes and
that a rerun does nothing; the clock lives here, where a loaded machine shows as a slower figure
instead of a failed test. CPU seconds (the demo process and its children) are printed beside the
wall time: on a shared, loaded machine they show what the demo costs.

Full demo (the README's figure):  python bench/demo.py
Smoke run:                        python bench/demo.py --tiny
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(out: Path, tiny: bool) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the demo process and its children)."""
    import resource

    cmd = [sys.executable, "-m", "cxrbench", "demo", "--out", str(out), "--quiet"]
    cmd += ["--tiny"] if tiny else []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"demo failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="the --tiny demo (minutes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cxrbench-bench-demo-") as tmp:
        out = Path(tmp) / "demo"
        first = run(out, args.tiny)
        again = run(out, args.tiny)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    kind = "tiny demo" if args.tiny else "demo"
    print(f"machine: {cores} core(s), load average {load:.1f} at the end")
    (first, first_cpu), (again, again_cpu) = first, again
    print(f"{kind}, fresh:  {first:7.1f} s  ({first / 60:.1f} min; goal for the full demo: < 10 min); "
          f"CPU {first_cpu:.1f} s (on a quiet machine the wall time is about CPU / cores)")
    print(f"{kind}, rerun:  {again:7.1f} s  = {again / first:.3f} x the fresh run (every step skipped); "
          f"CPU {again_cpu:.1f} s")


if __name__ == "__main__":
    main()

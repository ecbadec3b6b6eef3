"""Bounded YAML: the nested-alias ("billion laughs") study config vs a plain config of the same size.

Figure (issue 21): wall time and peak memory of ``cxrbench.common.yamlio.load_yaml`` (the reader of
study configs, csv mappings, run ``config.yaml`` files and ``--config`` files) on a study YAML of
about 1 KB whose anchors nest ``--levels`` deep with 9 aliases per level (9**levels leaves once
expanded), printed as a ratio against the baseline: the same reader on a plain study config of the
same byte size, measured in the same run.

Each load runs in a child process with a wall-clock limit (``--timeout``) and an address-space
limit (``--memory-gb``), so the unbounded reader (cxrbench before issue 21) is measured without
taking the machine down: a load that hits either limit is reported as such (``>= timeout`` or
``killed at the memory limit``), with the time and peak RSS it had reached.

  python bench/yaml_bounds.py                       # this checkout's reader
  python bench/yaml_bounds.py --src /tmp/old/src    # another checkout's src/ (e.g. the "before")
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
limit = int(sys.argv[3]) * 1024 ** 3
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from cxrbench.common.yamlio import load_yaml
from cxrbench.common.errors import InputError
t0 = time.perf_counter()
try:
    load_yaml(sys.argv[1], "study config")
    outcome = "loaded"
except InputError as e:
    outcome = "error: " + e.one_line()
except MemoryError:
    outcome = "MemoryError"
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "peak_mb": peak, "outcome": outcome}))
"""


def laughs(levels: int) -> str:
    """A study-shaped YAML whose last anchor expands to 9**levels strings (about 1 KB at 9 levels)."""
    lines = ["name: laughs", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    lines.append(f"datasets:\n  - name: x\n    source: csv\n    options: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def plain(size: int) -> str:
    """A plain study-shaped YAML of about ``size`` bytes (no anchors)."""
    lines = ["name: plain", "datasets:"]
    i = 0
    while sum(len(x) + 1 for x in lines) < size:
        lines.append(f"  - name: ds{i}\n    source: csv\n    root: /data/ds{i}")
        i += 1
    return "\n".join(lines) + "\n"


def measure(src: str, path: Path, timeout: float, memory_gb: int) -> dict:
    env = {**os.environ, "PYTHONPATH": src}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "x", str(memory_gb)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, _, usage = os.wait4(proc.pid, 0)
        return {"seconds": time.perf_counter() - t0, "peak_mb": usage.ru_maxrss / 1024,
                "outcome": f">= {timeout:.0f} s timeout (killed)"}
    if proc.returncode != 0 or not out.strip():
        tail = (err.strip().splitlines() or ["?"])[-1]
        return {"seconds": time.perf_counter() - t0, "peak_mb": float("nan"),
                "outcome": f"crashed (rc {proc.returncode}): {tail[:100]}"}
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--src", default=str(Path(__file__).resolve().parents[1] / "src"))
    ap.add_argument("--levels", type=int, nargs="+", default=[5, 6, 7, 9])
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--memory-gb", type=int, default=4)
    args = ap.parse_args()
    print(f"reader: {args.src}/cxrbench/common/yamlio.py; limits {args.timeout:.0f} s, {args.memory_gb} GB")
    with tempfile.TemporaryDirectory() as tmp:
        for levels in args.levels:
            bad = Path(tmp) / f"laughs{levels}.yaml"
            bad.write_text(laughs(levels))
            good = Path(tmp) / f"plain{levels}.yaml"
            good.write_text(plain(bad.stat().st_size))
            base = measure(args.src, good, args.timeout, args.memory_gb)
            res = measure(args.src, bad, args.timeout, args.memory_gb)
            print(f"\n{levels} levels, {bad.stat().st_size} bytes, 9**{levels} = {9 ** levels:,} leaves")
            print(f"  baseline (plain, same size): {base['seconds']:8.3f} s  {base['peak_mb']:8.1f} MB peak  "
                  f"{base['outcome'][:60]}")
            print(f"  nested aliases:              {res['seconds']:8.3f} s  {res['peak_mb']:8.1f} MB peak  "
                  f"{res['outcome'][:150]}")
            print(f"  ratio: time x{res['seconds'] / base['seconds']:.1f}, "
                  f"peak memory x{res['peak_mb'] / base['peak_mb']:.2f}")


if __name__ == "__main__":
    main()

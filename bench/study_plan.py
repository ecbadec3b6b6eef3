"""Benchmark: planning overhead of `cxrbench study run configs/study-2024.yaml --dry-run`.

Builds, under a temporary folder, what a real study-2024 machine has after indexing: the six
dataset roots with their metadata CSVs (for the source fingerprint) and image folders, and the six
indexes (``OUT/index/<dataset>/index.parquet``, real row counts, every finding column) with their
step markers. Then times

* the dry run as a user runs it: a fresh ``cxrbench study run ... --dry-run`` process (goal < 5 s),
* in-process planning (``build_plan`` + ``describe_plan``), which is what every `study run`
  re-does after each step,

each against baselines measured in the same run: the interpreter + CLI start-up alone
(``cxrbench --version``) and reading the six indexes fully with pandas (what planning avoids by
reading only the Parquet metadata).

Full size (the issue's figure):  python bench/study_plan.py
Smoke run:                       python bench/study_plan.py --scale 0.01 --repeat 1
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

import numpy as np
import pandas as pd

from cxrbench.index.schema import write_index
from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan
from cxrbench.study.runner import describe_plan
from cxrbench.study.state import marker_path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "study-2024.yaml"
# frontal images per dataset in the released metadata (approximate; what the indexes hold)
ROWS = {
    "vindr": 18_000,
    "cxr14": 112_120,
    "chexpert": 191_229,
    "mimic": 243_334,
    "uka": 193_361,
    "padchest": 110_525,
}
ROOT_NAMES = {
    "vindr": "vindr-cxr",
    "cxr14": "chestx-ray14",
    "chexpert": "chexpert",
    "mimic": "mimic-cxr-jpg",
    "uka": "uka-cxr",
    "padchest": "padchest",
}


def make_index(n: int, findings: list[str], dataset: str, rng: np.random.Generator) -> pd.DataFrame:
    patients = np.arange(n) // 3
    split = np.where(patients % 10 < 7, "train", np.where(patients % 10 < 8, "val", "test"))
    cols = {f: np.where(rng.random(n) < 0.1, 1.0, 0.0).astype(np.float32) for f in findings}
    return pd.DataFrame(
        {
            "image_id": [f"{dataset}{i:07d}" for i in range(n)],
            "patient_id": [f"p{p:07d}" for p in patients],
            "study_id": None,
            "path": [f"images/{i:07d}.png" for i in range(n)],
            "view": "PA",
            "split": split,
            "dataset": dataset,
            "sex": "F",
            "age": 50.0,
            **cols,
        }
    )


def setup(tmp: Path, scale: float) -> tuple[Path, Path]:
    """Dataset roots + six indexes with done markers; returns (data folder, study out folder)."""
    data, out = tmp / "data", tmp / "out"
    os.environ["CXRBENCH_DATA"] = str(data)
    for name in ROOT_NAMES.values():
        root = data / name
        (root / "images").mkdir(parents=True)
        (root / "metadata.csv").write_text("image,label\n" + "x.png,0\n" * 1000)
        for i in range(3000):  # an image folder too big to scan: the fingerprint must skip it
            (root / "images" / f"{i:05d}.png").touch()
    (data / "uka-cxr" / "cxrbench-mapping.yaml").write_text("columns: {}\n")
    study = load_study(CONFIG, out=out)
    rng = np.random.default_rng(0)
    plan = build_plan(study)
    from cxrbench.study.facts import static_findings

    for d in study.config.datasets:
        findings = static_findings(study, d) or ["cardiomegaly"]
        if d == "uka":
            findings = [f.strip() for f in study.config.datasets[d].labels.split(",")]
        step = plan[f"index/{d}"]
        write_index(
            make_index(max(10, int(ROWS[d] * scale)), findings, d, rng), step.out / "index.parquet", findings
        )
        m = marker_path(out, step.id)
        m.parent.mkdir(parents=True, exist_ok=True)
        m.write_text(json.dumps({"id": step.id, "key": step.key, "status": "done"}))
    return data, out


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of the real index sizes [1.0]")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats, best taken [3]")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        t0 = time.perf_counter()
        data, out = setup(tmp, args.scale)
        rows = sum(max(10, int(v * args.scale)) for v in ROWS.values())
        print(f"setup: six indexes, {rows:,} rows in total, written in {time.perf_counter() - t0:.1f} s")
        study = load_study(CONFIG, out=out)
        plan = build_plan(study)
        assert all(plan[f"index/{d}"].status == "done" for d in study.config.datasets), (
            "indexes not seen as done"
        )
        assert not any(s.deferred for s in plan.steps)
        n_steps = len(plan.steps)
        env = {**os.environ, "CXRBENCH_DATA": str(data)}
        exe = [sys.executable, "-m", "cxrbench"]

        def cli_dry_run() -> None:
            r = subprocess.run(
                [*exe, "study", "run", str(CONFIG), "--out", str(out), "--dry-run"],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0 or "index/mimic" not in r.stdout:
                raise SystemExit(f"dry run failed: {r.stderr}")

        def cli_start() -> None:
            subprocess.run([*exe, "--version"], capture_output=True, check=True, env=env)

        def in_process() -> None:
            describe_plan(build_plan(load_study(CONFIG, out=out)))

        def read_indexes() -> None:
            for d in study.config.datasets:
                pd.read_parquet(out / "index" / d / "index.parquet")

        dry = best_of(cli_dry_run, args.repeat)
        start = best_of(cli_start, args.repeat)
        plan_t = best_of(in_process, args.repeat)
        read_t = best_of(read_indexes, args.repeat)
    print(f"plan: {n_steps} steps (6 datasets x 3 inits, 4 domain pretraining runs)")
    print(f"dry run, fresh process:            {dry:7.3f} s   goal < 5 s: {'met' if dry < 5 else 'NOT met'}")
    print(f"  baseline `cxrbench --version`:   {start:7.3f} s   ratio dry-run / start-up = {dry / start:.2f}")
    print(f"planning in process (each re-plan):{plan_t:7.3f} s")
    print(
        f"  baseline: read the six indexes:  {read_t:7.3f} s   "
        f"ratio planning / full read = {plan_t / read_t:.3f}"
    )


if __name__ == "__main__":
    main()

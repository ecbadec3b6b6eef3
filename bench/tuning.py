"""Figure: a small phantom study with a tuning grid, the default-recipe versus tuned ranking as the report
shows it, and the extra compute the tuning cost.

The study (two initializations, two seeds, three findings) runs first without ``tuning:`` (baseline,
timed), then the same config with a ``tuning:`` grid over the learning rate and weight decay runs in the
same folder (timed): only the trials, the choices and the tuned runs are new (the untuned steps keep
their keys and are skipped), so the second time is the extra compute. Printed: both wall times, their
ratio to the untuned study, the trial-epochs against the final runs' epochs, and the "Does the ranking
survive tuning?" lines and table of report.md. CPU, one process, this machine.

    python bench/tuning.py                    # folder under /tmp
    python bench/tuning.py --out /tmp/x --patients 200
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

import yaml

from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan
from cxrbench.study.runner import run_study

GRID = {"lr": [1e-4, 3e-4, 1e-3, 3e-3], "weight_decay": [0.0, 0.05]}


def config(patients: int, epochs: int) -> dict:
    return {
        "name": "tuning-bench",
        "seeds": [0, 1],
        "datasets": {"site": {"adapter": "nih", "labels": "cardiomegaly,pleural_effusion,edema",
                              "phantom": {"patients": patients, "size": 32, "site": "B", "seed": 5}}},
        "preprocess": {"px32": {"size": 32}},
        "inits": {"vit-test": {"init": "random-vit-test"}, "vit-tiny": {"init": "random-vit-tiny"}},
        "comparisons": {"reference": "vit-test"},
        "train": {"epochs": epochs, "batch_size": 32, "lr": 3e-3, "workers": 0, "image_size": 32,
                  "deterministic": True},
        "evaluation": {"bootstrap": 200},
    }


def timed_run(path: Path, cfg: dict, out: Path) -> float:
    path.write_text(yaml.safe_dump(cfg))
    study = load_study(path, out=out)
    t0 = time.perf_counter()
    summary = run_study(study, quiet=True, device="cpu")
    if summary.failed:
        raise SystemExit(f"failed: {summary.failed}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--patients", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=4, help="the final runs' epochs")
    ap.add_argument("--trial-epochs", type=int, default=2, help="the tuning trials' shorter schedule")
    args = ap.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="cxrbench-tuning-"))
    out.mkdir(parents=True, exist_ok=True)
    cfg = config(args.patients, args.epochs)
    base = timed_run(out / "study.yaml", cfg, out / "study")
    tuned_cfg = {**cfg, "tuning": {"space": GRID, "epochs": args.trial_epochs}}
    extra = timed_run(out / "study.yaml", tuned_cfg, out / "study")
    plan = build_plan(load_study(out / "study.yaml", out=out / "study"))
    trials = plan.of_kind("tune")
    trial_epochs = sum(s.params.epochs for s in trials)
    final_epochs = args.epochs * len([s for s in plan.of_kind("train") if "/tuned/" not in s.id])
    print(f"study folder: {out / 'study'}")
    print(f"untuned study (baseline): {base:.1f} s; tuning grid {GRID} on one seed, {len(trials)} trials "
          f"({trial_epochs} trial-epochs vs {final_epochs} epochs of the untuned runs), the choices and the "
          f"tuned runs: +{extra:.1f} s")
    print(f"compute of the tuned study / untuned study: {(base + extra) / base:.2f}x "
          f"(the tuning and tuned runs alone: {extra / base:.2f}x)")
    md = (out / "study" / "report" / "report.md").read_text(encoding="utf-8")
    section = re.search(r"## Does the ranking survive tuning\?\n(.*?)\n## ", md, re.S)
    print("\n" + (section.group(1).strip() if section else "(no tuning section)"))


if __name__ == "__main__":
    main()

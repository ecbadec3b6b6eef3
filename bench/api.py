"""Benchmark: the whole pipeline from Python (docs/python-api.md's script) beside the same work through
the command line, on the same machine in the same run; prints both wall and CPU times and the ratio.

The Python route is one process: the script of docs/python-api.md (phantom -> index -> cache -> two
training seeds -> evaluation -> comparison -> a 16-step study from a dict). The CLI route does the same
with one ``cxrbench`` process per command (phantom, index, prepare, 2 x train, 2 x evaluate, compare,
study run on the same study written as YAML), as a shell script would. Both start from an empty folder.

    python bench/api.py                 # the timing (about 2 x 1.5 CPU-minutes)
    python bench/api.py --signatures    # every front door's signature (inspect.signature)
    python bench/api.py --errors        # the error table: input -> exception -> message, per front door
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def doc_script() -> str:
    text = (REPO / "docs" / "python-api.md").read_text(encoding="utf-8")
    return next(b for b in re.findall(r"```python\n(.*?)```", text, re.S)
                if b.startswith("# cxrbench: the whole pipeline from Python"))


def study_dict(script: str) -> dict:
    """The dict the script hands to ``load_study`` (evaluated from its source)."""
    tree = ast.parse(script)
    labels = next(ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "labels" for t in n.targets))
    call = next(n for n in ast.walk(tree)
                if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "load_study")
    return eval(ast.get_source_segment(script, call.args[0]), {"labels": labels})  # our own docs' literal


def timed(cmds: list[list[str]], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child processes) of running ``cmds`` one after the other."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    for cmd in cmds:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cli_commands(work: Path, study: dict) -> list[list[str]]:
    import yaml

    cx = [sys.executable, "-m", "cxrbench"]
    labels = study["datasets"]["site"]["labels"]
    (work / "study.yaml").parent.mkdir(parents=True, exist_ok=True)
    (work / "study.yaml").write_text(yaml.safe_dump(study, sort_keys=False))
    cmds = [[*cx, "phantom", str(work / "nih"), "--format", "nih", "--patients", "120", "--size", "64",
             "--seed", "0", "--quiet"],
            [*cx, "index", "--dataset", "nih", "--root", str(work / "nih"), "--out",
             str(work / "nih.parquet"), "--labels", labels, "--splits", "hash", "--split-fractions",
             "0.6,0.2,0.2", "--quiet"],
            [*cx, "prepare", "--index", str(work / "nih.parquet"), "--root", str(work / "nih"), "--out",
             str(work / "cache"), "--size", "32", "--workers", "1", "--quiet"]]
    for seed in (0, 1):
        cmds.append([*cx, "train", "--cache", str(work / "cache"), "--init", "random-vit-test", "--out",
                     str(work / f"run-s{seed}"), "--epochs", "2", "--batch-size", "16", "--lr", "1e-3",
                     "--seed", str(seed), "--workers", "0", "--deterministic", "--quiet"])
    cmds += [[*cx, "evaluate", str(work / f"run-s{seed}"), "--split", "test", "--bootstrap", "200", "--quiet"]
             for seed in (0, 1)]
    cmds.append([*cx, "compare", str(work / "run-s0"), str(work / "run-s1"), "--bootstrap", "200"])
    cmds.append([*cx, "study", "run", str(work / "study.yaml"), "--out", str(work / "study"),
                 "--device", "cpu", "--quiet"])
    return cmds


def timing() -> None:
    script = doc_script()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
           "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryDirectory(prefix="cxrbench-bench-api-") as tmp:
        py_env = {**env, "CXRBENCH_API_DEMO": str(Path(tmp) / "py")}
        py = timed([[sys.executable, "-c", script]], py_env)
        cli = timed(cli_commands(Path(tmp) / "cli", study_dict(script)), env)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cores} core(s), load average {load:.1f} at the end")
    print(f"Python (one process, docs/python-api.md): wall {py[0]:7.1f} s, CPU {py[1]:7.1f} s")
    print(f"CLI (11 cxrbench processes, same work):  wall {cli[0]:7.1f} s, CPU {cli[1]:7.1f} s")
    print(f"CLI / Python: wall {cli[0] / py[0]:.2f} x, CPU {cli[1] / py[1]:.2f} x "
          "(the difference: each command imports torch and the stages again)")


def signatures() -> None:
    import inspect

    import cxrbench

    for name in cxrbench.__all__:
        if name == "__version__":
            continue
        obj = getattr(cxrbench, name)
        try:
            print(f"{name}{inspect.signature(obj)}")
        except (TypeError, ValueError):
            print(f"{name}: {type(obj).__name__}")


def errors() -> None:
    """input -> exception -> message for the front doors (Python spelling), as a Markdown table."""
    import pandas as pd

    import cxrbench

    tmp = Path(tempfile.mkdtemp(prefix="cxrbench-errors-"))
    base = {"cache": "cache", "init": "random-vit-test", "out": str(tmp / "run")}
    bad_preds = pd.DataFrame({"image_id": ["a", "b"], "p_x": [0.1, 0.9]})
    cases = [
        ("TrainConfig(cache=..., init=..., out=..., lrr=1e-3)",
         lambda: cxrbench.TrainConfig(**base, lrr=1e-3)),
        ('TrainConfig(..., lr="fast")', lambda: cxrbench.TrainConfig(**base, lr="fast")),
        ('TrainConfig(..., adaptation="loar")', lambda: cxrbench.TrainConfig(**base, adaptation="loar")),
        ('PretrainConfig(caches=["c"], init="x", out="o", lrr=1)',
         lambda: cxrbench.PretrainConfig(caches=["c"], init="x", out="o", lrr=1)),
        ('IndexOptions(uncertain="zero")', lambda: cxrbench.IndexOptions(uncertain="zero")),
        ('build_index("nhi", ROOT)', lambda: cxrbench.build_index("nhi", tmp)),
        ('build_index("nih", ROOT, views="SIDE")', lambda: cxrbench.build_index("nih", tmp, views="SIDE")),
        ('prepare_cache("missing.parquet", ROOT, OUT)',
         lambda: cxrbench.prepare_cache(tmp / "missing.parquet", tmp, tmp / "c")),
        ('prepare_cache(INDEX, ROOT, OUT, resize="strech")',
         lambda: cxrbench.prepare_cache(tmp / "missing.parquet", tmp, tmp / "c", resize="strech")),
        ('open_cache("nowhere")', lambda: cxrbench.open_cache(tmp / "nowhere")),
        ('create_model("dinov2-vits41", 2)', lambda: cxrbench.create_model("dinov2-vits41", 2)),
        ('train(TrainConfig(cache="nowhere", ...))',
         lambda: cxrbench.train(cxrbench.TrainConfig(**{**base, "cache": str(tmp / "nowhere")}))),
        ('evaluate_run("nowhere")', lambda: cxrbench.evaluate_run(tmp / "nowhere")),
        ('evaluate_run(RUN, on_conflict="replace")',
         lambda: cxrbench.evaluate_run(tmp, on_conflict="replace")),
        ("evaluate_predictions(df without y_ columns)", lambda: cxrbench.evaluate_predictions(bad_preds)),
        ("compare_predictions(PREDS, n_resamples=0)",
         lambda: cxrbench.compare_predictions({"a": bad_preds, "b": bad_preds}, n_resamples=0)),
        ('predict_files("nowhere", ["x.png"])', lambda: cxrbench.predict_files(tmp / "nowhere", ["x.png"])),
        ('load_study("missing.yaml")', lambda: cxrbench.load_study(tmp / "missing.yaml")),
        ('load_study({..., "seds": [1]})',
         lambda: cxrbench.load_study({"name": "x", "datasets": {"a": {"adapter": "nih", "root": "."}},
                                      "inits": ["random-vit-test"], "seds": [1]})),
        ('generate_phantom(OUT, "nhi", 4)', lambda: cxrbench.generate_phantom(tmp / "p", "nhi", 4)),
        ('load_predictions("nowhere")', lambda: cxrbench.load_predictions(tmp / "nowhere.parquet")),
        ('load_metrics(RUN, "tset")', lambda: cxrbench.load_metrics(tmp, "tset")),
        ("load_results(FOLDER without results.csv)", lambda: cxrbench.load_results(tmp)),
        ('list_inits("random-vit-*")  (no error)', lambda: cxrbench.list_inits("random-vit-*")),
    ]
    print("| input | exception | message |\n| --- | --- | --- |")
    for text, call in cases:
        try:
            value = call()
            print(f"| `{text}` | none | returns `{value!r}` |")
        except Exception as e:  # the table reports whatever a front door raises
            message = str(e).replace(str(tmp), "TMP").replace("|", "\\|")
            kind = type(e).__name__ + (" (ValueError)" if isinstance(e, ValueError) else "")
            print(f"| `{text}` | {kind} | {message} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--signatures", action="store_true", help="print the front doors' signatures")
    ap.add_argument("--errors", action="store_true", help="print the error table of the front doors")
    args = ap.parse_args()
    if args.signatures:
        signatures()
    elif args.errors:
        errors()
    else:
        timing()


if __name__ == "__main__":
    main()

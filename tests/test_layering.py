"""The package's shape: one folder per pipeline stage, a stage imports only earlier stages, small
modules, and ``import cxrbench`` / ``cxrbench --help`` free of torch."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cxrbench"
# Pipeline order (docs/ARCHITECTURE.md): a module may import its own stage and the ones before it.
STAGES = ("common", "index", "phantom", "cache", "data", "models", "stats", "adapt", "train", "pretrain",
          "evaluate", "export", "report", "study", "commands")
TOP_LEVEL = {"__init__.py", "__main__.py", "cli.py"}
MAX_LINES = 500
LONG_ALLOWED = {"phantom/render.py"}  # the vectorized renderer reads best in one piece


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every cxrbench import in the file, function-level ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "cxrbench":
                out += [(node.lineno, f"cxrbench.{a.name}") for a in node.names]
            elif node.module.startswith("cxrbench."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("cxrbench.")]
    return out


def test_only_a_handful_of_modules_at_the_top():
    top = {p.name for p in PACKAGE.glob("*.py")}
    assert top == TOP_LEVEL
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name not in ("__pycache__", "configs")}
    assert folders == set(STAGES)


def test_a_stage_imports_only_earlier_stages():
    upward = []
    for path in _modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] not in STAGES:
            continue
        mine = STAGES.index(rel.parts[0])
        for line, module in _imports(path):
            stage = _stage(module)
            if stage is not None and STAGES.index(stage) > mine:
                upward.append(f"{rel}:{line} imports {module}")
    assert not upward, "\n".join(upward)


def test_no_module_is_over_500_lines():
    long = [f"{p.relative_to(PACKAGE)}: {n}" for p in _modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
            and str(p.relative_to(PACKAGE)) not in LONG_ALLOWED]
    assert not long, long


@pytest.mark.parametrize("code", [
    "import cxrbench, sys; cxrbench.list_inits; cxrbench.TrainConfig; cxrbench.load_study",
    "from cxrbench.cli import app",
])
def test_front_doors_and_the_cli_do_not_import_torch(code):
    out = subprocess.run([sys.executable, "-c", f"{code}; import sys; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_front_doors_resolve_to_the_stage_functions():
    import cxrbench
    from cxrbench.evaluate.run_eval import evaluate_run
    from cxrbench.study.runner import run_study
    from cxrbench.train.loop import train

    assert cxrbench.evaluate_run is evaluate_run and cxrbench.run_study is run_study
    assert callable(cxrbench.train) and cxrbench.train.loop.train is train  # the callable stage package
    assert set(cxrbench.__all__) >= {"build_index", "prepare_cache", "create_model", "list_inits", "train",
                                     "TrainConfig", "evaluate_run", "compare_predictions", "run_study",
                                     "load_study"}
    with pytest.raises(AttributeError):
        cxrbench.no_such_door  # noqa: B018

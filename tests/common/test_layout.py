"""common.layout: every on-disk name of Contracts 2-4 has one home."""

from __future__ import annotations

import ast
from pathlib import Path

from cxrbench.common import layout

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "cxrbench"
NAMES = {layout.CACHE_IMAGES, layout.CACHE_INDEX, layout.CACHE_MANIFEST, layout.CACHE_BUILD_DIR,
         layout.CACHE_LOCK, layout.RUN_CONFIG, layout.RUN_LAST, layout.RUN_BEST_WEIGHTS, layout.RUN_BEST_META,
         layout.RUN_LOG, layout.RUN_TENSORBOARD, layout.PREDICTIONS_FILE, layout.METRICS_FILE, "last.pt",
         "checkpoints", layout.SUBGROUPS_FILE, layout.CALIBRATION_FILE, layout.SHORTCUT_MODEL,
         layout.SALIENCY_MANIFEST, layout.LOCALIZATION_FILE, layout.LOCALIZATION_ROWS,
         layout.STUDY_METRICS_FILE}


def test_contract_file_names_are_spelled_only_in_layout():
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "layout.py" and path.parent.name == "common":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in NAMES:
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.value!r}")
    assert not found, found


def test_paths(tmp_path):
    assert layout.eval_dir(tmp_path, "val") == tmp_path / "eval" / "val"
    assert layout.predictions_path(tmp_path, "test") == tmp_path / "eval" / "test" / "predictions.parquet"
    assert layout.metrics_path(tmp_path, "test").name == "metrics.json"
    assert layout.subgroups_path(tmp_path, "test") == tmp_path / "eval" / "test" / "subgroups.json"
    assert layout.calibration_path(tmp_path, "val").name == "calibration.json"
    assert layout.index_report_path(tmp_path / "nih.parquet") == tmp_path / "nih.report.json"
    assert set(layout.RUN_OUTPUTS) >= {layout.RUN_CONFIG, layout.RUN_CHECKPOINTS, layout.RUN_EVAL}

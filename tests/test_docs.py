"""Every Python import shown in the README and docs/ works (the docs follow the package's shape)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
IMPORT = re.compile(r"^\s*(from cxrbench[\w.]* import [\w, ]+|import cxrbench[\w.]*)", re.M)


def _imports() -> list[tuple[str, str]]:
    out = []
    for doc in DOCS:
        for block in re.findall(r"```python\n(.*?)```", doc.read_text(encoding="utf-8"), re.S):
            out += [(doc.name, m.group(1).strip()) for m in IMPORT.finditer(block)]
    return out


def test_docs_show_python_imports():
    assert len(_imports()) >= 8


def test_every_documented_import_works():
    code = "\n".join(line for _, line in _imports())
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_no_module_that_moved(doc):
    moved = (r"cxrbench\.(errors|validation|fileio|progress|provenance|schema|splits|indexing|sources|"
             r"imageio|preprocess|augment|metrics|bootstrap|trainconfig|schedule|checkpoint|inference|"
             r"weights|distributed|findings|demo)\b")
    assert not re.findall(moved, doc.read_text(encoding="utf-8"))

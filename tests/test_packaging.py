"""What a wheel user and a downstream packager get: py.typed, the licence the metadata declares, the
example studies as package data, an sdist with docs, configs, tests and the Makefile, and a README
that names every extra."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def test_license_file_matches_the_declared_license():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_py_typed_and_the_example_studies_are_package_data():
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["cxrbench"]
    assert "py.typed" in data and "configs/*.yaml" in data
    assert (REPO / "src" / "cxrbench" / "py.typed").is_file()
    for name in ("study-2024.yaml", "study-dinov3.yaml", "demo.yaml"):
        assert (REPO / "src" / "cxrbench" / "configs" / name).is_file()


def test_the_sdist_manifest_holds_what_a_packager_needs():
    lines = (REPO / "MANIFEST.in").read_text(encoding="utf-8").splitlines()
    rules = {tuple(line.split()[:2]) for line in lines if line and not line.startswith("#")}
    for folder in ("docs", "configs", "tests", "bench"):
        assert ("graft", folder) in rules
    include = next(line.split()[1:] for line in lines if line.startswith("include "))
    assert {"LICENSE", "README.md", "Makefile", "pyproject.toml"} <= set(include)


def test_the_readme_names_every_extra():
    extras = set(PYPROJECT["project"]["optional-dependencies"])
    text = (REPO / "README.md").read_text(encoding="utf-8")
    paragraph = re.search(r"^Extras \(.*?(?:\n\n)", text, re.S | re.M)
    assert paragraph, "README has no 'Extras (...)' paragraph"
    named = set(re.findall(r"`([a-z0-9-]+)` \(", paragraph.group(0)))
    assert extras <= named, f"extras missing from the README: {sorted(extras - named)}"


@pytest.mark.slow
def test_built_sdist_and_wheel_hold_what_they_should(tmp_path):
    """`python -m build` (without isolation: no network) of a copy of the checkout."""
    pytest.importorskip("build")
    src = tmp_path / "checkout"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.egg-info", "build", "dist", ".*_cache", "demo-out"))
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(src)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    sdist = next(tmp_path.glob("cxrbench-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for path in ("LICENSE", "README.md", "Makefile", "MANIFEST.in", "pyproject.toml", "docs/python-api.md",
                 "configs/study-2024.yaml", "tests/test_api.py", "tests/conftest.py", "bench/api.py",
                 "src/cxrbench/py.typed", "src/cxrbench/configs/study-2024.yaml"):
        assert path in names, path
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    wheel = next(tmp_path.glob("cxrbench-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        files = set(whl.namelist())
    assert {"cxrbench/py.typed", "cxrbench/configs/study-2024.yaml", "cxrbench/configs/study-dinov3.yaml",
            "cxrbench/configs/demo.yaml"} <= files
    assert any(re.search(r"dist-info/licenses/LICENSE$", n) for n in files)
    assert not any(n.startswith("tests/") for n in files)

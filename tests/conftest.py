"""Shared fixtures: locations of real test material, deterministic seeds, CLI runner."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_CXR_DIR = Path(os.environ.get("CXRBENCH_REAL_CXR", REPO_ROOT.parent / "shared" / "data" / "real_cxr"))


@pytest.fixture(scope="session")
def real_cxr_dir() -> Path:
    """The real radiographs in ../shared/data/real_cxr/ (skip with a reason when absent)."""
    if not REAL_CXR_DIR.is_dir():
        pytest.skip(f"real radiographs not found at {REAL_CXR_DIR} (set CXRBENCH_REAL_CXR)")
    return REAL_CXR_DIR


@pytest.fixture(scope="session")
def xrv_data_dir() -> Path:
    """The real metadata CSVs shipped in the torchxrayvision wheel, found without importing it."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchxrayvision (dev dependency) is not installed")
    data = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not data.is_dir():
        pytest.skip(f"torchxrayvision has no data/ folder at {data}")
    return data


@pytest.fixture
def cli_runner():
    """Typer's CliRunner: commands run in-process; stderr kept apart from stdout."""
    from typer.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)
    except TypeError:  # click >= 8.2 always separates stderr
        return CliRunner()

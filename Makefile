# cxrbench: two commands. `make demo` runs the embedded default study; `make test` runs the tests.
# Each creates .venv when missing and installs the project into it.
PYTHON ?= python3
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint bench setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing cxrbench with its dependencies (PyTorch, timm, ...):"
	@echo "    a first install downloads PyTorch and the rest (hundreds of MB to a few GB) and can take"
	@echo "    several minutes; each package is listed as pip collects it."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	set -o pipefail; $(BIN)/python -m pip install --progress-bar off -e '.[dev]' 2>&1 \
	  | { grep --line-buffered -E '^(Collecting|Successfully installed|ERROR|error)' || true; }
	touch $(STAMP)
	@echo "==> installed; next runs skip this step"

demo: $(STAMP)
	@echo "==> running the demo study (phantom data, CPU): about 8 minutes on a quiet 2-core machine,"
	@echo "    longer on a busy one; each step prints a line as it starts"
	$(BIN)/cxrbench demo --out demo-out

test: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy
	$(BIN)/python -m pytest -m "not slow"

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

lint: $(STAMP)
	$(BIN)/ruff check src tests bench scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-out .pytest_cache .mypy_cache

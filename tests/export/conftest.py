"""A trained and evaluated tiny run for the export tests (a copy of the session's ``tiny_run``)."""

from __future__ import annotations

import shutil
import warnings

import pytest


@pytest.fixture(scope="module")
def evaluated_run(tiny_run, tmp_path_factory):
    """(run folder with eval/val and eval/test, its cache): thresholds chosen on validation."""
    from cxrbench.evaluate.run_eval import evaluate_run

    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(tiny_run[0], run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny splits: resamples with one class
        evaluate_run(run, "val", n_resamples=30)
        evaluate_run(run, "test", n_resamples=30)
    return run, tiny_run[1]

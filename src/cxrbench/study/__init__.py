"""The study runner: one YAML config runs the whole matrix (see docs/study.md).

``config`` validates the YAML, ``plan`` builds the content-keyed step graph, ``stages`` holds one
executor per step kind, ``runner`` executes the graph (skip if unchanged, resume, shards,
torchrun) and ``gather`` collects the results for :mod:`cxrbench.report`.
"""

from cxrbench.study.config import LoadedStudy, StudyConfig, load_study
from cxrbench.study.plan import Plan, Step, build_plan
from cxrbench.study.runner import report_study, run_study

__all__ = [
    "LoadedStudy",
    "Plan",
    "Step",
    "StudyConfig",
    "build_plan",
    "load_study",
    "report_study",
    "run_study",
]

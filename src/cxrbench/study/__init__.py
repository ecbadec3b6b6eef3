"""Stage 9, the study: one YAML config runs the whole matrix (see docs/study.md).

``config`` (schema) and ``load`` (YAML, env expansion, line numbers) validate the YAML; ``facts``
reads what the plan needs to know about datasets; ``layout`` names every path of the study folder;
``steps`` and ``plan`` build the content-keyed step graph (one builder per step kind); ``state``
holds markers and locks; ``shard`` splits it over machines; ``executors`` run one step kind each;
``runner`` executes the graph (skip if unchanged, resume, shards, torchrun); ``gather`` collects
the results for :mod:`cxrbench.report`; ``demo`` is the embedded default study.
"""

from cxrbench.study.config import LoadedStudy, StudyConfig
from cxrbench.study.load import load_study
from cxrbench.study.plan import build_plan
from cxrbench.study.runner import report_study, run_study
from cxrbench.study.steps import Plan, Step

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

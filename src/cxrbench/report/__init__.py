"""Stage 8, the report: ``results`` (:class:`StudyResults`, the in-memory results), ``tables``,
``plots``, ``text`` (summary and methods), ``html``/``markdown`` (renderers) and ``write``
(:func:`write_report`). It reads no study folder: :mod:`cxrbench.study.gather` builds the results.
"""

from cxrbench.report.results import MEAN, RESULT_COLUMNS, StudyResults
from cxrbench.report.write import main_table_text, write_report

__all__ = ["MEAN", "RESULT_COLUMNS", "StudyResults", "main_table_text", "write_report"]

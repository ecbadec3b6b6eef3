"""Synthetic chest radiographs laid out like the official releases of public datasets.

``generate(out, fmt, n_patients, ...)`` writes a dataset and returns its ground truth (a Contract-2
index); ``render(params, size, style)`` draws a batch of images from anatomy parameters
(``sample_params`` / ``neutral_params``); ``sample_cohort`` draws patients, studies and findings.
See docs/phantom.md.
"""

from cxrbench.phantom.anatomy import neutral_params, sample_params
from cxrbench.phantom.cohort import DEFAULT_PREVALENCE, FINDINGS, sample_cohort
from cxrbench.phantom.formats import FORMATS
from cxrbench.phantom.generate import format_options, generate, truth_findings
from cxrbench.phantom.render import render
from cxrbench.phantom.style import SiteStyle, site_style

__all__ = [
    "DEFAULT_PREVALENCE",
    "FINDINGS",
    "FORMATS",
    "SiteStyle",
    "format_options",
    "generate",
    "neutral_params",
    "render",
    "sample_cohort",
    "sample_params",
    "site_style",
    "truth_findings",
]

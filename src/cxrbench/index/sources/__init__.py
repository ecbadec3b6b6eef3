"""Dataset sources: one adapter per release, reading its official files into a normalized index.

Each adapter module opens with what is known about its dataset (counts, label provenance,
uncertain-label meaning, citation, known bad files) and exposes ``read(root, options) ->
SourceData``. :data:`SOURCES` is the registry used by :func:`cxrbench.index.build.build_index`.
"""

from __future__ import annotations

from cxrbench.common.validation import check_choice
from cxrbench.index.sources import chexpert, custom, google, mimic, nih, padchest, pcxr, rsna, siim, vindr
from cxrbench.index.sources.base import Adapter, IndexOptions, SourceData

SOURCES: dict[str, Adapter] = {
    "nih": nih.read,
    "chexpert": chexpert.read,
    "mimic": mimic.read,
    "padchest": padchest.read,
    "vindr": vindr.read,
    "vindr-pcxr": pcxr.read,  # pediatric
    "rsna": rsna.read,  # RSNA Pneumonia Detection (boxes)
    "siim": siim.read,  # SIIM-ACR Pneumothorax (masks)
    "nih-google": google.read,  # Google's expert relabels of NIH (evaluation set, four findings)
    "csv": custom.read,  # a private set described by a YAML mapping
}
DATASETS: tuple[str, ...] = tuple(SOURCES)

__all__ = ["DATASETS", "SOURCES", "IndexOptions", "SourceData", "get_source"]


def get_source(name: str) -> Adapter:
    """The adapter for ``--dataset name`` (InputError with the closest name otherwise)."""
    return SOURCES[check_choice("--dataset", name, DATASETS)]

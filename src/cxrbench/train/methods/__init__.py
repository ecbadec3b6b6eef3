"""The adaptation-method registry: one module per method (see :mod:`cxrbench.train.methods.base` for
the interface), registered here in the order the CLI, the docs and the report list them.

Adding a method: write ``train/methods/<name>.py`` with a :class:`~cxrbench.train.methods.base.Method`
subclass and ``METHOD = ...``, add it to :data:`METHODS` below, and, when it owns options, its
options model to :class:`AllMethodOptions` (docs/DEVELOPING.md has the whole recipe).
"""

from __future__ import annotations

from typing import Any

from cxrbench.common.layout import RUN_BEST_META
from cxrbench.common.validation import check_choice
from cxrbench.train.methods import full, knn, linear, lora, zeroshot
from cxrbench.train.methods.base import Method
from cxrbench.train.settings import DEFAULT_ADAPTATION

METHODS: dict[str, Method] = {m.name: m for m in (full.METHOD, linear.METHOD, lora.METHOD, knn.METHOD,
                                                  zeroshot.METHOD)}
"""Every adaptation method by name (``--adaptation``, a study's ``adaptations:``)."""


class AllMethodOptions(lora.LoraOptions, knn.KnnOptions, zeroshot.ZeroShotOptions):
    """The options every method owns, side by side (flat ``config.yaml`` keys of the ``train`` section)."""


def method_names() -> tuple[str, ...]:
    """The registered method names, ``full`` first."""
    return tuple(METHODS)


def get_method(name: str, where: str | None = None) -> Method:
    """The method called ``name`` (one InputError with the closest name and the choices otherwise)."""
    return METHODS[check_choice("--adaptation", name, METHODS, where=where)]


def method_of(meta: dict[str, Any]) -> Method:
    """The method of a finished run, from its ``best.json`` (runs made before methods were recorded
    were fine-tuned: ``full``)."""
    return get_method(str(meta.get("adaptation") or DEFAULT_ADAPTATION), where=RUN_BEST_META)


def owned_options() -> dict[str, str]:
    """config key -> the method that owns it, for every method's options."""
    return {key: m.name for m in METHODS.values() if m.options is not None for key in m.options.model_fields}


__all__ = ["METHODS", "AllMethodOptions", "Method", "get_method", "method_names", "method_of",
           "owned_options"]

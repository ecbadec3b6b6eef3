"""A stage package that is also its front door: ``cxrbench.train(cfg)`` calls ``cxrbench.train.loop.train``.

:func:`make_callable` turns the package module into a :class:`CallableStage` whose ``__call__``,
``inspect.signature`` and ``help()`` are those of the function it stands for, imported only when
called or asked about (so importing the package stays free of torch): ``help(cxrbench.train)`` shows
``train(cfg, *, overwrite=False, ...) -> TrainResult``, its parameters and example first, then what
the stage's modules hold.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from collections.abc import Callable
from typing import Any


class CallableStage(types.ModuleType):
    """A package module that calls its front door (``_front_door`` = ``"module:function"``)."""

    def _target(self) -> Callable[..., Any]:
        module, _, name = self.__dict__["_front_door"].partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._target()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._target())

    @property  # a module's __doc__ is a plain attribute; this one is computed, for help() and IPython's `?`
    def __doc__(self) -> str:  # type: ignore[override]
        target = self._target()
        name = self.__name__.rsplit(".", 1)[-1]
        own = inspect.getdoc(target) or ""
        stage = self.__dict__.get("_stage_doc") or ""
        return (f"{name}{inspect.signature(target)}\n\n{own}\n\n"
                f"The package {self.__name__} (the stage) holds:\n\n{stage}")


def make_callable(module_name: str, front_door: str) -> None:
    """Make the package ``module_name`` callable as ``front_door`` (``"cxrbench.train.loop:train"``)."""
    module = sys.modules[module_name]
    module.__dict__["_stage_doc"] = inspect.cleandoc(module.__dict__.get("__doc__") or "")
    module.__dict__["_front_door"] = front_door
    module.__class__ = CallableStage

"""Stage ``train``: ``settings`` (the settings every method shares), ``methods/`` (the adaptation-method
registry: one module per method), ``config`` (TrainConfig = settings + every method's options, the
resume merge rule, runtime keys), ``loop`` (:func:`train` and the readable fine-tuning loop),
``frozen`` (the driver of methods on cached embeddings), ``optim`` (schedule, parameter groups),
``loss``, ``checkpoint`` (last.pt, best.*), ``runfolder`` (new/resume/restart, config.yaml, best.json,
overlap guard), ``runlog``, ``console``, ``setup``, ``result``, ``tracking``.

The package itself is callable: ``cxrbench.train(cfg)`` is :func:`cxrbench.train.loop.train`
(the front door keeps its name although a folder of the same name holds the stage).
"""

from __future__ import annotations

import sys
import types
from typing import Any


class _CallableStage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from cxrbench.train.loop import train

        return train(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableStage

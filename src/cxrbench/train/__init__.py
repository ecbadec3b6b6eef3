"""Stage ``train``: ``settings`` (the settings every method shares), ``methods/`` (the adaptation-method
registry: one module per method), ``config`` (TrainConfig = settings + every method's options, the
resume merge rule, runtime keys), ``loop`` (:func:`train` and the readable fine-tuning loop),
``frozen`` (the driver of methods on cached embeddings), ``optim`` (schedule, parameter groups),
``loss``, ``checkpoint`` (last.pt, best.*), ``runfolder`` (new/resume/restart, config.yaml, best.json,
overlap guard), ``runlog``, ``console``, ``setup``, ``result``, ``tracking``.

The package itself is callable: ``cxrbench.train(cfg)`` is :func:`cxrbench.train.loop.train`;
``help(cxrbench.train)`` and ``inspect.signature`` show that function's
(the front door keeps its name although a folder of the same name holds the stage).
"""

from __future__ import annotations

from cxrbench.common.callable_stage import make_callable

make_callable(__name__, "cxrbench.train.loop:train")

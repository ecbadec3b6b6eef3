"""The ``pretrain`` stage: continued self-supervised pretraining on unlabeled radiographs (DINOv2 recipe).

``config`` (PretrainConfig, the resume merge rule), ``selection`` (the leakage-safe image selection
and the dataset over several caches), ``crops`` (multi-crop views and iBOT masks, batched on the
device), ``heads`` (DINO head, student/teacher network, EMA), ``losses`` (centering, Sinkhorn-Knopp,
DINO, iBOT, KoLeo), ``schedules``, ``model`` (building student and teacher), ``runfolder``, ``loop``
(:func:`~cxrbench.pretrain.loop.pretrain`). The run's teacher backbone is an init:
``checkpoint:RUN/best.safetensors``.

The package itself is callable: ``cxrbench.pretrain(cfg)`` is :func:`cxrbench.pretrain.loop.pretrain`;
``help(cxrbench.pretrain)`` and ``inspect.signature`` show that function's.
"""

from __future__ import annotations

from cxrbench.common.callable_stage import make_callable

make_callable(__name__, "cxrbench.pretrain.loop:pretrain")

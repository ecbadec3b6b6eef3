"""Stage 7, ``pretrain``: continued self-supervised pretraining on unlabeled radiographs (DINOv2 recipe).

``config`` (PretrainConfig, the resume merge rule), ``selection`` (the leakage-safe image selection
and the dataset over several caches), ``crops`` (multi-crop views and iBOT masks, batched on the
device), ``heads`` (DINO head, student/teacher network, EMA), ``losses`` (centering, Sinkhorn-Knopp,
DINO, iBOT, KoLeo), ``schedules``, ``model`` (building student and teacher), ``runfolder``, ``loop``
(:func:`~cxrbench.pretrain.loop.pretrain`). The run's teacher backbone is an init:
``checkpoint:RUN/best.safetensors``.
"""

"""Stage ``adapt`` (after ``stats``, before ``train``): a frozen backbone's features and their cache.
``features`` (the pooled, pre-logits features timm's head sees, computed on the device with the batch
halved on out-of-memory) and ``embeddings`` (those features computed once and cached beside the
cache, keyed by weights, model, size, precision and cache). The adaptation methods that fit on them
(``linear``, ``knn``) live with the other methods in :mod:`cxrbench.train.methods`.
"""

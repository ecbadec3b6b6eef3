"""Stage ``adapt`` (after ``stats``, before ``train``): ways to adapt a backbone other than
fine-tuning it end to end. ``features`` (the pooled, pre-logits features timm's head sees, computed
on the device with the batch halved on out-of-memory), ``embeddings`` (those features of a frozen
backbone, computed once and cached beside the cache), ``knn`` (chunked cosine kNN with
temperature-weighted votes per finding, k and T chosen on validation), ``lora`` (low-rank adapters
through peft, merged back into plain timm weights).

``train`` runs them as ``--adaptation linear|knn|lora``; ``evaluate`` scores knn runs through them.
"""

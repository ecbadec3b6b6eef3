"""Stage 4: the torch side of a cache. ``dataset.CacheDataset`` (O(1) items, batched reads),
``loader`` (resumable samplers, ``make_loader``), ``augment`` (batched on-device augmentation)."""

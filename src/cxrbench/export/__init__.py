"""Stage 8, ``export``: a trained run leaves the tool. ``hub`` (a folder timm loads as is, with its
model card, and ``--push`` to the Hugging Face hub), ``onnx`` (verified by onnxruntime), ``files``
(the export folder: atomic, never a file it did not write), ``card`` (the run's facts, the card)."""

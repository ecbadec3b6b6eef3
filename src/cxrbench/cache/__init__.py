"""Stage 3, ``prepare``: decode every image once (``decode``), preprocess it (``preprocess``) and
store the uint8 cache (``build``); ``read.open_cache`` is the one door back in."""

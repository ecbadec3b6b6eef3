"""Pure statistics on arrays: per-finding ``metrics``, the vectorized ``bootstrap``, and
``significance`` tests (DeLong, paired bootstrap p-values, Benjamini-Hochberg). No file I/O."""

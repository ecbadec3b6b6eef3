"""Stage 7, ``evaluate``: ``inference`` (the one prediction path), ``predictions`` (the Contract-4
file), ``scoring`` (metrics with bootstrap CIs), ``run_eval`` (a run folder's metrics.json),
``compare`` (paired tests and the one comparison file format), ``predict`` (new image files)."""

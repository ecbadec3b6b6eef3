"""Stage 5: backbones from init names. ``registry`` (the named inits), ``resolve`` (the one init-name
parser), ``build`` (``create_model``), ``store`` (where weights live: fetch, import), ``safeload``
(reading weight files without unpickling), ``forward`` (batched inference over a dataset)."""

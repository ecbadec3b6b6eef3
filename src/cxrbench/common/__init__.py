"""Shared pieces every stage may use: errors, validation, file I/O, on-disk names, progress,
provenance and the torchrun/device helpers. Imports nothing from the stages above."""

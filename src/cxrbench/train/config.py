"""The training configuration: one frozen, validated pydantic model (no globals), joining the shared
settings (:mod:`cxrbench.train.settings`) with the options of every adaptation method
(:mod:`cxrbench.train.methods`). Every field is a key of ``config.yaml`` (section ``train``).

Fields in :data:`RUNTIME_KEYS` change how a run executes but not what it computes (data loader
workers, device, logging and checkpoint intervals, determinism, compilation, the experiment tracker;
the cache path, whose content is checked by hash); every other field is part of the run's identity
and must match when an existing run folder is resumed. :meth:`TrainConfig.for_run` is the one resume
merge rule (options left out come from the run's ``config.yaml``), shared by the CLI, the Python API and
the study; :meth:`TrainConfig.step_identity` is what a study hashes into a training step's key.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import field_validator

from cxrbench.common.errors import InputError, spell
from cxrbench.common.runconfig import fields_doc, ordered_signature
from cxrbench.common.validation import one_of
from cxrbench.train.methods import AllMethodOptions, method_names, owned_options
from cxrbench.train.settings import TrainSettings

RUNTIME_KEYS: frozenset[str] = frozenset(
    {"cache", "out", "workers", "device", "log_every", "checkpoint_every", "deterministic", "compile",
     "tracker", "tracker_project", "tracker_name", "embed_batch_size"}
)
"""Keys that change how a run executes, not what it computes (never part of a run's identity)."""

RUN_OWNED_KEYS: tuple[str, ...] = ("cache", "init", "out", "findings")
"""Keys a study sets itself for every run (a study's ``train:`` sections may not set them)."""

# The identity keys hashed into the step keys of studies made before a key was added. A study
# step key must not move when cxrbench learns a new option, so a key outside this list is hashed
# only when it differs from its default; ``compile`` was hashed (as false) before it became a
# runtime key and stays in every key as false.
_KEYED_V1: tuple[str, ...] = (
    "image_size", "epochs", "batch_size", "grad_accum", "lr", "min_lr", "weight_decay", "betas",
    "schedule", "warmup_epochs", "layer_decay", "linear_probe", "precision", "clip_grad", "pos_weight",
    "augment", "hflip", "rotate", "patience", "seed", "keep_shared_head", "allow_overlap",
)
_KEYED_CONSTANTS: dict[str, Any] = {"compile": False}


class TrainConfig(TrainSettings, AllMethodOptions):
    """Everything ``cxrbench train`` needs; immutable once built: the shared settings
    (:class:`~cxrbench.train.settings.TrainSettings`) and the options each adaptation method owns
    (:mod:`cxrbench.train.methods`), as the flat keys of ``config.yaml``'s ``train`` section.

    Every keyword is an option of ``cxrbench train`` (``lr`` is ``--lr``) with the same description
    (listed below). An unknown keyword or a bad value raises one
    :class:`~cxrbench.common.errors.InputError` (``TrainConfig: unknown key 'lrr'. Fix: did you mean
    'lr'?``); :meth:`for_run` resumes a run folder with the options left out taken from its
    ``config.yaml``; :meth:`model_copy` (``update={...}``) derives a variant.

    Example::

        cfg = cxrbench.TrainConfig(cache="cache/nih-224", init="dinov2-vitb14", out="runs/nih",
                                   epochs=20, lr=1e-5, seed=1)
        result = cxrbench.train(cfg)           # -> TrainResult (run_dir, best_metric, ...)
    """

    @field_validator("adaptation")
    @classmethod
    def _known_method(cls, v: str) -> str:
        return one_of(v, method_names(), "adaptation method")

    @classmethod
    def ordered_fields(cls) -> list[str]:
        """The field names, the shared settings first, then each method's options (config.yaml's order)."""
        return list(dict.fromkeys([*TrainSettings.model_fields, *cls.model_fields]))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-able dict: the shared settings first, then each method's options."""
        d = super().to_dict()
        return {k: d[k] for k in self.ordered_fields()}

    # --- construction and comparison -------------------------------------------------------------

    def identity(self) -> dict[str, Any]:
        """The fields that define what a run computes: everything but :data:`RUNTIME_KEYS` and the
        options of adaptation methods other than this run's."""
        unused = set(self.unused_options())
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_KEYS and k not in unused}

    def unused_options(self, keys: Any = None) -> list[str]:
        """The options (of ``keys``, default all) that belong to an adaptation other than this run's."""
        owner = owned_options()
        return [k for k in (type(self).model_fields if keys is None else keys)
                if k in owner and owner[k] != self.adaptation]

    def step_identity(self) -> dict[str, Any]:
        """What a study hashes for a training step: :meth:`identity` without the keys the study
        sets per run, stable across cxrbench versions (see ``_KEYED_V1``)."""
        ident = self.identity()
        defaults = _defaults()
        out = {k: ident[k] for k in _KEYED_V1}
        out.update(_KEYED_CONSTANTS)
        for k, v in ident.items():
            if k not in _KEYED_V1 and k not in RUN_OWNED_KEYS and v != defaults.get(k):
                out[k] = v
        return out

    @classmethod
    def for_run(cls, out: str | os.PathLike, options: dict[str, Any], *,
                config_file: str | os.PathLike | None = None, overwrite: bool = False,
                where: str = "train config") -> TrainConfig:
        """The config of the run folder ``out``: the one resume merge rule.

        Options left out come from ``out/config.yaml`` when the run exists (and is not being
        restarted with ``overwrite``), then from ``config_file``; the ``options`` given win. A new
        run needs ``cache`` and ``init``. Values equal to None count as not given.
        """
        merged = cls.merged_options(out, {k: v for k, v in options.items() if v is not None},
                                    config_file=config_file, overwrite=overwrite)
        for key in ("cache", "init"):
            if key not in merged:
                flag = spell(f"--{key}", f"{key}=")
                raise InputError(f"{flag} is required for a new run", where=str(out),
                                 fix=f"give {flag} (or point {spell('--out', 'out=')} at an existing run to "
                                     "resume it)")
        return cls.from_dict(merged, where=where)


# help(TrainConfig): every keyword with its description, the shared settings first (as --help lists them)
TrainConfig.__doc__ = fields_doc(TrainConfig)
TrainConfig.__signature__ = ordered_signature(TrainConfig, TrainConfig.ordered_fields())


def _defaults() -> dict[str, Any]:
    return TrainConfig(cache="-", init="-", out="-").to_dict()

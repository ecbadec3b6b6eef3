"""What a study's training seed varies, per init arm and adaptation method.

* A **deterministic** arm gives the same run for every seed: a method whose runs do not depend on the
  seed (``Method.stochastic`` False, e.g. kNN on a frozen backbone) on a backbone that does not either
  (pretrained weights, a checkpoint, a pretraining run shared by the seeds). It runs once, with the
  study's first seed, and is shown as deterministic (no seed SD, the one-level image bootstrap CI).
* The **pretraining** of a ``domain:`` arm runs once per fine-tuning seed (``pretrain_seeds: per-seed``,
  its default), that of an ``ssl:`` arm once for all seeds (``shared``, its default); either can be
  switched. A shared pretraining run's variance is in no SD or CI of the arm.
* :func:`seed_variance` says which variance the seed SD of an arm covers (the tables and the Methods
  text quote it).
"""

from __future__ import annotations

from cxrbench.study.config import InitSpec, StudyConfig

SHARED, PER_SEED = "shared", "per-seed"


def pretrain_seeds(spec: InitSpec) -> str | None:
    """``shared`` or ``per-seed`` for an arm with a pretraining run (its setting, else the kind's
    default: domain per seed, ssl shared); None for an arm without one."""
    if spec.domain is None and spec.ssl is None:
        return None
    if spec.pretrain_seeds is not None:
        return spec.pretrain_seeds
    return PER_SEED if spec.domain is not None else SHARED


def pretrain_seed(cfg: StudyConfig, spec: InitSpec, seed: int) -> int | None:
    """The seed of the pretraining run a fine-tuning run of ``seed`` starts from (None: shared ssl run
    of the study's original layout, which has no seed in its id)."""
    mode = pretrain_seeds(spec)
    if mode == PER_SEED:
        return seed
    return cfg.seeds[0] if spec.domain is not None else None


def backbone_varies(spec: InitSpec) -> bool:
    """Whether the backbone a run starts from changes with the training seed (random weights, or a
    pretraining run per seed)."""
    from cxrbench.models.resolve import parse_init

    if spec.domain is not None or spec.ssl is not None:
        return pretrain_seeds(spec) == PER_SEED
    try:
        return parse_init(spec.init).kind == "random"
    except Exception:  # an unparsable init is reported elsewhere; count it as varying
        return True


def deterministic(spec: InitSpec, method: str) -> bool:
    """Whether every seed gives the same run of this arm with this adaptation method."""
    from cxrbench.train.methods import get_method

    return not get_method(method).stochastic and not backbone_varies(spec)


def seed_variance(spec: InitSpec, method: str) -> str:
    """Which variance the seed SD of the arm covers, in words."""
    from cxrbench.train.methods import get_method

    if deterministic(spec, method):
        return "none: deterministic, one run (the same for every seed)"
    m = get_method(method)
    if not m.stochastic:
        what = "the backbone's weights"
    elif m.regime == "embeddings":
        what = "the head's training on fixed frozen embeddings"
    else:
        what = "fine-tuning (head initialization, data order, augmentation)"
    mode = pretrain_seeds(spec)
    kind = "supervised" if spec.domain is not None else "self-supervised"
    if mode == PER_SEED:
        return f"{kind} pretraining (one run per seed) and {what}"
    if mode == SHARED:
        return (f"{what} only: one {kind} pretraining run is shared by the seeds, so its variance is in no "
                "SD or CI")
    if backbone_varies(spec):
        return f"the random initialization and {what}"
    return f"{what}; the pretrained weights are fixed"

"""``zeroshot``: classification by text prompts in a vision-language init's joint space, no training labels.

The init's own text tower (:func:`cxrbench.models.vlm.load_vision_language`) embeds each finding's
positive and negative prompt ensembles (:mod:`cxrbench.adapt.prompts`: cxrbench's versioned set, or
the run's ``zeroshot_prompts`` file), and an image's score for a finding is the softmax over that
finding's pair of image-text logits (:mod:`cxrbench.adapt.zeroshot`). Nothing is trained and no
training image is read: the run embeds the validation split only, where it checks the prompts.

**Inverted prompts.** A finding whose validation AUROC is below 0.5 has prompts that point the wrong
way (CheXzero's "no {}" template on the label "No Finding" scores 0.070 on the CheXpert test set).
It is flagged in ``best.json`` (``zeroshot.inverted``), ``log.jsonl`` and the console, and, with the
default ``zeroshot_inverted: drop``, left out of the run: the run predicts only the other findings, so
evaluate, predict, export and the report never show its scores as if they were valid (the Methods
text names it). ``zeroshot_inverted: keep`` scores it anyway, still flagged.

The run is an ordinary run folder: ``best.safetensors`` holds the frozen image tower (no head, as a
kNN run), ``zeroshot.safetensors`` the head: the finding's two text embeddings, the image projection
and the logit scale and bias, so ``evaluate``, ``predict`` and ``export --format onnx`` need neither
the text tower nor the prompt file. ``best.json`` records every prompt encoded and the prompt set
(name, version, SHA-256). Thresholds and calibration come from the validation split like any run's
(``cxrbench evaluate``). Deterministic: runs with other seeds are identical (the tiny random test
towers excepted, which are drawn from the seed).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field, field_validator

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import atomic_path, file_sha256
from cxrbench.common.layout import RUN_ZEROSHOT
from cxrbench.stats.metrics import mean_auroc
from cxrbench.train.methods.base import (
    EmbeddingFit,
    EmbeddingTask,
    Method,
    Regime,
    Scorer,
    load_run_network,
    run_autocast,
    run_transform,
    single_point_fit,
)
from cxrbench.train.settings import MethodOptions, TrainSettings

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cxrbench.adapt.zeroshot import ZeroShotHead

SCORE_WORDS = ("the softmax over the finding's own positive/negative prompt pair of the model's image-text "
               "logits (cosine similarity times its logit scale)")


class ZeroShotOptions(MethodOptions):
    """The options of ``--adaptation zeroshot`` (``config.yaml`` keys)."""

    zeroshot_prompts: str | None = Field(None, description="Prompt-set YAML with positive and negative "
                                         "prompts per finding, replacing cxrbench's (configs/prompts.yaml).")
    zeroshot_inverted: Literal["drop", "keep"] = Field("drop", description="A finding whose prompts score "
                                                       "below chance on val (AUROC < 0.5): drop = left out "
                                                       "of the run, keep = scored; flagged either way.")

    @field_validator("zeroshot_prompts")
    @classmethod
    def _check_zeroshot_prompts(cls, v: str | None) -> str | None:
        if v is not None and not str(v).strip():
            raise ValueError("must name a prompt file")
        return v


def vision_language_fix() -> str:
    """The fix of a zero-shot arm on an init without a text tower: the vision-language inits."""
    from cxrbench.models.registry import INITS
    from cxrbench.models.vlm_convert import VLM_FORMATS

    names = [n for n, s in INITS.items() if s.convert in VLM_FORMATS]
    return (f"use a vision-language init ({', '.join(names)}, random-clip-test, random-siglip-test or "
            "local-dir:FOLDER of an open_clip or SigLIP model), or another adaptation method")


def _is_vlm(init: str) -> bool:
    """Whether ``init`` has a text tower cxrbench loads; a spelling no init has (a study's ``domain:`` and
    ``ssl:`` arms, which train a backbone of their own) has none. A named folder that cannot be read is
    that folder's error."""
    from cxrbench.models.resolve import parse_init
    from cxrbench.models.vlm import is_vision_language

    try:
        parse_init(init)
    except InputError:
        return False
    return is_vision_language(init)


def save_head(path: Path, head: ZeroShotHead, findings: list[str], prompts: dict[str, Any]) -> None:
    """Write the head (its tensors) with the findings and prompts in the header, atomically."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file(head.tensors(), str(tmp), metadata={"findings": json.dumps(findings),
                                                      "prompts": json.dumps(prompts)})


def load_run_head(run_dir: Any, meta: dict[str, Any]) -> ZeroShotHead:
    """The head of a zero-shot run (InputError when missing, unreadable or not this run's)."""
    from safetensors import SafetensorError, safe_open

    from cxrbench.adapt.zeroshot import ZeroShotHead

    path = Path(run_dir) / RUN_ZEROSHOT
    fix = "re-train the run (cxrbench train --adaptation zeroshot --overwrite)"
    try:
        with safe_open(str(path), "pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        findings = json.loads(header.get("findings", "null"))
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"cannot read the zero-shot head ({e})", where=str(path), fix=fix) from None
    recorded = (meta.get("zeroshot") or {}).get("head_sha256")
    if findings != list(meta["findings"]) or "text" not in tensors or (
            recorded and recorded != file_sha256(path)):
        raise InputError(f"best.json and {RUN_ZEROSHOT} do not belong together", where=str(run_dir), fix=fix)
    return ZeroShotHead.from_tensors(tensors)


def run_network(run_dir: Any, meta: dict[str, Any], device: torch.device) -> nn.Module:
    """The run's classifier: its frozen image tower with the zero-shot head, eval mode, on ``device``."""
    from cxrbench.adapt.zeroshot import attach_head

    backbone = load_run_network(run_dir, device, head=False)
    return attach_head(backbone, load_run_head(run_dir, meta).to(device)).eval()


class ZeroShotScorer(Scorer):
    """A zero-shot run's scores: the images' pooled features by its image tower in its embedding
    precision (the split's embeddings stored beside a cache are reused), through its head."""

    def __init__(self, run_dir: Any, meta: dict[str, Any], device: torch.device) -> None:
        from cxrbench.adapt.zeroshot import attach_head

        self.run_dir, self.meta, self.device = Path(run_dir), meta, device
        self.transform = run_transform(meta, device)
        spec = (meta.get("embeddings") or {}).get("spec")
        if not spec:
            raise InputError("best.json of the zero-shot run has no embeddings spec", where=str(run_dir),
                             fix="re-train the run with this version of cxrbench")
        self.spec: dict[str, Any] = dict(spec)
        self.head = load_run_head(run_dir, meta).to(device)
        self.network = attach_head(load_run_network(run_dir, device, head=False), self.head).eval()
        self.classifier = self.network  # saliency maps explain the zero-shot logits
        self.autocast = run_autocast(self.spec.get("precision"), device)
        self.precision = str(self.spec.get("precision", "fp32")) if self.autocast is not None else "fp32"

    def features(self, dataset: Any, *, batch_size: int = 64, split: str | None = None) -> np.ndarray:
        """float32 ``[N, D]`` pooled features (stored ones reused for a cache split)."""
        from cxrbench.adapt.embeddings import EmbeddingSpec, EmbeddingStore, split_embeddings
        from cxrbench.adapt.features import extract_features

        def compute() -> tuple[np.ndarray, int]:
            return extract_features(self.network, dataset, self.transform, self.device, batch_size=batch_size,
                                    autocast=self.autocast)

        cache_dir = getattr(dataset, "cache_dir", None)
        if split is not None and cache_dir is not None:
            spec = replace(EmbeddingSpec.from_dict(self.spec), precision=self.precision)
            return split_embeddings(EmbeddingStore(cache_dir, spec), split, dataset, compute).values
        return compute()[0]

    def score(self, dataset: Any, *, batch_size: int = 64, split: str | None = None) -> np.ndarray:
        from cxrbench.adapt.zeroshot import probabilities

        return probabilities(self.head, self.features(dataset, batch_size=batch_size, split=split),
                             device=self.device)


class ZeroShot(Method):
    name: ClassVar[str] = "zeroshot"
    summary: ClassVar[str] = "text prompts in a vision-language init's joint space (no training labels): " \
                             "per finding the softmax over its positive/negative prompt pair"
    regime: ClassVar[Regime] = "embeddings"
    options: ClassVar[type[MethodOptions]] = ZeroShotOptions
    stochastic: ClassVar[bool] = False  # nothing is drawn: every seed gives the same scores
    uses_training_data: ClassVar[bool] = False
    export_formats: ClassVar[tuple[str, ...]] = ("onnx",)

    def check_init(self, init: str, where: str | None = None) -> None:
        if not _is_vlm(init):
            raise InputError(f"adaptation zeroshot needs a vision-language init (an image tower with its "
                             f"text tower), and {init} is not one", where=where or f"init {init}",
                             fix=vision_language_fix())

    def describe(self, cfg: TrainSettings, trainable: int, total: int) -> str:
        opts = self._opts(cfg)
        prompts = opts.zeroshot_prompts or "cxrbench's prompt set"
        return (f"zeroshot: text prompts ({prompts}), pairwise softmax per finding, inverted prompts "
                f"{'dropped' if opts.zeroshot_inverted == 'drop' else 'kept, flagged'}; {trainable:,} of "
                f"{total:,} parameters trainable")

    def _opts(self, cfg: Any) -> ZeroShotOptions:
        opts = self.own_options(cfg)
        assert isinstance(opts, ZeroShotOptions)
        return opts

    def fit(self, task: EmbeddingTask) -> EmbeddingFit:
        """Encode the prompts, score the val split, flag (and drop) inverted findings, write the head."""
        from cxrbench.adapt.prompts import load_prompts
        from cxrbench.adapt.zeroshot import ensemble_embeddings, head_from, probabilities
        from cxrbench.models.vlm import load_vision_language
        from cxrbench.train.checkpoint import state_dict_cpu

        opts = self._opts(task.cfg)
        prompts = load_prompts(opts.zeroshot_prompts)
        pairs = prompts.pairs(task.findings)
        vl = load_vision_language(task.cfg.init, seed=task.cfg.seed)
        width = vl.projection.shape[1] if vl.projection is not None else vl.embed_dim
        if task.val_x.shape[1] != width:
            raise InputError(f"the image tower's pooled features are {task.val_x.shape[1]}-d but the text "
                             f"tower's joint space expects {width}", where=f"init {task.cfg.init}",
                             fix="the image and text towers do not belong together; re-import the init")
        head = head_from(vl, ensemble_embeddings(vl, pairs, device=task.device))
        scores = probabilities(head, task.val_x, device=task.device)
        _, per = mean_auroc(task.val_y, scores)
        auroc = dict(zip(task.findings, map(float, per), strict=True))
        inverted = {f: a for f, a in auroc.items() if np.isfinite(a) and a < 0.5}
        keep = [i for i, f in enumerate(task.findings)
                if opts.zeroshot_inverted == "keep" or f not in inverted]
        self._report(task, auroc, inverted, opts.zeroshot_inverted)
        if not keep:
            listed = ", ".join(f"{f} {a:.3f}" for f, a in inverted.items())
            raise InputError(f"the prompts of every finding score below chance on the validation split "
                             f"({listed})", where=str(task.run_dir),
                             fix="check the prompts (zeroshot_prompts: PATH), or score them anyway with "
                                 "zeroshot_inverted: keep")
        kept = [task.findings[i] for i in keep]
        head = head.select(keep)
        mean, kept_per = mean_auroc(task.val_y[:, keep], scores[:, keep])
        val = {"mean_auroc": mean, "auroc": dict(zip(kept, map(float, kept_per), strict=True)), "loss": None}
        task.writer.log({"kind": "epoch", "epoch": 1, "step": 0, "val_mean_auroc": mean, "val_loss": None,
                         "val_auroc": val["auroc"], "best_epoch": 1, "improved": True, "time": time.time()})
        task.writer.scalars(0, {"val/mean_auroc": mean})
        encoded = {p.finding: {"positive": list(p.positive), "negative": list(p.negative)} for p in pairs}
        path = task.run_dir / RUN_ZEROSHOT
        save_head(path, head, kept, {f: encoded[f] for f in kept})
        dropped = [f for f in task.findings if f not in kept]
        record = {"score": "pairwise softmax", "prompt_set": prompts.describe(task.findings),
                  "prompts": encoded, "val_auroc": auroc, "inverted": inverted,
                  "on_inverted": opts.zeroshot_inverted, "dropped": dropped, "head": RUN_ZEROSHOT,
                  "head_sha256": file_sha256(path), "text_tower": vl.describe()}
        weights = {n: w for n, w in state_dict_cpu(task.model).items() if n not in task.head_keys}
        best, progress, history = single_point_fit(mean)
        header = {"zeroshot": {"head_sha256": record["head_sha256"], "prompt_set": prompts.sha256}}
        return EmbeddingFit(weights, [], best, progress, history, val, {"zeroshot": record}, header,
                            findings=kept)

    @staticmethod
    def _report(task: EmbeddingTask, auroc: dict[str, float], inverted: dict[str, float],
                policy: str) -> None:
        """Per finding a ``zeroshot`` log line; a console note for each inverted finding."""
        for f, a in auroc.items():
            task.writer.log({"kind": "zeroshot", "step": 0, "finding": f, "val_auroc": a,
                             "inverted": f in inverted, "time": time.time()})
        if not inverted:
            return
        bar = task.make_bar(1)
        try:
            what = "left out of the run" if policy == "drop" else "kept (zeroshot_inverted: keep), flagged"
            for f, a in inverted.items():
                bar.note(f"warning: the prompts of {f} score below chance on val (AUROC {a:.3f}): inverted "
                         f"prompts? {what}")
        finally:
            bar.close()

    def scorer(self, run_dir: Any, meta: dict[str, Any], device: torch.device) -> Scorer:
        return ZeroShotScorer(run_dir, meta, device)

    def network(self, run_dir: Any, meta: dict[str, Any], device: torch.device) -> nn.Module:
        return run_network(run_dir, meta, device)

    def no_export(self, fmt: str) -> str:
        return (f"--format {fmt} writes a plain timm classifier, and a zero-shot run's head compares the "
                "normalised image embedding with its prompts' text embeddings: not a timm linear head")

    # -- the Methods text --------------------------------------------------------------------------
    def facts(self, train: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        out = super().facts(train, best)
        rec = best.get("zeroshot")
        if isinstance(rec, dict):
            out.update({k: rec.get(k) for k in ("prompt_set", "inverted", "on_inverted", "dropped")})
        return out

    def sentence(self, facts: Sequence[dict[str, Any]]) -> str:
        text = ("zero-shot classification by text prompts (no training labels; each finding's positive and "
                "negative prompt ensembles embedded by the init's own text tower, each ensemble the "
                f"normalised mean of its prompts' normalised embeddings; a finding's score is {SCORE_WORDS}; "
                "thresholds and calibration from the validation split only)")
        sets = [f["prompt_set"] for f in facts if isinstance(f.get("prompt_set"), dict)]
        quoted = [quote_prompt_set(s) for s in {json.dumps(s, sort_keys=True): s for s in sets}.values()]
        flagged = inverted_words(facts)
        return text + "".join(f"; {q}" for q in quoted) + (f"; {flagged}" if flagged else "")


def _q(texts: Sequence[str]) -> str:
    return ", ".join(f'"{t}"' for t in texts)


def quote_prompt_set(s: dict[str, Any]) -> str:
    """A prompt set as the Methods text quotes it: name, version, SHA-256, templates, each finding's terms
    or verbatim prompts."""
    head = f"prompt set {s.get('name')} {s.get('version')} (SHA-256 {str(s.get('sha256', ''))[:12]})"
    t = s.get("templates") or {}
    parts = [f"templates positive {_q(t['positive'])}, negative {_q(t['negative'])}"] if t else []
    for finding, e in (s.get("entries") or {}).items():
        sides = [f"{side} {_q(e[side])}" for side in ("positive", "negative") if e.get(side)]
        terms = [f"terms {_q(e['terms'])}"] if e.get("terms") and len(sides) < 2 else []
        parts.append(f"{finding}: " + ", ".join(terms + sides))
    return head + ": " + "; ".join(parts)


def inverted_words(facts: Sequence[dict[str, Any]]) -> str:
    """The findings whose prompts scored below chance on validation, as the Methods text says it."""
    seen: dict[str, list[float]] = {}
    policies: set[str] = set()
    for f in facts:
        for finding, a in (f.get("inverted") or {}).items():
            seen.setdefault(finding, []).append(float(a))
            policies.add("keep" if f.get("on_inverted") == "keep" else "drop")
    if not seen:
        return ""
    items = [f"{k} (val AUROC {min(v):.3f}" + (f" to {max(v):.3f}" if len(v) > 1 and max(v) != min(v) else "")
             + ")" for k, v in seen.items()]
    tail = {frozenset({"drop"}): ", not reported for zero-shot (left out of those runs)",
            frozenset({"keep"}): ", kept (zeroshot_inverted: keep) and flagged"}.get(
        frozenset(policies), ", dropped unless a run kept them (zeroshot_inverted: keep)")
    return f"prompts scoring below chance on the validation split (inverted): {', '.join(items)}{tail}"


METHOD = ZeroShot()

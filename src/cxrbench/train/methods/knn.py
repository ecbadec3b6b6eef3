"""``knn``: a temperature-weighted kNN over the frozen backbone's cached embeddings, k and T chosen on val.

The classifier itself (cosine similarity on L2-normalized embeddings, unknown labels excluded per
finding, votes ``exp(s/T)``; chunked, exact) is :mod:`cxrbench.adapt.knn`. This method chooses k and
the temperature on the validation split by mean AUROC (:func:`choose`; ties: the smaller k, then the
smaller T), keeps the normalized train embeddings and labels it votes with in
``RUN/knn_bank.safetensors`` and the frozen backbone (no head) in ``best.safetensors``. Its scorer
embeds images with that backbone (reusing the embeddings stored beside a cache, in the run's embedding
precision) and votes. Deterministic given the backbone: runs with other seeds are identical.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field, field_validator

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import atomic_path, file_sha256
from cxrbench.common.layout import RUN_KNN_BANK
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
from cxrbench.train.settings import MethodOptions, TrainSettings, comma_list

if TYPE_CHECKING:
    import torch


class KnnOptions(MethodOptions):
    """The options of ``--adaptation knn`` (``config.yaml`` keys): the grids k and T are chosen from."""

    knn_k: tuple[int, ...] = Field((10, 20, 50, 100), description="Comma-separated neighbour counts, the "
                                   "best on val is used.")
    knn_temperature: tuple[float, ...] = Field((0.02, 0.07, 0.2), description="Comma-separated vote "
                                               "temperatures; the best on val is used.")

    @field_validator("knn_k", "knn_temperature", mode="before")
    @classmethod
    def _split_knn_lists(cls, v: Any) -> Any:
        return comma_list(v)

    @field_validator("knn_k")
    @classmethod
    def _check_knn_k(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(k < 1 for k in v):
            raise ValueError("every k must be at least 1")
        return tuple(sorted(v))

    @field_validator("knn_temperature")
    @classmethod
    def _check_knn_temperature(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < t <= 100 for t in v):
            raise ValueError("every temperature must be in (0, 100]")
        return tuple(sorted(v))


def choose(val: np.ndarray, val_labels: np.ndarray, bank: torch.Tensor, labels: np.ndarray,
           ks: Sequence[int], temperatures: Sequence[float], *, device: Any = "cpu",
           budget: int | None = None) -> tuple[int, float, list[dict]]:
    """``(k, T, grid)``: the pair with the highest validation mean AUROC (ties: the smaller k, then
    the smaller T) and every pair's figures (``k``, ``temperature``, ``val_mean_auroc``,
    ``val_auroc``). The neighbours are found once, for the largest k."""
    from cxrbench.adapt import knn

    n = bank.shape[0]
    ks = sorted({min(int(k), n) for k in ks})
    if not ks or n == 0:
        raise InputError("the kNN bank is empty", where="adaptation knn", fix="train on a cache with images")
    nbs = knn.neighbours(val, bank, labels, ks[-1], device=device, budget=budget)
    grid, best = [], None
    for k in ks:
        for t in sorted(temperatures):
            m, per = mean_auroc(val_labels, knn.scores(nbs, labels, k, t))
            grid.append({"k": k, "temperature": float(t), "val_mean_auroc": m, "val_auroc": per})
            if np.isfinite(m) and (best is None or m > best[2]):
                best = (k, float(t), m)
    if best is None:
        raise InputError("no finding has both classes in the val split, so k and T cannot be chosen",
                         where="adaptation knn", fix="re-index with a larger validation split")
    return best[0], best[1], grid


def save_bank(path: Any, embeddings: torch.Tensor, labels: np.ndarray, metadata: dict[str, str]) -> None:
    """Write the bank (normalized ``embeddings`` [N, D], ``labels`` [N, K] with NaN) atomically."""
    import torch
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        tensors = {"embeddings": embeddings.float().contiguous(),
                   "labels": torch.tensor(np.ascontiguousarray(labels), dtype=torch.float32).contiguous()}
        save_file(tensors, str(tmp), metadata=metadata)


def load_bank(path: Any) -> tuple[torch.Tensor, np.ndarray, dict[str, str]]:
    """``(embeddings [N, D], labels [N, K], metadata)`` of a bank file (InputError when unreadable)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            emb, labels = f.get_tensor("embeddings"), f.get_tensor("labels")
    except (SafetensorError, OSError) as e:
        raise InputError(f"cannot read the kNN bank ({e})", where=str(path),
                         fix="re-train the run (cxrbench train --adaptation knn --overwrite)") from None
    return emb.float(), labels.numpy(), meta


def load_run_bank(run_dir: Any, meta: dict[str, Any]) -> tuple[torch.Tensor, np.ndarray, int, float]:
    """``(normalized bank [N, D], labels [N, K], k, temperature)`` of a kNN run."""
    bank, labels, _ = load_bank(Path(run_dir) / RUN_KNN_BANK)
    chosen = meta.get("knn") or {}
    if "k" not in chosen or "temperature" not in chosen or labels.shape[1] != len(meta["findings"]):
        raise InputError("best.json and the kNN bank do not belong together", where=str(run_dir),
                         fix=f"re-train the run with {spell('--overwrite')}")
    return bank, labels, int(chosen["k"]), float(chosen["temperature"])


class KnnScorer(Scorer):
    """A kNN run's votes: the images embedded by its frozen backbone in its embedding precision (the
    split's embeddings stored beside a cache are reused), against its bank."""

    def __init__(self, run_dir: Any, meta: dict[str, Any], device: torch.device) -> None:
        self.run_dir, self.meta, self.device = Path(run_dir), meta, device
        self.transform = run_transform(meta, device)
        self.classifier = None
        spec = (meta.get("embeddings") or {}).get("spec")
        if not spec:
            raise InputError("best.json of the kNN run has no embeddings spec", where=str(run_dir),
                             fix="re-train the run with this version of cxrbench")
        self.spec: dict[str, Any] = dict(spec)
        self.backbone = load_run_network(run_dir, device, head=False)
        self.bank, self.labels, self.k, self.temperature = load_run_bank(run_dir, meta)
        self.autocast = run_autocast(self.spec.get("precision"), device)
        self.precision = str(self.spec.get("precision", "fp32")) if self.autocast is not None else "fp32"

    def score(self, dataset: Any, *, batch_size: int = 64, split: str | None = None) -> np.ndarray:
        from cxrbench.adapt import knn
        from cxrbench.adapt.embeddings import EmbeddingSpec, EmbeddingStore, split_embeddings
        from cxrbench.adapt.features import extract_features

        def compute() -> tuple[np.ndarray, int]:
            return extract_features(self.backbone, dataset, self.transform, self.device,
                                    batch_size=batch_size, autocast=self.autocast)

        cache_dir = getattr(dataset, "cache_dir", None)
        if split is not None and cache_dir is not None:
            spec = replace(EmbeddingSpec.from_dict(self.spec), precision=self.precision)
            values = split_embeddings(EmbeddingStore(cache_dir, spec), split, dataset, compute).values
        else:
            values = compute()[0]
        return knn.predict(values, self.bank, self.labels, self.k, self.temperature,
                           device=self.device).astype(np.float64)


class Knn(Method):
    name: ClassVar[str] = "knn"
    summary: ClassVar[str] = "cosine kNN over the frozen backbone's cached embeddings, k and temperature " \
                             "chosen on val"
    regime: ClassVar[Regime] = "embeddings"
    options: ClassVar[type[MethodOptions]] = KnnOptions
    stochastic: ClassVar[bool] = False  # a fixed backbone and bank give the same votes for every seed
    has_classifier: ClassVar[bool] = False

    def describe(self, cfg: TrainSettings, trainable: int, total: int) -> str:
        opts = self.own_options(cfg)
        assert isinstance(opts, KnnOptions)
        ks = ", ".join(map(str, opts.knn_k))
        ts = ", ".join(f"{t:g}" for t in opts.knn_temperature)
        return (f"knn on cached embeddings: cosine similarity, votes exp(s/T) per finding; k in ({ks}) x T "
                f"in ({ts}) chosen on val; {trainable:,} of {total:,} parameters trainable")

    def fit(self, task: EmbeddingTask) -> EmbeddingFit:
        """Choose k and T on val, write the bank beside the run; the weights are the backbone's."""
        from cxrbench.adapt import knn
        from cxrbench.adapt.embeddings import ids_sha256
        from cxrbench.train.checkpoint import state_dict_cpu

        opts = self.own_options(task.cfg)
        assert isinstance(opts, KnnOptions)
        bank = knn.normalize(task.train_x)
        k, t, grid = choose(task.val_x, task.val_y, bank, task.train_y, opts.knn_k, opts.knn_temperature,
                            device=task.device)
        for row in grid:
            task.writer.log({"kind": "knn", "step": 0, "k": row["k"], "temperature": row["temperature"],
                             "val_mean_auroc": row["val_mean_auroc"], "time": time.time()})
        chosen = next(r for r in grid if r["k"] == k and r["temperature"] == t)
        val = {"mean_auroc": chosen["val_mean_auroc"],
               "auroc": dict(zip(task.findings, chosen["val_auroc"], strict=True)), "loss": None}
        task.writer.log({"kind": "epoch", "epoch": 1, "step": 0, "val_mean_auroc": val["mean_auroc"],
                         "val_loss": None, "val_auroc": val["auroc"], "best_epoch": 1, "improved": True,
                         "k": k, "temperature": t, "time": time.time()})
        task.writer.scalars(0, {"val/mean_auroc": val["mean_auroc"]})
        bank_path = task.run_dir / RUN_KNN_BANK
        save_bank(bank_path, bank, task.train_y, {
            "findings": json.dumps(task.findings), "k": str(k), "temperature": repr(t),
            "embeddings_key": task.embeddings_key, "image_ids_sha256": ids_sha256(task.train_ids)})
        weights = {n: w for n, w in state_dict_cpu(task.model).items() if n not in task.head_keys}
        record = {"k": k, "temperature": t, "similarity": "cosine", "bank": RUN_KNN_BANK,
                  "bank_sha256": file_sha256(bank_path), "n_bank": int(bank.shape[0]),
                  "grid": [{key: r[key] for key in ("k", "temperature", "val_mean_auroc")} for r in grid]}
        best, progress, history = single_point_fit(val["mean_auroc"])
        # the weights are the frozen backbone: the header ties the file to this choice and bank
        header = {"knn": {key: record[key] for key in ("k", "temperature", "bank_sha256")}}
        return EmbeddingFit(weights, [], best, progress, history, val, {"knn": record}, header)

    def scorer(self, run_dir: Any, meta: dict[str, Any], device: torch.device) -> Scorer:
        return KnnScorer(run_dir, meta, device)

    def no_classifier(self) -> str:
        return (f"a kNN run has no classifier model: it scores an image by its nearest training images "
                f"({RUN_KNN_BANK})")

    def facts(self, train: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
        out = super().facts(train, best)
        chosen = best.get("knn")
        if isinstance(chosen, dict):
            out.update({f"chosen_{k}": chosen.get(k) for k in ("k", "temperature") if k in chosen})
        return out

    def sentence(self, facts: Sequence[dict[str, Any]]) -> str:
        ks = sorted({int(f["chosen_k"]) for f in facts if f.get("chosen_k") is not None})
        ts = sorted({float(f["chosen_temperature"]) for f in facts
                     if f.get("chosen_temperature") is not None})
        chosen = ""
        if ks and ts:
            k_text = str(ks[0]) if len(ks) == 1 else f"{ks[0]} to {ks[-1]}"
            t_text = f"{ts[0]:g}" if len(ts) == 1 else f"{ts[0]:g} to {ts[-1]:g}"
            chosen = f" (chosen: k {k_text}, temperature {t_text})"
        return ("kNN (cosine similarity on L2-normalized frozen embeddings, temperature-weighted votes of "
                "the nearest training images per finding, k and temperature chosen on the validation split "
                f"of each run{chosen})")


METHOD = Knn()

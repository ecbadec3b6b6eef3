"""The report's example images: per finding, the top true and false positives of a split, with maps.

:func:`top_examples` reads the split's predictions (``RUN/eval/SPLIT/predictions.parquet``) and the
run's decision thresholds (chosen on validation, :func:`cxrbench.evaluate.predict.run_thresholds`),
takes per finding the ``k`` highest-scoring positives called positive (true positives) and the ``k``
highest-scoring negatives called positive (false positives; without a threshold, the
highest-scoring positives and negatives), computes their saliency maps with the run's model on the
cache pixels, and draws them over the original image, read again from the dataset folder and
preprocessed with the cache's own recipe at ``thumb_size`` px (the same framing as the model's
input, at a readable size: a study's model may see 48 px); when the original cannot be read (the
dataset moved), over the cache pixels upsampled. Returns the overlays as PNG bytes (tens of kB each).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrbench.common.errors import InputError
from cxrbench.common.layout import predictions_path
from cxrbench.evaluate.predictions import PredictionSet, read_predictions

EXAMPLE_COLUMNS: tuple[str, ...] = ("finding", "kind", "rank", "image_id", "patient_id", "score", "threshold",
                                    "png")
KINDS: tuple[str, ...] = ("true_positive", "false_positive")


def select_examples(ps: PredictionSet, thresholds: dict[str, float | None], k: int = 4,
                    findings: Sequence[str] | None = None) -> pd.DataFrame:
    """Rows ``finding, kind, rank, image_id, patient_id, score, threshold`` of the chosen images."""
    rows: list[dict[str, Any]] = []
    for f in findings or ps.findings:
        j = ps.column(f)
        y, s = ps.labels[:, j], ps.scores[:, j]
        t = thresholds.get(f)
        called = s >= t if t is not None else np.ones_like(s, dtype=bool)
        for kind, label in zip(KINDS, (1.0, 0.0), strict=True):
            idx = np.flatnonzero((y == label) & called)
            idx = idx[np.argsort(-s[idx], kind="stable")][:k]
            rows += [{"finding": f, "kind": kind, "rank": r + 1, "image_id": str(ps.image_ids[i]),
                      "patient_id": str(ps.patient_ids[i]), "score": float(s[i]),
                      "threshold": None if t is None else float(t)} for r, i in enumerate(idx)]
    return pd.DataFrame(rows, columns=list(EXAMPLE_COLUMNS[:-1]))


def _originals(cache_dir: Path, image_ids: list[str], size: int,
               recipe: dict[str, Any]) -> list[np.ndarray | None]:
    """The original images of ``image_ids`` preprocessed as the cache was (resize mode, equalization,
    resampler) but at ``size`` px; None for an image that cannot be read (missing, moved)."""
    from cxrbench.cache.decode import read_image
    from cxrbench.cache.preprocess import preprocess
    from cxrbench.cache.read import open_cache
    from cxrbench.common.fileio import resolve_inside

    cache = open_cache(cache_dir)
    root = (cache.manifest.get("source") or {}).get("root")
    if not root or not Path(root).is_dir():
        return [None] * len(image_ids)
    paths = cache.columns(["image_id", "path"]).astype(str).set_index("image_id")["path"]
    out: list[np.ndarray | None] = []
    for image_id in image_ids:
        try:
            img = read_image(resolve_inside(root, str(paths.loc[image_id])))
            out.append(preprocess(img, size, recipe["resize"], recipe["equalize"],
                                  recipe.get("resample", "area")))
        except (InputError, KeyError, OSError):
            out.append(None)
    return out


def top_examples(run_dir: str | os.PathLike, split: str = "test", *, k: int = 4,
                 findings: Sequence[str] | None = None, method: str = "gradcam", thumb_size: int = 256,
                 cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 batch_size: int = 8) -> pd.DataFrame:
    """Top ``k`` true and false positives per finding with overlay thumbnails (columns
    :data:`EXAMPLE_COLUMNS`; ``png`` holds the bytes of a ``thumb_size`` px PNG)."""
    from cxrbench.common.distributed import resolve_device
    from cxrbench.data.augment import BatchTransform
    from cxrbench.data.dataset import CacheDataset
    from cxrbench.evaluate.inference import check_recipe, load_run_model, run_cache_dir
    from cxrbench.evaluate.predict import run_thresholds
    from cxrbench.evaluate.saliency import overlay_on, png_bytes, require_gradcam, saliency_maps

    require_gradcam()
    run_dir = Path(run_dir)
    ps = PredictionSet.from_frame(read_predictions(predictions_path(run_dir, split)),
                                  where=f"{split} predictions of {run_dir}")
    unknown = [f for f in findings or [] if f not in ps.findings]
    if unknown:
        raise InputError(f"finding(s) {', '.join(unknown)} are not predicted", where=str(run_dir),
                         fix=f"findings: {', '.join(ps.findings)}")
    thresholds, _ = run_thresholds(run_dir, ps.findings)
    chosen = select_examples(ps, thresholds or {}, k, findings)
    dev = resolve_device(device)
    model, meta = load_run_model(run_dir, dev)
    ds = CacheDataset(Path(cache_dir) if cache_dir is not None else run_cache_dir(run_dir), split=split)
    check_recipe(meta, ds.recipe, where=str(ds.cache_dir))
    position = pd.Index(ds.image_ids.astype(str))
    tf = BatchTransform(meta["mean"], meta["std"], out_size=int(meta["image_size"])).to(dev).eval()
    pngs: list[bytes] = [b""] * len(chosen)
    for f, rows in chosen.groupby("finding", sort=False):
        cls = list(meta["findings"]).index(f)
        where = position.get_indexer(rows["image_id"])
        if (where < 0).any():
            raise InputError(f"image {rows['image_id'].iloc[int(np.flatnonzero(where < 0)[0])]!r} is not in "
                             f"the cache's {split} split", where=str(ds.cache_dir),
                             fix="give the cache the predictions were made from (cache_dir=...)")
        for start in range(0, len(rows), batch_size):
            part = slice(start, start + batch_size)
            pixels, _ = ds.batch(where[part])
            maps = saliency_maps(model, tf(pixels.to(dev)), [cls], method)[:, 0]
            originals = _originals(ds.cache_dir, rows["image_id"].iloc[part].tolist(), thumb_size, ds.recipe)
            for b, row_pos in enumerate(rows.index[part]):
                base = originals[b]
                if base is None:  # the original is not readable: the cache pixels, upsampled
                    from PIL import Image

                    base = np.asarray(Image.fromarray(pixels[b].numpy()).resize((thumb_size, thumb_size),
                                                                                Image.Resampling.BICUBIC))
                pngs[chosen.index.get_loc(row_pos)] = png_bytes(overlay_on(base, maps[b]))
    chosen["png"] = pngs
    return chosen

"""Predict findings on new image files (PNG, JPEG, DICOM) with a trained run.

Each file goes through exactly the pixels path of the run's cache: :func:`cxrbench.cache.decode.read_image`
then :func:`cxrbench.cache.preprocess.preprocess` with the recipe recorded in ``best.json`` (size, resize
mode, equalization), then the model's resize + normalization. When the run has been evaluated and
the evaluation chose decision thresholds on the validation split, each finding is also called
positive or negative at its threshold (``s >= t``, the metrics module's convention).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from cxrbench.common.errors import InputError, spell
from cxrbench.common.fileio import read_json
from cxrbench.common.layout import metrics_path

THRESHOLD_SPLITS = ("val", "test")


def run_thresholds(run_dir: str | os.PathLike, findings: list[str],
                   ) -> tuple[dict[str, float | None] | None, str | None]:
    """Decision thresholds of the run's evaluation that were *not* chosen on the test set.

    Reads ``eval/val/metrics.json`` (any threshold policy: chosen on the validation split itself),
    then ``eval/test/metrics.json`` when its policy is ``val`` (Youden's J on validation) or
    ``fixed``; a test evaluation with ``--threshold-from test`` (the reference study's optimistic
    protocol) is never used. Returns ``({finding: threshold or None}, description)`` or
    ``(None, None)`` when the run has no usable evaluation. The format is the one
    :mod:`cxrbench.evaluate.scoring` writes: ``per_finding.<f>.threshold`` and ``threshold_policy.source``.
    """
    for split in THRESHOLD_SPLITS:
        path = metrics_path(run_dir, split)
        if not path.is_file():
            continue
        metrics = read_json(path)
        per = metrics.get("per_finding") if isinstance(metrics, dict) else None
        policy = metrics.get("threshold_policy") if isinstance(metrics, dict) else None
        source = policy.get("source") if isinstance(policy, dict) else None
        if not isinstance(per, dict) or source is None:
            raise InputError("metrics.json lacks per_finding thresholds or threshold_policy", where=str(path),
                             fix="re-run `cxrbench evaluate` on this run")
        if split == "test" and source == "test":
            continue  # chosen on the test set itself: not a threshold to deploy
        missing = [f for f in findings if f not in per]
        if missing:
            raise InputError(f"metrics.json has no entry for finding(s) {', '.join(missing)}",
                             where=str(path), fix="re-run `cxrbench evaluate` on this run")
        out = {f: (None if per[f].get("threshold") is None else float(per[f]["threshold"])) for f in findings}
        how = "fixed" if source == "fixed" else "Youden's J on the validation split"
        return out, f"{how} ({path})"
    return None, None


def load_pixels(paths: list[Path], recipe: dict[str, Any]) -> np.ndarray:
    """uint8 ``[N, S, S]``: each file decoded and preprocessed with the cache ``recipe``."""
    from cxrbench.cache.decode import read_image
    from cxrbench.cache.preprocess import preprocess

    size, resize, equalize = int(recipe["size"]), str(recipe["resize"]), bool(recipe["equalize"])
    resample = str(recipe.get("resample", "pil-box"))  # runs trained before it was recorded: legacy
    return np.stack([preprocess(read_image(p), size=size, resize=resize, equalize=equalize, resample=resample)
                     for p in paths])


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".dic")


def expand_inputs(items: list[str | os.PathLike]) -> list[Path]:
    """Files, folders (every image file inside, recursively, sorted) and glob patterns -> files."""
    import glob

    out: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*")
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise InputError("the folder holds no image file", where=text,
                                 fix=f"give PNG/JPEG/DICOM files ({', '.join(IMAGE_SUFFIXES)}) "
                                     "or another folder")
            out += found
        elif any(c in text for c in "*?["):
            found = sorted(Path(p) for p in glob.glob(os.path.expanduser(text), recursive=True)
                           if Path(p).is_file())
            if not found:
                raise InputError("the pattern matches no file", where=text, fix="check the pattern (quote it "
                                 "so the shell does not expand it first)")
            out += found
        else:
            out.append(path)
    return out


def predict_files(run_dir: str | os.PathLike, files: list[str | os.PathLike], batch_size: int = 16,
                  device: str | torch.device | None = None, skip_bad: bool = False,
                  saliency_dir: str | os.PathLike | None = None,
                  saliency_method: str = "gradcam") -> pd.DataFrame:
    """One row per file: ``file``, ``p_<finding>`` (probability) for each finding and, when the run
    has thresholds from :func:`run_thresholds`, ``pred_<finding>`` (``positive``/``negative``, empty
    where the finding has no threshold) and ``threshold_<finding>``.

    ``files`` may hold folders and glob patterns (:func:`expand_inputs`). A file that cannot be read
    stops the batch with its name, or with ``skip_bad`` is left out and listed in
    ``df.attrs["skipped"]`` (``[(file, reason), ...]``). With ``saliency_dir``: one overlay PNG per
    file and finding there (``<stem>_<finding>.png``, the map of
    :func:`cxrbench.evaluate.saliency.saliency_maps` over the model's input) and ``saliency.json``
    listing them; the folder must be new, empty or a previous saliency folder.

    Args:
        run_dir: a run folder (``best.safetensors`` and ``best.json``).
        files: image files (PNG, JPEG, DICOM), folders or glob patterns.
        batch_size: images per forward pass. device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (default:
            automatic).
        skip_bad: leave unreadable files out instead of stopping.
        saliency_dir: write saliency overlays there; saliency_method: ``"gradcam"`` or ``"rollout"``.

    Returns:
        A DataFrame with one row per file: ``file``, ``p_<finding>`` (float64 probabilities in
        [0, 1]), and with validation thresholds ``pred_<finding>``, ``threshold_<finding>``.

    Example::

        df = cxrbench.predict_files("runs/nih", ["scan.dcm", "scans/", "more/*.png"], device="cpu")
    """
    from cxrbench.data.dataset import ArrayDataset
    from cxrbench.evaluate.inference import run_scorer

    paths = expand_inputs(list(files))
    if not paths:
        raise InputError("no image files given", where="cxrbench predict",
                         fix="pass PNG/JPEG/DICOM files, folders or glob patterns")
    scorer = run_scorer(run_dir, device)
    meta = scorer.meta
    findings = list(meta["findings"])
    recipe = meta.get("recipe")
    if not recipe:
        raise InputError("best.json has no cache recipe", where=str(run_dir),
                         fix="re-train the run with this version of cxrbench")
    thresholds, _ = run_thresholds(run_dir, findings)
    if saliency_dir is not None:
        _check_saliency(scorer, run_dir, saliency_method)
    kept, pixels, skipped = _read_files(paths, recipe, skip_bad)
    # one scoring path: the run's method in the run's precision, stored as float32 like the evaluation's
    # predictions, on which the thresholds were chosen
    p = scorer.score(ArrayDataset(np.stack(pixels)), batch_size=batch_size).astype(np.float32)
    if saliency_dir is not None:
        _saliency(scorer, pixels, kept, findings, p, run_dir, saliency_dir, saliency_method, batch_size)
    cols: dict[str, Any] = {"file": [str(f) for f in kept]}
    cols.update({f"p_{f}": p[:, k] for k, f in enumerate(findings)})
    if thresholds is not None:
        for k, f in enumerate(findings):
            t = thresholds[f]  # None: no threshold (finding not estimable on validation)
            cols[f"pred_{f}"] = "" if t is None else np.where(p[:, k] >= t, "positive", "negative")
        cols.update({f"threshold_{f}": np.nan if thresholds[f] is None else thresholds[f] for f in findings})
    df = pd.DataFrame(cols)
    df.attrs["skipped"] = skipped
    return df


def _check_saliency(scorer, run_dir, method: str) -> None:
    """InputError unless saliency maps can be drawn for this run with this method."""
    from cxrbench.common.validation import check_choice
    from cxrbench.evaluate.saliency import SALIENCY_METHODS, require_gradcam

    check_choice("--saliency-method", method, SALIENCY_METHODS)
    if scorer.classifier is None:
        from cxrbench.train.methods import method_of

        raise InputError(f"{method_of(scorer.meta).no_classifier()}; saliency maps need one",
                         where=str(run_dir),
                         fix=f"leave out {spell('--saliency', 'saliency_dir=')}, or use a linear/full/lora "
                             "run")
    require_gradcam()  # the overlays use the package's colour map, rollout included


def _read_files(paths: list[Path], recipe: dict[str, Any], skip_bad: bool,
                ) -> tuple[list[Path], list[np.ndarray], list[tuple[str, str]]]:
    """``(files read, their uint8 pixels, (file, reason) of those left out)``: the cache's pixel path."""
    kept, pixels, skipped = [], [], []
    for path in paths:
        try:
            pixels.append(load_pixels([path], recipe)[0])
            kept.append(path)
        except InputError as e:
            if not skip_bad:
                raise InputError(e.what, where=e.where or str(path),
                                 fix=f"check the file, or pass {spell('--skip-bad')} to leave "
                                     "unreadable files out"
                                 ) from None
            skipped.append((str(path), e.what))
    if not kept:
        raise InputError(f"none of the {len(paths)} file(s) could be read (the first: {skipped[0][0]}: "
                         f"{skipped[0][1]})", where="cxrbench predict", fix="check the files")
    return kept, pixels, skipped


def _saliency(scorer, pixels: list[np.ndarray], kept: list[Path], findings: list[str], probs: np.ndarray,
              run_dir, saliency_dir, method: str, batch_size: int) -> None:
    """Overlay PNGs of every file and finding in ``saliency_dir`` and its ``saliency.json``."""
    from cxrbench.evaluate.saliency import check_saliency_dir, overlay_names

    names = overlay_names([str(f) for f in kept], findings)
    earlier = check_saliency_dir(saliency_dir, [n for row in names for n in row])
    written: list[dict[str, Any]] = []
    for i in range(0, len(kept), batch_size):
        batch = np.stack(pixels[i:i + batch_size])
        x = scorer.transform(torch.from_numpy(batch).to(scorer.device))
        rows = slice(i, i + batch_size)
        written += _write_overlays(scorer.classifier, x, batch, names[rows], kept[rows], findings,
                                   probs[rows], saliency_dir, method)
    _finish_saliency_dir(saliency_dir, written, earlier, run_dir, method)


def _write_overlays(model, x: torch.Tensor, pixels: np.ndarray, names: list[list[str]],
                    files: list[Path], findings: list[str], probs: np.ndarray, out_dir,
                    method: str) -> list[dict[str, Any]]:
    """Maps of every finding for one batch, written as overlay PNGs (atomically); their manifest rows."""
    from cxrbench.common.fileio import atomic_write_bytes
    from cxrbench.evaluate.saliency import overlay, png_bytes, saliency_maps

    maps = saliency_maps(model, x, list(range(len(findings))), method)
    rows = []
    for b in range(maps.shape[0]):
        for k, finding in enumerate(findings):
            atomic_write_bytes(Path(out_dir) / names[b][k], png_bytes(overlay(pixels[b], maps[b, k])))
            rows.append({"file": str(files[b]), "finding": finding, "overlay": names[b][k],
                         "p": float(probs[b, k])})
    return rows


def _finish_saliency_dir(out_dir, written: list[dict[str, Any]], earlier: list[str], run_dir,
                         method: str) -> None:
    """Write saliency.json and remove overlays of an earlier call that this one did not rewrite."""
    from cxrbench.common.fileio import atomic_write_json
    from cxrbench.common.layout import SALIENCY_MANIFEST
    from cxrbench.common.provenance import provenance
    from cxrbench.evaluate.saliency import SALIENCY_FORMAT

    out = Path(out_dir)
    now = {r["overlay"] for r in written}
    for name in earlier:
        if name not in now and (out / name).is_file():
            (out / name).unlink()
    atomic_write_json(out / SALIENCY_MANIFEST, {"format": SALIENCY_FORMAT, "run": str(run_dir),
                                                "method": method, "files": written,
                                                "provenance": provenance()})

"""Statistics pooled over training seeds, from Contract-4 predictions: arms of several runs.

An **arm** is one initialization trained with S seeds, every run evaluated on the same images:
``{arm: [predictions_df_seed_1, ..., predictions_df_seed_S]}``. :func:`pooled_metrics` gives per arm
and finding the mean over seeds of the AUROC with its two-level (images x seeds) bootstrap CI, the
seed-to-seed SD and the seed-ensemble's AUROC; :func:`compare_arms` the paired comparison of arms in
the table format of :func:`cxrbench.evaluate.compare.compare_predictions` (same pairs, p-values,
Benjamini-Hochberg families) plus ``n_seeds_a/_b`` and ``seed_sd_a/_b``. The statistics are those of
:mod:`cxrbench.stats.seeds`; with one seed per arm every number equals today's one-seed tables.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError, spell
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.compare import (
    COLUMNS,
    FAMILIES,
    FDR_METHODS,
    MEAN_ROW,
    check_same_images,
    comparison_pairs,
    load_run_predictions,
    pair_rows,
    table_from_rows,
)
from cxrbench.evaluate.predictions import PredictionSet
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt
from cxrbench.stats import seeds as sd
from cxrbench.stats.significance import ALTERNATIVES

ArmFrames = Mapping[str, Sequence["pd.DataFrame | PredictionSet"]]

POOLED_COLUMNS: tuple[str, ...] = (
    "arm", "finding", "auroc", "auroc_lo", "auroc_hi", "seed_sd", "n_seeds",
    "ensemble_auroc", "ensemble_lo", "ensemble_hi", "n", "n_positive", "n_negative",
    "n_resamples_used", "n_resamples_excluded", "note", "n_resamples", "seed", "cluster",
)
ARM_COLUMNS: tuple[str, ...] = COLUMNS + ("n_seeds_a", "n_seeds_b", "seed_sd_a", "seed_sd_b")
NO_DELONG = "DeLong not computed for pooled seeds"
SEED_DRAWS = ("PCG64(SeedSequence(seed, spawn_key=(b, 1, stream))).integers(0, S, S) over the arm's "
              "seeds sorted by a hash of their scores; stream from the hashes")


def arm_sets(arm_frames: ArmFrames, findings: list[str] | None = None) -> dict[str, list[PredictionSet]]:
    """Validated prediction sets per arm, every seed's findings in the order of the arm's first run.

    Refused (InputError): no arm, an arm without runs, runs of one arm predicting different findings,
    a requested finding an arm lacks, and any two runs (of any arms) on different images, labels or
    patients (:func:`cxrbench.evaluate.compare.check_same_images`).
    """
    if not arm_frames:
        raise InputError("no arm to evaluate", where="arms", fix="give at least one arm with one run")
    out: dict[str, list[PredictionSet]] = {}
    flat: dict[str, PredictionSet] = {}
    for arm, frames in arm_frames.items():
        arm = str(arm)
        one = isinstance(frames, (pd.DataFrame, PredictionSet))
        if one or len(frames) == 0:
            what = "is one frame, not a list of runs" if one else "has no runs"
            raise InputError(f"arm {arm!r} {what}", where=f"arm {arm!r}",
                             fix="give each arm a list of its seeds' predictions, e.g. {arm: [df_seed0]}")
        sets: list[PredictionSet] = []
        own: list[str] = []  # the findings of the arm's first run, in its order
        for i, df in enumerate(frames):
            label = _label(df, arm, i)
            ps = PredictionSet.from_frame(df, where=label)
            own = own or list(ps.findings)
            if set(ps.findings) != set(own):
                diff = sorted(set(ps.findings) ^ set(own))
                raise InputError(f"runs of arm {arm!r} predict different findings ({', '.join(diff)})",
                                 where=label, fix="put runs trained on the same label set in one arm")
            sets.append(_select(ps, list(findings) if findings is not None else own, label))
            while label in flat:
                label += "'"
            flat[label] = sets[-1]
        out[arm] = sets
    check_same_images(flat)
    return out


def _label(df: pd.DataFrame | PredictionSet, arm: str, i: int) -> str:
    """How a run is named in messages: its run name or file when known, else its place in the arm."""
    if isinstance(df, PredictionSet):
        return df.where if df.where != "predictions" else f"{arm} run {i + 1}"
    attrs = df.attrs or {}
    return str(attrs.get("run") or attrs.get("where") or f"{arm} run {i + 1}")


def _select(ps: PredictionSet, findings: list[str], where: str) -> PredictionSet:
    missing = [f for f in findings if f not in ps.findings]
    if missing:
        raise InputError(f"finding(s) {', '.join(missing)} not in the predictions", where=where,
                         fix=f"available: {', '.join(ps.findings)}")
    if list(findings) == ps.findings:
        return ps
    cols = [ps.column(f) for f in findings]
    return replace(ps, findings=list(findings), labels=ps.labels[:, cols], scores=ps.scores[:, cols])


def _bootstraps(sets: dict[str, list[PredictionSet]], n_resamples: int, seed: int, cluster: str,
                memory_bytes: int, ensemble: bool = True) -> tuple[bs.Resamples, dict[str, sd.ArmBootstrap]]:
    check_choice("--cluster", cluster, bs.CLUSTERS)
    if int(n_resamples) < 1:
        raise InputError(f"bootstrap count {n_resamples} must be at least 1",
                         where=spell("--bootstrap", "n_resamples"),
                         fix=spell("e.g. --bootstrap 1000", "e.g. n_resamples=1000"))
    first = next(iter(sets.values()))[0]
    resamples = first.resamples(int(n_resamples), int(seed), cluster)
    boots = {arm: sd.arm_bootstrap(runs[0].labels, np.stack([r.scores for r in runs]), resamples,
                                   ensemble=ensemble, memory_bytes=memory_bytes)
             for arm, runs in sets.items()}
    return resamples, boots


def _settings(resamples: bs.Resamples, boots: Mapping[str, sd.ArmBootstrap], ci_level: float) -> dict:
    return {"bootstrap": resamples.describe(), "ci_level": ci_level,
            "statistic": "mean over seeds; two-level bootstrap (image resamples shared, seeds drawn per arm)",
            "seed_draws": SEED_DRAWS,
            "arms": {arm: {"n_seeds": b.n_seeds, "stream": b.stream} for arm, b in boots.items()}}


def pooled_metrics(arm_frames: ArmFrames, *, findings: list[str] | None = None, n_resamples: int = 1000,
                   seed: int = 0, cluster: str = "patient", ci_level: float = 0.95,
                   memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> pd.DataFrame:
    """Per arm and finding (plus the ``mean`` row: the macro mean over the findings estimable on the
    full set): the mean over seeds of the AUROC with its two-level bootstrap percentile CI, the seed
    SD (ddof=1; NaN with one seed), and the seed-ensemble's AUROC with its image-bootstrap CI.

    Columns :data:`POOLED_COLUMNS`; ``df.attrs`` holds the settings. With one seed, ``auroc`` and its
    CI equal ``evaluate_predictions``'s AUROC value and CI for the same seed, count and cluster.
    """
    if not 0.0 < ci_level < 1.0:
        raise InputError(f"CI level {ci_level} is not in (0, 1)", where="ci_level", fix="e.g. 0.95")
    sets = arm_sets(arm_frames, findings)
    resamples, boots = _bootstraps(sets, n_resamples, seed, cluster, memory_bytes)
    rows: list[dict[str, Any]] = []
    for arm, runs in sets.items():
        ab, ps = boots[arm], runs[0]
        pooled, cols = ab.pooled, []
        if ab.ensemble_resampled is None or ab.ensemble_point is None:
            raise RuntimeError("the seed-ensemble bootstrap was not computed")
        ensemble, ensemble_point = ab.ensemble_resampled, ab.ensemble_point
        for j, f in enumerate(ps.findings):
            y = ps.labels[:, j]
            row: dict[str, Any] = {"arm": arm, "finding": f, "n_seeds": ab.n_seeds, **mt.class_counts(y)}
            row.pop("n_unknown")
            why = mt.not_estimable_reason(y)
            if why:
                rows.append({**row, "note": f"not estimable: {why}"})
                continue
            cols.append(j)
            row.update(_summary(pooled[:, j], ab.pooled_point[j], ensemble[:, j], ensemble_point[j],
                                ci_level))
            row["seed_sd"] = float(np.asarray(ab.seed_sd())[j])
            if row["n_resamples_excluded"]:
                row["note"] = f"{row['n_resamples_excluded']} resample(s) with one class excluded"
            rows.append(row)
        mean: dict[str, Any] = {"arm": arm, "finding": MEAN_ROW, "n_seeds": ab.n_seeds,
                                "note": f"macro mean over {len(cols)} finding(s)"}
        if cols:
            point, values = ab.macro(cols)
            mean.update(_summary(values, point, ensemble[:, cols].mean(axis=1),
                                 float(np.mean(ensemble_point[cols])), ci_level))
            mean["seed_sd"] = ab.seed_sd(cols)
        else:
            mean["note"] = "no estimable finding"
        rows.append(mean)
    out = pd.DataFrame(rows)
    for col in POOLED_COLUMNS:
        if col not in out.columns:
            out[col] = np.nan
    out["n_resamples"], out["seed"], out["cluster"] = resamples.n_resamples, resamples.seed, cluster
    out["note"] = out["note"].astype(object).where(out["note"].notna(), "")
    out = out[list(POOLED_COLUMNS)]
    out.attrs.update(_settings(resamples, boots, ci_level))
    return out


def _summary(values: np.ndarray, point: float, ens_values: np.ndarray, ens_point: float,
             ci_level: float) -> dict[str, Any]:
    s = bs.summarize(values, point, ci_level)
    e = bs.summarize(ens_values, ens_point, ci_level)
    return {"auroc": s["value"], "auroc_lo": s["ci_low"], "auroc_hi": s["ci_high"],
            "ensemble_auroc": e["value"], "ensemble_lo": e["ci_low"], "ensemble_hi": e["ci_high"],
            "n_resamples_used": s["n_resamples_used"], "n_resamples_excluded": s["n_resamples_excluded"]}


def compare_arms(arm_frames: ArmFrames, reference: str | None = None, *, findings: list[str] | None = None,
                 n_resamples: int = 1000, seed: int = 0, cluster: str = "patient",
                 alternative: str = "two-sided", family: str = "pair", ci_level: float = 0.95,
                 fdr: str = "bh", memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> pd.DataFrame:
    """Paired comparison of arms: the difference of the pooled means, its two-level bootstrap CI and p.

    Pairs, orientation (``diff = A - B``), the p-value definition, ``alternative``, the BH
    ``family`` and ``fdr`` are those of :func:`~cxrbench.evaluate.compare.compare_predictions`; the image
    resamples are shared by every arm (that pairs them) and the seeds are drawn per arm. DeLong is
    computed only when both arms have one seed (then every column equals ``compare_predictions``).
    Columns :data:`ARM_COLUMNS`.
    """
    check_choice("--alternative", alternative, ALTERNATIVES)
    check_choice("--family", family, FAMILIES)
    check_choice("--fdr", fdr, FDR_METHODS)
    names = [str(n) for n in arm_frames]
    if len(names) < 2:
        raise InputError(f"need at least two arms to compare, got {len(names)}", where="compare",
                         fix="give two or more runs or arms")
    sets = arm_sets(arm_frames, findings)
    pairs = comparison_pairs(names, reference)
    resamples, boots = _bootstraps(sets, n_resamples, seed, cluster, memory_bytes, ensemble=False)
    pooled = {arm: b.pooled for arm, b in boots.items()}
    rows: list[dict[str, Any]] = []
    for a, b in pairs:
        ba, bb = boots[a], boots[b]
        sa, sb = sets[a][0], sets[b][0]
        single = ba.n_seeds == 1 and bb.n_seeds == 1
        pair = pair_rows(a, b, sa, sb, pooled[a], pooled[b], findings=findings, alternative=alternative,
                         ci_level=ci_level, points=None if single else (ba.pooled_point, bb.pooled_point),
                         no_delong=NO_DELONG, seed_var=_seed_variance(ba, bb))
        used = [r["finding"] for r in pair if r["finding"] != MEAN_ROW and "auroc_a" in r]
        for r in pair:
            r["n_seeds_a"], r["n_seeds_b"] = ba.n_seeds, bb.n_seeds
            if r["finding"] == MEAN_ROW:
                if used:
                    r["seed_sd_a"] = ba.seed_sd([sa.column(f) for f in used])
                    r["seed_sd_b"] = bb.seed_sd([sb.column(f) for f in used])
            elif "auroc_a" in r:
                r["seed_sd_a"] = float(np.asarray(ba.seed_sd())[sa.column(r["finding"])])
                r["seed_sd_b"] = float(np.asarray(bb.seed_sd())[sb.column(r["finding"])])
        rows += pair
    return table_from_rows(rows, ARM_COLUMNS, alternative=alternative, family=family, resamples=resamples,
                           attrs={"reference": reference, "pairs": [list(p) for p in pairs],
                                  **_settings(resamples, boots, ci_level)}, fdr=fdr)


def _seed_variance(ba: sd.ArmBootstrap, bb: sd.ArmBootstrap) -> Any:
    """``(side, columns) -> sd^2 / S`` of that arm's mean over the columns: the seed variance a pooled
    arm's mean carries beside the test sampling (0 with one seed)."""
    def var(side: int, cols: list[int]) -> float:
        arm = ba if side == 0 else bb
        if arm.n_seeds < 2:
            return 0.0
        return float(arm.seed_sd(cols)) ** 2 / arm.n_seeds
    return var


def pooled_comparison(arm_frames: ArmFrames, reference: str | None = None, *,
                      findings: list[str] | None = None,
                      n_resamples: int = 1000, seed: int = 0, cluster: str = "patient",
                      alternative: str = "two-sided", family: str = "pair", ci_level: float = 0.95,
                      fdr: str = "bh", memory_bytes: int = bs.DEFAULT_MEMORY_BYTES,
                      ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """``(metrics, comparisons)``: every arm pooled over its seeds (:func:`pooled_metrics`) and, with two
    or more arms, their paired comparisons (:func:`compare_arms`; None with one arm). What a study's
    ``pooled.json`` and ``cxrbench compare --arm ... --out FILE.json`` hold (written by
    :func:`cxrbench.evaluate.compare.write_comparison`)."""
    settings: dict[str, Any] = {"findings": findings, "n_resamples": n_resamples, "seed": seed,
                                "cluster": cluster, "ci_level": ci_level, "memory_bytes": memory_bytes}
    metrics = pooled_metrics(arm_frames, **settings)
    table = None
    if len(arm_frames) >= 2:
        table = compare_arms(arm_frames, reference, alternative=alternative, family=family, fdr=fdr,
                             **settings)
    return metrics, table


def ensemble_frame(frames: Sequence[pd.DataFrame | PredictionSet], where: str = "ensemble") -> pd.DataFrame:
    """The seed-ensemble of an arm as a Contract-4 frame: every run's scores averaged per image.

    Compare ensembles with :func:`~cxrbench.evaluate.compare.compare_predictions` (one-seed tests).
    """
    runs = arm_sets({where: frames})[where]
    ps = runs[0]
    mean = sd.ensemble_scores(np.stack([r.scores for r in runs]))
    out = pd.DataFrame({"image_id": ps.image_ids, "patient_id": ps.patient_ids})
    for j, f in enumerate(ps.findings):
        out[f"p_{f}"] = mean[:, j]
        out[f"y_{f}"] = ps.labels[:, j]
    return out


def load_arm_predictions(arms: Mapping[str, Sequence[str | os.PathLike]], split: str = "test"
                         ) -> tuple[dict[str, list[pd.DataFrame]], dict[str, dict | None], dict[str, str]]:
    """Predictions of each arm's runs (``RUN/eval/SPLIT/predictions.parquet`` or a .parquet path).

    Returns ``{arm: [frames]}``, the metrics.json content of every run (None when absent), and
    ``{run display name: path}``. A run given twice, or to two arms, is refused.
    """
    owner: dict[Path, str] = {}
    for arm, runs in arms.items():
        if not runs:
            raise InputError(f"arm {arm!r} has no runs", where=f"--arm {arm}",
                             fix=f"give its runs: --arm {arm}=RUN1,RUN2")
        for run in runs:
            key = Path(run).resolve()
            if key in owner:
                where = f"arm {arm!r}" if owner[key] == arm else f"arms {owner[key]!r} and {arm!r}"
                raise InputError(f"run {str(run)!r} is given twice ({where})", where=f"--arm {arm}",
                                 fix="give each run once, to one arm")
            owner[key] = arm
    flat = [run for runs in arms.values() for run in runs]
    preds, stored = load_run_predictions(flat, split)
    names = list(preds)
    out: dict[str, list[pd.DataFrame]] = {}
    i = 0
    for arm, runs in arms.items():
        out[arm] = []
        for _ in runs:
            preds[names[i]].attrs["run"] = names[i]
            out[arm].append(preds[names[i]])
            i += 1
    return out, stored, {name: str(run) for name, run in zip(names, flat, strict=True)}

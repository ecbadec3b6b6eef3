"""Comparison of runs evaluated on the same images: paired bootstrap and DeLong per finding, BH-FDR.

:func:`compare_predictions` is the engine (the study runner and the report call it);
:func:`load_run_predictions` and :func:`resample_settings` read run folders for ``cxrbench compare``;
:func:`write_comparison` / :func:`read_comparison` are the one comparison file format (``.json``
with settings and rows, or ``.csv`` rows), written by ``cxrbench compare --out`` and the study.

Pairs: every pair of models (``A`` before ``B`` in the given order), or each model versus a
``reference`` (then ``B`` is the reference). ``diff = AUROC(A) - AUROC(B)``.
Family for Benjamini-Hochberg: ``"pair"`` (default) = the per-finding tests of one pair of models;
``"all"`` = every per-finding test of every pair. The macro-mean row is one pre-specified test and
is not part of the family (its ``p_adjusted`` is empty).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError, spell
from cxrbench.common.validation import check_choice
from cxrbench.evaluate.predictions import (
    METRICS_FILE,
    PREDICTIONS_FILE,
    PredictionSet,
    eval_dir,
    read_predictions,
)
from cxrbench.evaluate.run_eval import read_metrics
from cxrbench.stats import bootstrap as bs
from cxrbench.stats import metrics as mt
from cxrbench.stats.significance import ALTERNATIVES, benjamini_hochberg, delong_test, paired_bootstrap

FAMILIES: tuple[str, ...] = ("pair", "all")
FDR_METHODS: tuple[str, ...] = ("bh", "none")  # Benjamini-Hochberg, or the raw p-values
MEAN_ROW = "mean"
COLUMNS: tuple[str, ...] = (
    "model_a", "model_b", "finding", "auroc_a", "auroc_b", "diff", "diff_lo", "diff_hi",
    "p_bootstrap", "p_delong", "p_adjusted", "p_delong_adjusted", "diff_mean", "diff_std",
    "z_delong", "delong_lo", "delong_hi", "n", "n_positive", "n_negative",
    "n_resamples_used", "n_resamples_excluded", "note", "alternative", "family",
    "n_resamples", "seed", "cluster", "auroc_corr", "min_detectable_diff",
)
POWER_ALPHA = 0.05  # the level the minimum detectable difference is stated at (80% power)


def check_same_images(sets: Mapping[str, PredictionSet]) -> None:
    """Refuse prediction sets made on different images, or with different labels or patients."""
    names = list(sets)
    first = sets[names[0]]
    for name in names[1:]:
        other = sets[name]
        if not np.array_equal(first.image_ids, other.image_ids):
            a, b = set(first.image_ids), set(other.image_ids)
            only_a, only_b = sorted(a - b), sorted(b - a)
            detail = (f"{len(only_a)} image(s) only in {names[0]!r} (e.g. {', '.join(only_a[:3])}); "
                      f"{len(only_b)} only in {name!r} (e.g. {', '.join(only_b[:3])})")
            raise InputError(f"runs were evaluated on different images: {detail}",
                             where=f"{names[0]} vs {name}",
                             fix="evaluate every run on the same split of the same index/cache")
        if not np.array_equal(first.patient_ids, other.patient_ids):
            i = int(np.flatnonzero(first.patient_ids != other.patient_ids)[0])
            raise InputError(f"image {str(first.image_ids[i])!r} has patient {str(first.patient_ids[i])!r} "
                             f"in {names[0]!r} but {str(other.patient_ids[i])!r} in {name!r}",
                             where=f"{names[0]} vs {name}", fix="evaluate every run on the same index")
        for f in first.findings:
            if f not in other.findings:
                continue
            ya, yb = first.labels[:, first.column(f)], other.labels[:, other.column(f)]
            differ = ~((ya == yb) | (np.isnan(ya) & np.isnan(yb)))
            if differ.any():
                i = int(np.flatnonzero(differ)[0])
                raise InputError(f"labels of finding {f!r} differ at image {str(first.image_ids[i])!r} "
                                 f"({float(ya[i])} vs {float(yb[i])}; {int(differ.sum())} image(s) in total)",
                                 where=f"{names[0]} vs {name}",
                                 fix="evaluate every run with the same label policy (index/cache)")


def comparison_pairs(names: list[str], reference: str | None) -> list[tuple[str, str]]:
    if reference is None:
        return [(names[i], names[j]) for i in range(len(names)) for j in range(i + 1, len(names))]
    if reference not in names:
        check_choice("--reference", reference, names)
    return [(name, reference) for name in names if name != reference]


def compare_predictions(preds: Mapping[str, pd.DataFrame | PredictionSet], reference: str | None = None, *,
                        findings: list[str] | None = None, n_resamples: int = 1000, seed: int = 0,
                        cluster: str = "patient", alternative: str = "two-sided", family: str = "pair",
                        ci_level: float = 0.95, fdr: str = "bh",
                        memory_bytes: int = bs.DEFAULT_MEMORY_BYTES) -> pd.DataFrame:
    """Paired comparison of the AUROCs of several models' predictions on the same images.

    ``preds``: model name -> Contract-4 predictions frame. One row per (pair, finding) plus a
    ``mean`` row per pair (macro AUROC over the pair's common estimable findings), with the columns
    of :data:`COLUMNS`. Resamples follow (seed, n_resamples, cluster) exactly as in ``evaluate``, so
    the per-model numbers agree with each run's metrics.json. ``df.attrs`` holds the settings.
    ``fdr``: ``bh`` (Benjamini-Hochberg within each ``family``) or ``none`` (the adjusted columns repeat
    the raw p-values).

    Args:
        preds: model name -> predictions (:func:`~cxrbench.evaluate.outputs.load_predictions`).
        reference: compare every model with this one; None: every pair.
        findings: only these findings (default: the shared ones).
        n_resamples, seed, cluster: the paired bootstrap (count, seed, ``"patient"``/``"image"``).
        alternative: ``"two-sided"`` or ``"greater"`` (model beats the reference).
        family: ``"pair"`` (BH within each pair's findings) or ``"all"``.
        ci_level: confidence level of the differences' intervals, in (0, 1).
        memory_bytes: bound of the bootstrap's working memory, bytes.

    Returns:
        One row per pair and finding (``model_a``, ``model_b``, ``finding``, AUROCs, ``diff`` with
        its CI, DeLong and bootstrap p-values, adjusted p-values).

    Example::

        runs = {"dinov2": "runs/nih-dinov2", "random": "runs/nih-random"}
        preds = {k: cxrbench.load_predictions(v) for k, v in runs.items()}
        cxrbench.compare_predictions(preds, reference="random", n_resamples=1000)
    """
    check_choice("--alternative", alternative, ALTERNATIVES)
    check_choice("--family", family, FAMILIES)
    check_choice("--fdr", fdr, FDR_METHODS)
    check_choice("--cluster", cluster, bs.CLUSTERS)
    if int(n_resamples) < 1:
        raise InputError(f"bootstrap count {n_resamples} must be at least 1",
                         where=spell("--bootstrap", "n_resamples"),
                         fix=spell("e.g. --bootstrap 1000", "e.g. n_resamples=1000"))
    names = [str(n) for n in preds]
    if len(names) < 2:
        raise InputError(f"need at least two runs to compare, got {len(names)}", where="compare",
                         fix="give two or more runs")
    sets = {str(name): PredictionSet.from_frame(df, where=_where(df, name)) for name, df in preds.items()}
    if findings is not None:
        for name, ps in sets.items():
            missing = [f for f in findings if f not in ps.findings]
            if missing:
                raise InputError(f"finding(s) {', '.join(missing)} not in the predictions", where=name,
                                 fix=f"available: {', '.join(ps.findings)}")
    check_same_images(sets)
    pairs = comparison_pairs(names, reference)
    resamples = sets[names[0]].resamples(int(n_resamples), int(seed), cluster)
    boot = {name: bs.bootstrap_auroc(ps.labels, ps.scores, resamples, memory_bytes=memory_bytes)
            for name, ps in sets.items() if any(name in p for p in pairs)}
    rows: list[dict[str, Any]] = []
    for a, b in pairs:
        rows += pair_rows(a, b, sets[a], sets[b], boot[a], boot[b], findings=findings,
                          alternative=alternative, ci_level=ci_level)
    return table_from_rows(rows, COLUMNS, alternative=alternative, family=family, resamples=resamples,
                           attrs={"reference": reference, "pairs": [list(p) for p in pairs],
                                  "ci_level": ci_level}, fdr=fdr)


def pair_rows(a: str, b: str, sa: PredictionSet, sb: PredictionSet, boot_a: np.ndarray,
              boot_b: np.ndarray, *, findings: list[str] | None = None, alternative: str = "two-sided",
              ci_level: float = 0.95, points: tuple[np.ndarray, np.ndarray] | None = None,
              no_delong: str = "", seed_var: Callable[[int, list[int]], float] | None = None,
              ) -> list[dict[str, Any]]:
    """The rows of one pair (A = ``a``, B = ``b``): one per common finding plus the ``mean`` row.

    ``boot_a`` (B, K_a) and ``boot_b`` (B, K_b): each side's AUROC on the shared resamples, in the
    order of ``sa.findings`` / ``sb.findings``. ``points=None``: the point AUROCs and DeLong's test
    come from the scores of ``sa``/``sb`` (one run per side); otherwise ``points`` = (K_a,), (K_b,)
    point AUROCs and DeLong is left empty with the note ``no_delong`` (e.g. pooled seeds).

    Every row also gets the power columns (:func:`add_power`): ``auroc_corr``, the correlation of the two
    AUROCs over the shared resamples, and ``min_detectable_diff``, the smallest difference the paired
    test detects with 80% power at the 5% level on these positives and negatives (``seed_var(side,
    columns)``: the seed variance of side 0 = A / 1 = B's mean over those columns, pooled seeds).
    """
    common = [f for f in sa.findings if f in sb.findings and (findings is None or f in findings)]
    if not common:
        raise InputError(f"runs {a!r} and {b!r} share no finding", where="compare",
                         fix="compare runs trained on overlapping label sets")
    rows: list[dict[str, Any]] = []
    used_a, used_b = [], []
    for f in common:
        ia, ib = sa.column(f), sb.column(f)
        y = sa.labels[:, ia]
        row: dict[str, Any] = {"model_a": a, "model_b": b, "finding": f, **mt.class_counts(y)}
        row.pop("n_unknown")
        why = mt.not_estimable_reason(y)
        if why:
            row["note"] = f"not estimable: {why}"
            rows.append(row)
            continue
        notes = []
        if points is None:
            dl = delong_test(y, sa.scores[:, ia], sb.scores[:, ib], alternative, ci_level)
            pa, pb_ = dl["auroc_a"], dl["auroc_b"]
            row.update({"p_delong": dl["p_delong"], "z_delong": dl["z"], "delong_lo": dl["delong_lo"],
                        "delong_hi": dl["delong_hi"]})
        else:
            pa, pb_ = float(points[0][ia]), float(points[1][ib])
            notes.append(no_delong)
        pb = paired_bootstrap(boot_a[:, ia], boot_b[:, ib], pa, pb_, alternative, ci_level)
        row.update({"auroc_a": pa, "auroc_b": pb_, **pb})
        if pb["n_resamples_excluded"]:
            notes.insert(0, f"{pb['n_resamples_excluded']} resample(s) with one class excluded")
        if any(notes):
            row["note"] = "; ".join(n for n in notes if n)
        rows.append(row)
        used_a.append(ia)
        used_b.append(ib)
    rows.append(_mean_row(a, b, rows, boot_a[:, used_a], boot_b[:, used_b], alternative, ci_level))
    add_power(rows, boot_a, boot_b, sa, sb, alternative, seed_var)
    return rows


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return float("nan")
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


def add_power(rows: list[dict[str, Any]], boot_a: np.ndarray, boot_b: np.ndarray, sa: PredictionSet,
              sb: PredictionSet, alternative: str = "two-sided",
              seed_var: Callable[[int, list[int]], float] | None = None) -> None:
    """Set ``auroc_corr`` and ``min_detectable_diff`` (:func:`cxrbench.stats.power.min_detectable_difference`,
    binormal variances, the observed correlation of the paired AUROCs) on the rows of one pair; the
    mean row uses the findings' correlation matrix of B's resampled AUROCs."""
    from cxrbench.stats.power import min_detectable_difference

    def extra(ia: list[int], ib: list[int]) -> tuple[float, float]:
        if seed_var is None:
            return 0.0, 0.0
        va, vb = seed_var(0, ia), seed_var(1, ib)
        return (va if np.isfinite(va) else 0.0, vb if np.isfinite(vb) else 0.0)

    used = [r for r in rows if r["finding"] != MEAN_ROW and "auroc_a" in r]
    kw: dict[str, Any] = {"alpha": POWER_ALPHA, "alternative": alternative}
    for r in used:
        ja, jb = sa.column(r["finding"]), sb.column(r["finding"])
        r["auroc_corr"] = _corr(boot_a[:, ja], boot_b[:, jb])
        r["min_detectable_diff"] = min_detectable_difference(
            r["auroc_b"], r["n_positive"], r["n_negative"], r["auroc_corr"], extra_var=extra([ja], [jb]),
            **kw)
    mean = next((r for r in rows if r["finding"] == MEAN_ROW and "auroc_a" in r), None)
    if mean is None or not used:
        return
    ia = [sa.column(r["finding"]) for r in used]
    ib = [sb.column(r["finding"]) for r in used]
    mean["auroc_corr"] = _corr(boot_a[:, ia].mean(axis=1), boot_b[:, ib].mean(axis=1))
    cols = boot_b[:, ib]
    cols = cols[np.all(np.isfinite(cols), axis=1)]
    cross = np.corrcoef(cols, rowvar=False) if len(ib) > 1 and len(cols) > 2 else None
    if cross is not None and not np.all(np.isfinite(cross)):
        cross = None
    mean["min_detectable_diff"] = min_detectable_difference(
        [r["auroc_b"] for r in used], [r["n_positive"] for r in used], [r["n_negative"] for r in used],
        mean["auroc_corr"], cross=cross, extra_var=extra(ia, ib), **kw)


def table_from_rows(rows: list[dict[str, Any]], columns: tuple[str, ...], *, alternative: str, family: str,
                    resamples: bs.Resamples, attrs: dict[str, Any], fdr: str = "bh") -> pd.DataFrame:
    """The comparison table: ``columns`` in order, settings columns, BH within each family (or, with
    ``fdr="none"``, the raw p-values as the adjusted ones), attrs."""
    out = pd.DataFrame(rows)
    for col in columns:
        if col not in out.columns:
            out[col] = np.nan
    out["alternative"], out["family"] = alternative, family
    out["n_resamples"], out["seed"], out["cluster"] = resamples.n_resamples, resamples.seed, resamples.cluster
    out["note"] = out["note"].astype(object).where(out["note"].notna(), "")
    _adjust(out, family, fdr)
    out = out[list(columns)]
    out.attrs.update({"family": family, "alternative": alternative, "fdr": fdr, **attrs,
                      "bootstrap": resamples.describe()})
    return out


def _mean_row(a: str, b: str, finding_rows: list[dict], boot_a: np.ndarray, boot_b: np.ndarray,
              alternative: str, ci_level: float) -> dict[str, Any]:
    """Macro-mean AUROC over the estimable common findings; a resample where any is undefined is excluded."""
    ok = [r for r in finding_rows if "auroc_a" in r]
    row: dict[str, Any] = {"model_a": a, "model_b": b, "finding": MEAN_ROW,
                           "note": f"macro mean over {len(ok)} finding(s); DeLong not computed for the mean"}
    if not ok:
        row["note"] = "no estimable finding"
        return row
    pa = float(np.mean([r["auroc_a"] for r in ok]))
    pb_ = float(np.mean([r["auroc_b"] for r in ok]))
    row.update({"auroc_a": pa, "auroc_b": pb_,
                **paired_bootstrap(boot_a.mean(axis=1), boot_b.mean(axis=1), pa, pb_, alternative, ci_level)})
    return row


def _adjust(out: pd.DataFrame, family: str, fdr: str = "bh") -> None:
    """Benjamini-Hochberg over each family of per-finding tests (the mean rows stay unadjusted); with
    ``fdr="none"`` every row's adjusted p-values are its raw ones."""
    if fdr == "none":
        out["p_adjusted"] = out["p_bootstrap"]
        out["p_delong_adjusted"] = out["p_delong"]
        return
    out["p_adjusted"] = np.nan
    out["p_delong_adjusted"] = np.nan
    tests = out["finding"] != MEAN_ROW
    groups = [tests] if family == "all" else [
        tests & (out["model_a"] == a) & (out["model_b"] == b)
        for a, b in out.loc[tests, ["model_a", "model_b"]].drop_duplicates().itertuples(index=False)]
    for mask in groups:
        for raw, adj in (("p_bootstrap", "p_adjusted"), ("p_delong", "p_delong_adjusted")):
            out.loc[mask, adj] = benjamini_hochberg(out.loc[mask, raw].to_numpy(dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# run folders


def predictions_path(run: str | os.PathLike, split: str) -> Path:
    """``RUN/eval/SPLIT/predictions.parquet``, or ``run`` itself when it is a Parquet file."""
    run = Path(run)
    if run.suffix == ".parquet":
        return run
    return eval_dir(run, split) / PREDICTIONS_FILE


def run_names(runs: list[str | os.PathLike]) -> list[str]:
    """Short unique display names: the folder name, extended with parents until unique."""
    paths = [Path(r).resolve() for r in runs]
    if len(set(paths)) != len(paths):
        dup = next(str(r) for r, p in zip(runs, paths, strict=True) if paths.count(p) > 1)
        raise InputError(f"run {dup!r} is given twice", where="compare", fix="list each run once")
    stems = [p.parent.parent.parent if p.suffix == ".parquet" and p.parent.parent.name == "eval" else p
             for p in paths]
    depth = 1
    while True:
        names = ["/".join(p.parts[-depth:]) for p in stems]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def load_run_predictions(runs: list[str | os.PathLike], split: str = "test"
                         ) -> tuple[dict[str, pd.DataFrame], dict[str, dict | None]]:
    """Predictions frames and metrics.json contents (None when absent) of each run, by display name."""
    names = run_names(runs)
    preds: dict[str, pd.DataFrame] = {}
    stored: dict[str, dict | None] = {}
    for name, run in zip(names, runs, strict=True):
        path = predictions_path(run, split)
        df = read_predictions(path)
        df.attrs["where"] = str(path)
        preds[name] = df
        metrics_path = path.parent / METRICS_FILE
        stored[name] = read_metrics(metrics_path) if metrics_path.is_file() else None
    return preds, stored


def resample_settings(stored: Mapping[str, dict | None], seed: int | None = None,
                      n_resamples: int | None = None, cluster: str | None = None) -> dict[str, Any]:
    """Bootstrap seed, count and cluster: the command-line value, else the one stored with every
    evaluation (they must agree), else the defaults of ``evaluate`` (seed 0, 1000, patient)."""
    given = {"seed": seed, "n_resamples": n_resamples, "cluster": cluster}
    defaults = {"seed": 0, "n_resamples": 1000, "cluster": "patient"}
    flags = {"seed": spell("--seed", "seed="), "n_resamples": spell("--bootstrap", "n_resamples="),
             "cluster": spell("--cluster", "cluster=")}
    out: dict[str, Any] = {}
    for key in given:
        if given[key] is not None:
            out[key] = given[key]
            continue
        values = {name: (m.get("bootstrap") or {}).get(key) for name, m in stored.items() if m}
        values = {k: v for k, v in values.items() if v is not None}
        if len(set(values.values())) > 1:
            listing = ", ".join(f"{k}: {v}" for k, v in values.items())
            raise InputError(f"the runs were evaluated with different bootstrap {key} ({listing})",
                             where="compare", fix=f"choose one with {flags[key]}")
        out[key] = next(iter(values.values())) if values else defaults[key]
    return out


def _where(df: pd.DataFrame | PredictionSet, name: str) -> str:
    attrs = getattr(df, "attrs", None) or {}
    return str(attrs.get("where") or f"predictions of {name}")


COMPARISON_FORMAT = "cxrbench.compare/1"


def write_comparison(table: pd.DataFrame | None, out: str | os.PathLike, *,
                     runs: Mapping[str, Any] | None = None, context: Mapping[str, Any] | None = None,
                     metrics: pd.DataFrame | None = None) -> None:
    """Write a comparison atomically, the one format of ``cxrbench compare --out`` and a study's
    ``comparison.json`` / ``pooled.json``: ``.csv`` (the table: one row per pair and finding, plus
    ``mean``) or ``.json`` (``format``, any ``context`` keys such as the study's dataset, recipe and
    seed, ``settings`` = the table's attrs, ``runs``, ``rows``, with ``metrics`` the arms' metrics
    pooled over their seeds (:func:`cxrbench.evaluate.pooled.pooled_metrics`), ``provenance``).
    ``table`` may be None for a pooled file of one arm (no comparison)."""
    import json

    from cxrbench.common.fileio import atomic_path, atomic_write_json
    from cxrbench.common.provenance import provenance

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise InputError(f"{str(out)!r} has an unknown extension", where=str(out),
                         fix="use a .csv or .json file name")
    if suffix == ".csv":
        if table is None:
            raise InputError("nothing to compare: one arm", where=str(out), fix="write a .json file instead")
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False, float_format="%.10g")
        return
    doc: dict[str, Any] = {"format": COMPARISON_FORMAT, **dict(context or {}),
                           "settings": dict(table.attrs) if table is not None else {},
                           "runs": dict(runs or {}),
                           "rows": json.loads(table.to_json(orient="records")) if table is not None else []}
    if metrics is not None:
        doc["metrics"] = json.loads(metrics.to_json(orient="records"))
    atomic_write_json(out, {**doc, "provenance": provenance()})


LEGACY_POOLED_FORMAT = "cxrbench.pooled/1"  # pooled.json of studies made before one comparison format


def read_comparison(path: str | os.PathLike) -> dict[str, Any]:
    """A comparison ``.json`` (this format, a study's ``pooled.json`` of the earlier pooled format, or a
    study's comparison from before it had a format): a dict with ``rows`` (and ``metrics`` when pooled)."""
    from cxrbench.common.fileio import read_json

    doc = read_json(path)
    if isinstance(doc, dict) and doc.get("format") == LEGACY_POOLED_FORMAT:
        doc = {**doc, "rows": doc.get("comparisons") or []}
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        raise InputError("not a cxrbench comparison file (no 'rows')", where=str(path),
                         fix="re-run the comparison (`cxrbench compare ... --out FILE.json`)")
    return doc

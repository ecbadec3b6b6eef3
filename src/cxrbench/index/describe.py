"""Summaries of an index or a cache: images/patients per split, views, label counts, prevalence.

:func:`load` accepts an index Parquet file or a cache directory (Contract 3, with
``index.parquet`` inside); :func:`summarize` returns a JSON-ready dict; :func:`format_summary`
renders it as plain-text tables. The indexer's report (``<index>.report.json``: dropped rows,
unknown PadChest terms, policies, split method) is attached when it sits beside the index.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cxrbench.common.errors import InputError
from cxrbench.common.fileio import file_sha256, json_safe, read_json
from cxrbench.common.layout import CACHE_INDEX, CACHE_MANIFEST, index_report_path
from cxrbench.index.schema import SPLITS, VIEWS, leakage, read_index


def load(path: str | os.PathLike) -> tuple[pd.DataFrame, list[str], dict[str, Any]]:
    """(index frame, findings, context) for an index file or a cache directory.

    ``context`` holds ``source`` (the path), ``kind`` (index or cache), the indexer ``report``
    when found, and for a cache its ``manifest`` (or ``incomplete: True`` without one).
    """
    p = Path(path)
    ctx: dict[str, Any] = {"source": str(p)}
    if p.is_dir():
        index = p / CACHE_INDEX
        if not index.is_file():
            raise InputError(
                f"not a cache directory (no {CACHE_INDEX} inside)",
                where=str(p),
                fix="pass an index .parquet file or a cache made by `cxrbench prepare`",
            )
        ctx["kind"] = "cache"
        manifest = p / CACHE_MANIFEST
        if manifest.is_file():
            ctx["manifest"] = read_json(manifest)
        else:
            ctx["incomplete"] = True
    elif p.is_file():
        index = p
        ctx["kind"] = "index"
    else:
        raise InputError(
            "no such index file or cache directory",
            where=str(p),
            fix="create one with `cxrbench index` or `cxrbench prepare`",
        )
    df, findings = read_index(index)
    rp = index_report_path(index)
    if rp.is_file():
        report = read_json(rp)
        ctx["report"] = report
        if ctx["kind"] == "index" and report.get("index_sha256") not in (None, file_sha256(index)):
            ctx["report_stale"] = True
    return df, findings, ctx


def _counts(values: np.ndarray) -> dict[str, Any]:
    pos = int(np.sum(values == 1))
    neg = int(np.sum(values == 0))
    unk = int(np.sum(np.isnan(values)))
    known = pos + neg
    return {
        "positive": pos,
        "negative": neg,
        "unknown": unk,
        "prevalence": round(pos / known, 6) if known else None,
    }


def summarize(df: pd.DataFrame, findings: list[str], context: dict[str, Any] | None = None) -> dict[str, Any]:
    """Counts per split (images, patients, studies), views per split, per-finding positives /
    negatives / unknown / prevalence (per split and overall), sex and age; JSON-ready."""
    splits = [s for s in SPLITS if (df["split"] == s).any()] + sorted(set(df["split"]) - set(SPLITS))
    by = {s: df.index[df["split"].to_numpy() == s] for s in splits}
    out: dict[str, Any] = {
        **(context or {}),
        "datasets": sorted(map(str, df["dataset"].unique())) if "dataset" in df else [],
        "images": len(df),
        "patients": int(df["patient_id"].nunique()),
        "studies": int(df["study_id"].nunique())
        if "study_id" in df and df["study_id"].notna().any()
        else None,
        "findings": list(findings),
        "splits": {},
        "views": {},
        "labels": {},
    }
    for s, idx in by.items():
        part = df.loc[idx]
        out["splits"][s] = {
            "images": len(part),
            "patients": int(part["patient_id"].nunique()),
            "share": round(len(part) / len(df), 6) if len(df) else None,
        }
    views = [v for v in VIEWS if (df["view"] == v).any()] + sorted(set(df["view"]) - set(VIEWS))
    for v in views:
        mask = df["view"].to_numpy() == v
        out["views"][v] = {"all": int(mask.sum()), **{s: int(mask[by[s]].sum()) for s in splits}}
    for f in findings:
        values = df[f].to_numpy(dtype=np.float64, na_value=np.nan)
        out["labels"][f] = {"all": _counts(values), **{s: _counts(values[by[s]]) for s in splits}}
    if "sex" in df and df["sex"].notna().any():
        out["sex"] = {str(k): int(v) for k, v in df["sex"].fillna("missing").value_counts().items()}
    if "age" in df:
        age = pd.to_numeric(df["age"], errors="coerce")
        if age.notna().any():
            out["age"] = {
                "mean": round(float(age.mean()), 2),
                "min": float(age.min()),
                "max": float(age.max()),
                "missing": int(age.isna().sum()),
            }
    leaks = leakage(df) if df["patient_id"].duplicated().any() else []
    out["leaking_patients"] = len(leaks)
    return out


def _table(headers: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.rjust(w) if i >= right_from else c.ljust(w) for i, (c, w) in pairs)

    return [fmt(headers), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def format_summary(summary: dict[str, Any]) -> str:
    """Plain-text tables of :func:`summarize` output."""
    splits = list(summary["splits"])
    head = f"{summary.get('source', 'index')}: {summary['images']:,} images, {summary['patients']:,} patients"
    if summary.get("studies"):
        head += f", {summary['studies']:,} studies"
    head += f"; dataset {', '.join(summary['datasets'])}; {len(summary['findings'])} findings"
    lines = [head]
    if summary.get("incomplete"):
        lines.append("warning: cache has no manifest.json (incomplete)")
    lines += list(summary.get("notes") or [])  # e.g. what a cache's manifest says (cache.read)
    if summary.get("report_stale"):
        lines.append("warning: the report beside the index belongs to another version of the index")
    if summary.get("leaking_patients"):
        lines.append(f"warning: {summary['leaking_patients']} patient(s) appear in more than one split")
    lines += [
        "",
        *_table(
            ["split", "images", "patients", "share"],
            [
                [s, f"{v['images']:,}", f"{v['patients']:,}", _pct(v["share"])]
                for s, v in summary["splits"].items()
            ],
        ),
    ]
    lines += [
        "",
        *_table(
            ["view", "all", *splits],
            [[v, f"{c['all']:,}", *(f"{c[s]:,}" for s in splits)] for v, c in summary["views"].items()],
        ),
    ]
    rows = []
    for f, c in summary["labels"].items():
        a = c["all"]
        rows.append(
            [
                f,
                f"{a['positive']:,}",
                f"{a['negative']:,}",
                f"{a['unknown']:,}",
                _pct(a["prevalence"]),
                *(f"{c[s]['positive']:,}/{c[s]['negative']:,}/{c[s]['unknown']:,}" for s in splits),
            ]
        )
    if rows:
        lines += [
            "",
            *_table(["finding", "pos", "neg", "unknown", "prev", *(f"{s} pos/neg/unk" for s in splits)],
                    rows),
        ]
    if "sex" in summary:
        lines += ["", "sex: " + ", ".join(f"{k} {v:,}" for k, v in summary["sex"].items())]
    if "age" in summary:
        a = summary["age"]
        lines.append(f"age: mean {a['mean']}, range {a['min']:g}-{a['max']:g}, missing {a['missing']:,}")
    report = summary.get("report")
    if report:
        lines += [
            "",
            f"index report: split {report.get('split', {}).get('method', '?')}"
            f" (seed {report.get('split', {}).get('seed', '?')})",
        ]
        dropped = {k: v for k, v in report.get("dropped", {}).items() if v}
        if dropped:
            lines.append(
                "dropped: "
                + "; ".join(
                    f"{k} "
                    + (", ".join(f"{vk} {vv:,}" for vk, vv in v.items()) if isinstance(v, dict) else f"{v:,}")
                    for k, v in dropped.items()
                )
            )
        unknown = report.get("unknown_terms") or {}
        if unknown:
            lines.append(
                f"unknown terms ({len(unknown)}): " + ", ".join(f"{k} ({v})" for k, v in unknown.items())
            )
        for w in report.get("warnings", []):
            lines.append(f"warning: {w}")
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    """JSON text of a summary (NaN -> null)."""
    return json.dumps(json_safe(summary), indent=2, default=str, allow_nan=False)

"""Report pieces of the saliency examples: per finding, a row of top true positives and a row of top
false positives, each a small overlay thumbnail with its score.

Input: the DataFrame of :func:`cxrbench.evaluate.examples.top_examples` (``finding, kind, rank,
image_id, score, threshold, png``). HTML embeds the PNGs (base64, no external file); Markdown links
them from a folder, returned as ``{relative path: bytes}`` for the caller to write.
"""

from __future__ import annotations

import base64
import math

import pandas as pd

from cxrbench.report.html import esc
from cxrbench.report.markdown import _cell

KIND_LABELS = {"true_positive": "top true positives", "false_positive": "top false positives"}


def _score(r: dict) -> str:
    s = float(r["score"])
    return f"{s:.3f}" if math.isfinite(s) else ""


def gallery_html(
    examples: pd.DataFrame, caption: str = "Saliency of the top true and false positives"
) -> str:
    """A self-contained HTML block (figure per finding; thumbnails inline as base64 PNG)."""
    if examples.empty:
        return ""
    parts = [f'<div class="saliency"><p class="note">{esc(caption)}</p>']
    for finding, rows in examples.groupby("finding", sort=False):
        parts.append(f"<figure><figcaption>{esc(str(finding).replace('_', ' '))}</figcaption>")
        for kind, part in rows.groupby("kind", sort=False):
            imgs = "".join(
                f'<img alt="{esc(r["image_id"])}" title="{esc(r["image_id"])}: score {_score(r)}" '
                f'src="data:image/png;base64,{base64.b64encode(r["png"]).decode("ascii")}">'
                for r in part.sort_values("rank").to_dict(orient="records")
                if r.get("png")
            )
            parts.append(
                f'<div class="thumbs"><span class="note">{esc(KIND_LABELS.get(kind, kind))}</span>'
                f"{imgs}</div>"
            )
        parts.append("</figure>")
    parts.append("</div>")
    return "".join(parts)


def gallery_markdown(
    examples: pd.DataFrame,
    folder: str = "figures/saliency",
    caption: str = "Saliency of the top true and false positives",
) -> tuple[str, dict[str, bytes]]:
    """Markdown (one line of thumbnails per finding and kind) and the PNG files it links to."""
    if examples.empty:
        return "", {}
    files: dict[str, bytes] = {}
    lines = [f"*{_cell(caption)}*", ""]
    for finding, rows in examples.groupby("finding", sort=False):
        lines.append(f"**{_cell(str(finding).replace('_', ' '))}**")
        lines.append("")
        for kind, part in rows.groupby("kind", sort=False):
            links = []
            for r in part.sort_values("rank").to_dict(orient="records"):
                if not r.get("png"):
                    continue
                path = f"{folder}/{finding}_{kind}_{int(r['rank'])}.png"
                files[path] = r["png"]
                links.append(f"![{_cell(str(r['image_id']))} {_score(r)}]({path})")
            lines.append(f"{KIND_LABELS.get(kind, kind)}: " + " ".join(links))
            lines.append("")
    return "\n".join(lines) + "\n", files

"""index.html: one self-contained page (inline CSS, figures as base64 PNG, no script, no external link)."""

from __future__ import annotations

import base64
import html
import re
from importlib import resources

from cxrbench.report.tables import Table

_SLUG = re.compile(r"[^a-z0-9]+")


def slug(text: str) -> str:
    """An HTML id from a heading."""
    return _SLUG.sub("-", text.lower()).strip("-") or "section"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def css() -> str:
    """The report's stylesheet (package data)."""
    return resources.files("cxrbench.report").joinpath("style.css").read_text(encoding="utf-8")


def table_html(t: Table | None) -> str:
    """A table with caption and notes; cell styles become CSS classes, cell titles tooltips."""
    if t is None:
        return ""
    head = "".join("<th>" + "<br>".join(esc(part) for part in h.split("\n")) + "</th>" for h in t.header)
    body = []
    for row in t.rows:
        cells = []
        for c in row:
            cls = f' class="{esc(c.style)}"' if c.style else ""
            title = f' title="{esc(c.title)}"' if c.title else ""
            cells.append(f"<td{cls}{title}>{esc(c.text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    cls = f' class="{esc(t.css)}"' if t.css else ""
    notes = "".join(f'<p class="note">{esc(n)}</p>' for n in t.notes)
    return (
        f'<div class="tablewrap"><table{cls}><caption>{esc(t.caption)}</caption>'
        f"<thead><tr>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table></div>{notes}"
    )


def figure_html(png: bytes | None, caption: str, alt: str) -> str:
    """An inline PNG figure (nothing when there is no figure)."""
    if not png:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return (
        f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def page(title: str, meta: str, toc: list[tuple[str, str, int]], body: str) -> str:
    """The whole document. ``toc``: (id, label, level) entries of the side navigation."""
    nav = "".join(
        f'<a href="#{esc(i)}" class="{"sub" if lvl > 1 else ""}">{esc(label)}</a>' for i, label, lvl in toc
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{css()}</style></head><body>"
        f'<nav class="toc"><strong>cxrbench report</strong>{nav}</nav>'
        f'<main><header><h1>{esc(title)}</h1><p class="meta">{meta}</p></header>{body}</main>'
        "</body></html>\n"
    )

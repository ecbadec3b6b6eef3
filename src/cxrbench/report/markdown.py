"""report.md: the same tables as GitHub-flavoured Markdown, figures linked from ``figures/``."""

from __future__ import annotations

from cxrbench.report.tables import Table


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_md(t: Table | None, bold_best: bool = True) -> str:
    """A Markdown table with its caption in bold above and notes in italics below."""
    if t is None:
        return ""
    lines = [
        f"**{_cell(t.caption)}**",
        "",
        "| " + " | ".join(_cell(h) for h in t.header) + " |",
        "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(t.header))) + "|",
    ]
    for row in t.rows:
        cells = []
        for c in row:
            text = _cell(c.text)
            if bold_best and "best" in c.style.split() and text:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"*{_cell(n)}*" for n in t.notes]
    if t.notes:
        lines.append("")
    return "\n".join(lines) + "\n"


def figure_md(path: str | None, caption: str) -> str:
    return f"![{caption}]({path})\n\n" if path else ""

"""Shared help-text folding for the commands."""

from __future__ import annotations


def fold_paragraphs(text: str) -> str:
    """Join the lines of each paragraph (the help renderer keeps single newlines as line breaks)."""
    return "\n\n".join(" ".join(par.split()) for par in text.strip().split("\n\n"))

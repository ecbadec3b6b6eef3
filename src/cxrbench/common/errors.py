"""The one domain exception of cxrbench.

Every bad input (missing file, wrong column, unknown value, path outside the root, NaN loss,
config typo) raises :class:`InputError` carrying *what* went wrong, *where* (file, row, column
or key) and *how to fix* it. Only ``cli.py`` catches it: it prints one line and exits with 2.
Anything else that escapes is an internal failure (exit 1).
"""

from __future__ import annotations


class CxrbenchError(Exception):
    """Base class: a failure the user can act on."""

    exit_code = 2

    def __init__(self, what: str, where: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``where: what; fix`` on a single line (newlines folded)."""
        text = f"{self.where}: {self.what}" if self.where else self.what
        if self.fix:
            text = f"{text}. Fix: {self.fix}"
        return " ".join(text.split())


class InputError(CxrbenchError):
    """Bad input: a file, a row, a column, a config key or a command-line value."""


class TrainingDiverged(CxrbenchError):
    """Loss became NaN/Inf; the last good checkpoint was kept."""

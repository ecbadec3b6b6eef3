"""The one domain exception of cxrbench, the caller's language of its messages, and its warnings.

Every bad input (missing file, wrong column, unknown value, path outside the root, NaN loss,
config typo) raises :class:`InputError` carrying *what* went wrong, *where* (file, row, column
or key) and *how to fix* it. ``InputError`` is a ``ValueError`` too, so ``except ValueError`` in a
notebook catches it. Only ``cli.py`` catches it: it prints one line and exits with 2. Anything else
that escapes is an internal failure (exit 1).

A message names an option the way its caller writes it: :func:`spell` gives the command-line flag
(``--bootstrap 0``) while ``cli.py`` runs a command (:func:`command_line`), else the Python
parameter (``n_resamples=0``). Library warnings go through :func:`warn`, which points them at the
caller's line (the first frame outside the package) under :class:`CxrbenchWarning`, so
``warnings.filterwarnings("ignore", category=cxrbench.CxrbenchWarning)`` silences them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from contextvars import ContextVar


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


class InputError(CxrbenchError, ValueError):
    """Bad input: a file, a row, a column, a config key, a keyword argument or a command-line value.

    A ``ValueError`` as well (``except ValueError`` catches it); ``str(err)`` is the one line the
    command line prints after ``error:``; ``.what``, ``.where`` and ``.fix`` are its parts.
    """


class TrainingDiverged(CxrbenchError):
    """Loss became NaN/Inf; the last good checkpoint was kept."""


class CxrbenchWarning(UserWarning):
    """A result the user should look at (a thin split, an undefined metric, an index note)."""


# --- the caller's language ----------------------------------------------------------------------

_CALLER: ContextVar[str] = ContextVar("cxrbench_caller", default="python")

# switches: a flag without a value, a keyword argument set to True from Python
_SWITCHES = frozenset({"--overwrite", "--allow-overlap", "--skip-bad", "--drop-missing", "--check-files",
                       "--keep-going", "--repredict"})


@contextlib.contextmanager
def command_line() -> Iterator[None]:
    """While inside, messages name command-line flags (``cli.py`` wraps every command in it)."""
    token = _CALLER.set("cli")
    try:
        yield
    finally:
        _CALLER.reset(token)


def on_command_line() -> bool:
    """Whether the running call came from the command line (else from Python)."""
    return _CALLER.get() == "cli"


def spell(flag: str, python: str | None = None) -> str:
    """An option (or a phrase naming one) as the caller writes it.

    ``flag`` is the command line's spelling (``--bootstrap 0``, ``--overwrite``), ``python`` the
    Python one (``n_resamples=0``, ``on_conflict="overwrite"``). Without ``python`` a bare flag
    becomes its parameter name (``--split-seed`` -> ``split_seed``), a switch such as
    ``--overwrite`` the keyword set to True (``overwrite=True``).

    >>> spell("--split-seed")
    'split_seed'
    >>> spell("--skip-bad")
    'skip_bad=True'
    >>> spell("--bootstrap 0", "n_resamples=0")
    'n_resamples=0'
    """
    if on_command_line():
        return flag
    if python is not None:
        return python
    if not flag.startswith("--"):
        return flag
    name = flag.removeprefix("--").replace("-", "_")
    return f"{name}=True" if flag in _SWITCHES else name


# --- warnings -----------------------------------------------------------------------------------

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def caller_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by the caller of this function point at the
    first frame outside the cxrbench package (the user's line), as pandas' ``find_stack_level``."""
    frame = sys._getframe(1)  # the function that calls warnings.warn
    level = 1
    while frame.f_back is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level


def warn(message: str, category: type[Warning] = CxrbenchWarning) -> None:
    """``warnings.warn(message, category)`` pointing at the user's line, not at cxrbench's."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())

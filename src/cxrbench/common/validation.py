"""One validation helper, one message shape (parameter, allowed values, given, closest match)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from cxrbench.common.errors import InputError


def closest(value: str, allowed: Iterable[str]) -> str | None:
    """The allowed value most similar to ``value``, or None when nothing is close."""
    matches = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_choice(name: str, value: str, allowed: Iterable[str], where: str | None = None) -> str:
    """Return ``value`` if it is one of ``allowed``; otherwise raise one clear InputError.

    >>> check_choice("--resize", "pad", ["stretch", "pad", "crop"])
    'pad'
    """
    allowed = list(allowed)
    if value in allowed:
        return value
    hint = closest(value, allowed)
    fix = f"use one of {', '.join(map(str, allowed))}"
    if hint is not None:
        fix = f"did you mean {hint!r}? ({fix})"
    raise InputError(f"{name} got {value!r}, which is not allowed", where=where, fix=fix)


def check_columns(
    columns: Iterable[str], required: Iterable[str], where: str, fix: str | None = None
) -> None:
    """Raise an InputError naming every required column missing from ``columns``."""
    have = set(columns)
    missing = [c for c in required if c not in have]
    if missing:
        hints = [f"{m!r} (closest: {closest(m, have)!r})" if closest(m, have) else repr(m) for m in missing]
        raise InputError(
            f"missing required column(s) {', '.join(hints)}",
            where=where,
            fix=fix or "check that this is the official file, unmodified",
        )

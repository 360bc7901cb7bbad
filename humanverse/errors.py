"""Errors as users read them: one line."""

from __future__ import annotations


def first_line(e: BaseException) -> str:
    """The first line of ``e``'s message (DuckDB and Ray add context lines after it), or its type's
    name when it has no message."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

"""Spreadsheet-safe CSV cells: the one formula guard for every CSV the product writes."""

from __future__ import annotations

import hashlib

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: object) -> object:
    """Defuse spreadsheet formulas in text (a cell starting with = + - @ is shown as text)."""
    if isinstance(value, str) and value[:1] in _FORMULA_STARTS:
        return "'" + value
    return value


def anonymous_name(name: str) -> str:
    """A stable stand-in for a file name that may hold a patient's name (``file-`` + 16 hex digits)."""
    return "file-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:16]

"""Paths typed in the dashboard are confined to configured roots: the server's file system is not the user's.

Two kinds of root, each a list separated by ``os.pathsep`` in an environment variable:

* ``models`` (``CXR_MODELS_ROOT``; default: the project's ``assets/models`` and ``runs``): where the
  sidebar's checkpoint field may point;
* ``data`` (``CXR_DATA_ROOT``; default: the project's ``assets/sample``): where the Performance
  page's folder field may point.

A path outside every root and a path that does not exist get the same message, so the field cannot
be used to probe the server's file system. Symbolic links are resolved before the check.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import EngineError, PathNotAllowed  # noqa: F401  (PathNotAllowed: raised here, imported from here)
from engine.settings import settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
_ENV = {"models": "CXR_MODELS_ROOT", "data": "CXR_DATA_ROOT"}
_DEFAULTS = {"models": ("assets/models", "runs"), "data": ("assets/sample",)}


def allowed_roots(kind: str) -> list[Path]:
    """The resolved roots of ``kind`` ("models" or "data")."""
    raw = settings().models_root if kind == "models" else settings().data_root
    entries = [e for e in raw.split(os.pathsep) if e.strip()] if raw.strip() else \
        [str(PROJECT_ROOT / d) for d in _DEFAULTS[kind]]
    return [Path(e).expanduser().resolve() for e in entries]


def confine(typed: str, kind: str) -> Path:
    """The existing folder that ``typed`` names inside a ``kind`` root, or :class:`PathNotAllowed`.

    A relative path is looked up under each root in turn.
    """
    roots = allowed_roots(kind)
    text = typed.strip()
    raw = Path(text).expanduser()
    candidates = [raw] if raw.is_absolute() else [root / raw for root in roots]
    for candidate in candidates:
        resolved = candidate.resolve()
        if resolved.is_dir() and any(resolved == r or resolved.is_relative_to(r) for r in roots):
            return resolved
    shown = ", ".join(_display(r) for r in roots) or "none configured"
    raise PathNotAllowed(f"'{text}' is not an allowed folder on this server, or does not exist. "
                         f"Allowed: folders under {shown} (set {_ENV[kind]} to change).")


def confine_any(typed: str) -> Path:
    """:func:`confine` against the model roots, then the data roots (one message for both)."""
    try:
        return confine(typed, "models")
    except PathNotAllowed:
        pass
    try:
        return confine(typed, "data")
    except PathNotAllowed:
        shown = ", ".join(_display(r) for kind in ("models", "data") for r in allowed_roots(kind))
        raise PathNotAllowed(f"'{typed.strip()}' is not an allowed folder on this server, or does not exist. "
                             f"Allowed: folders under {shown}.") from None


def _display(root: Path) -> str:
    try:
        return root.relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(root)

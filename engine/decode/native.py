"""Name the native codec about to run, so that a crash can be reported as "the X decoder crashed".

Native decoders (GDCM, OpenJPEG, CharLS, libjpeg) can abort the whole process on a crafted file.
Decoding therefore runs in worker processes (:mod:`engine.decode.pool`); each worker installs a
reporter here, and the decoders call :func:`entering` just before handing bytes to native code. If
the worker dies, the parent knows which decoder it was in. In-process (training, tests) this is a
no-op.
"""

from __future__ import annotations

from typing import Callable, Optional

_reporter: Optional[Callable[[str], None]] = None


def set_reporter(reporter: Optional[Callable[[str], None]]) -> None:
    global _reporter
    _reporter = reporter


def entering(decoder: str) -> None:
    """Tell the parent process that ``decoder`` (e.g. "the JPEG Lossless decoder (GDCM)") runs now."""
    if _reporter is not None:
        _reporter(decoder)

"""Command-line argument types shared by every ``python -m`` entry point: one rule, one message.

Used as ``type=`` in argparse, so a bad value stops the command with exit code 2 and argparse's own
"argument --threshold: ..." line before anything loads.
"""

from __future__ import annotations

import argparse
import math


def threshold(text: str) -> float:
    """A decision threshold: a finite number from 0 to 1 inclusive (0 flags every study, 1 only a
    probability of exactly 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}")
    return value


__all__ = ["threshold"]

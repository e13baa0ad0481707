"""One name per model on every page: the label recorded with decisions and profiles, and its short form.

The recorded label is the model card's name and version ("ResNet18+CBAM (Kermany, from scratch; ...)
0.2.1"), as decisions, site profiles and exports carry it. Pages show the short form, without the
parenthesised description ("ResNet18+CBAM 0.2.1"), so the same model reads the same in a sidebar, a
caption, a table cell or a chart legend, and a narrow table still shows it whole.
"""

from __future__ import annotations

import re

_DESCRIPTION = re.compile(r"\s*\([^()]*\)")


def short_label(label: str) -> str:
    """A recorded label as pages show it: its parenthesised description left out."""
    short = _DESCRIPTION.sub("", str(label)).strip()
    return short or str(label).strip()


def display_label(card) -> str:
    """How pages name a model: the short form of its card's name (its architecture when unnamed) and version."""
    return short_label(f"{card.name or card.architecture} {card.version}")


def plural(n: int, noun: str, many: str = "") -> str:
    """A count with its noun in the right number: "1 false positive", "2 false positives", "1 study",
    "0 studies" (``many`` for an irregular plural; by default the noun plus "s", or "ies" after a consonant
    and "y")."""
    if n == 1:
        return f"1 {noun}"
    if not many:
        many = noun[:-1] + "ies" if noun.endswith("y") and noun[-2:-1] not in "aeiou" else noun + "s"
    return f"{n:,} {many}"

"""Which decision threshold applies to a study: the card's, or the card's point for its population.

A model card may carry, besides its decision threshold, one operating point per population
(``"operating_points": {"adult": {"value": 0.41, "rule": "..."}}``). The rule that picks one is written
here once, for the CLI, the dashboard and the SR alike:

* a study whose DICOM header gives an age of 18 or more (the age band "adult (18 or older)") uses the
  card's ``adult`` point when the card has one;
* every other study (children, and every image without an age: JPEG and PNG files, DICOMs without
  Patient's Age or birth date) uses the card's threshold.

A threshold given by the user (``--threshold``, a site profile, the dashboard's slider) replaces both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

ADULT_BAND = "adult (18 or older)"      # engine.model.population.AGE_BANDS[-1]


@dataclass(frozen=True)
class OperatingPoint:
    name: str            # "card", "card: adult", "site profile X", "given threshold"
    threshold: float
    rule: str = ""


def population_points(card_extra: Mapping) -> dict[str, OperatingPoint]:
    """The card's per-population points (``{"adult": OperatingPoint}``), checked: a value outside [0, 1]
    raises ValueError (the card is then refused as a whole, as any impossible card field is)."""
    out = {}
    for population, point in (card_extra.get("operating_points") or {}).items():
        if not isinstance(point, Mapping):
            raise ValueError(f"operating_points.{population} must be an object with a value")
        value = point.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0.0 <= value <= 1.0:
            raise ValueError(f"operating_points.{population}.value must be a number in [0, 1], got {value!r}")
        out[str(population)] = OperatingPoint(f"card: {population}", float(value), str(point.get("rule", "")))
    return out


def for_study(card_threshold: float, points: Mapping[str, OperatingPoint], age_band: Optional[str],
              override: Optional[OperatingPoint] = None) -> OperatingPoint:
    """The operating point of one study (the module docstring's rule)."""
    if override is not None:
        return override
    if age_band == ADULT_BAND and "adult" in points:
        return points["adult"]
    return OperatingPoint("card", float(card_threshold))

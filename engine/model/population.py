"""Who the model was trained on, and header checks that say when a study is outside it.

The shipped model learned from one pediatric data set (Kermany et al., 2018: frontal chest
radiographs of children aged about 1 to 5 at one hospital). A study is flagged as outside that
population, with the reason, when its DICOM header shows an adult or an older child, a lateral view,
a body part other than the chest or a modality other than a radiograph. The age is reported as a band,
never as the exact age or the birth date.
"""

from __future__ import annotations

import re
from datetime import date
from dataclasses import dataclass
from typing import Mapping, Optional

TRAINING_POPULATION = "frontal chest radiographs of children aged about 1 to 5 (Kermany et al., 2018)"
AGE_BANDS = ("under 1 year", "1-5 years", "6-17 years", "adult (18 or older)")
IN_POPULATION_BAND = "1-5 years"
LATERAL_VIEWS = frozenset({"LL", "RL", "LAT", "LATERAL", "RLD", "LLD"})

_AGE = re.compile(r"^(\d{1,3})\s*([DWMY]?)$")   # "045Y"; a bare number ("62", seen in the wild) is years


def age_in_years(patient_age: Optional[str], birth_date: Optional[str], study_date: Optional[str]) -> Optional[float]:
    """Age at the study from Patient's Age (``045Y``, ``018M``, ``003W``, ``010D``), else from the
    birth date and the study date (``YYYYMMDD``); None when neither is usable."""
    if patient_age:
        m = _AGE.match(patient_age.strip().upper())
        if m:
            n, unit = int(m.group(1)), m.group(2)
            return n / {"D": 365.25, "W": 52.18, "M": 12.0, "Y": 1.0, "": 1.0}[unit]
    born, seen = _date(birth_date), _date(study_date)
    if born and seen and seen >= born:
        return (seen - born).days / 365.25
    return None


def age_band(years: Optional[float]) -> Optional[str]:
    if years is None:
        return None
    if years < 1:
        return AGE_BANDS[0]
    if years < 6:
        return AGE_BANDS[1]
    if years < 18:
        return AGE_BANDS[2]
    return AGE_BANDS[3]


@dataclass(frozen=True)
class Population:
    """Whom a model was trained on, as its card says (``"population": {"age_bands": [...],
    "description": "..."}``); a card without it is the first models' population, children aged 1 to 5."""

    age_bands: tuple[str, ...] = (IN_POPULATION_BAND,)
    description: str = TRAINING_POPULATION

    @classmethod
    def from_card_extra(cls, extra: Mapping) -> "Population":
        spec = extra.get("population")
        if spec is None:
            return cls()
        if not isinstance(spec, Mapping):
            raise ValueError("population must be an object with age_bands")
        bands = tuple(spec.get("age_bands") or ())
        unknown = [b for b in bands if b not in AGE_BANDS]
        if not bands or unknown:
            raise ValueError(f"population.age_bands must name bands among {AGE_BANDS}, got {list(bands)}")
        return cls(bands, str(spec.get("description") or TRAINING_POPULATION))

    def age_warning(self, band: Optional[str]) -> Optional[str]:
        """The warning for a patient outside these age bands (None inside them, or when the age is unknown)."""
        if band is None or band in self.age_bands:
            return None
        return (f"outside the training population: the patient is {'an ' if band.startswith('adult') else 'aged '}"
                f"{band}; the model was trained on {self.description}")


def header_warnings(band: Optional[str], view_position: Optional[str],
                    population: Optional[Population] = None) -> list[str]:
    """Out-of-population warnings from the age band (against ``population``, the first models' by default)
    and the view."""
    out = []
    age = (population or Population()).age_warning(band)
    if age:
        out.append(age)
    if view_position and view_position.upper() in LATERAL_VIEWS:
        out.append(f"outside the training population: a lateral view ({view_position.upper()}); the model was "
                   f"trained on {TRAINING_POPULATION}")
    return out


def _date(text: Optional[str]) -> Optional[date]:
    t = (text or "").strip()
    if len(t) == 8 and t.isdigit():
        try:
            return date(int(t[:4]), int(t[4:6]), int(t[6:8]))
        except ValueError:
            return None
    return None

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
from typing import Optional

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


def header_warnings(band: Optional[str], view_position: Optional[str]) -> list[str]:
    """Out-of-population warnings from the age band and the view."""
    out = []
    if band is not None and band != IN_POPULATION_BAND:
        out.append(f"outside the training population: the patient is {'an ' if band.startswith('adult') else 'aged '}"
                   f"{band}; the model was trained on {TRAINING_POPULATION}")
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

"""Out-of-population warnings from the DICOM header: age band (never the exact age) and view."""

import pydicom
import pytest

from engine.decode import read_image
from engine.model.population import AGE_BANDS, age_band, age_in_years, header_warnings
from helpers import DICOMS, JPEGS


@pytest.mark.parametrize("age, birth, study, years", [
    ("045Y", None, None, 45.0), ("018M", None, None, 1.5), ("026W", None, None, 26 / 52.18),
    ("062", None, None, 62.0), (None, "20200301", "20230301", 3.0), (None, "20200301", "bad", None),
    ("", None, None, None), ("abc", "19400305", "20040826", 64.47),
])
def test_age_from_patient_age_or_birth_and_study_dates(age, birth, study, years):
    got = age_in_years(age, birth, study)
    assert got == pytest.approx(years, abs=0.01) if years is not None else got is None


def test_bands_and_warnings():
    assert [age_band(y) for y in (0.5, 1, 5.9, 6, 17.9, 18, 80)] == \
        [AGE_BANDS[0], AGE_BANDS[1], AGE_BANDS[1], AGE_BANDS[2], AGE_BANDS[2], AGE_BANDS[3], AGE_BANDS[3]]
    assert header_warnings("1-5 years", "PA") == [] and header_warnings(None, None) == []
    (adult,) = header_warnings(AGE_BANDS[3], "AP")
    assert "outside the training population: the patient is an adult (18 or older)" in adult
    (lateral,) = header_warnings("1-5 years", "LL")
    assert "a lateral view (LL)" in lateral


def test_the_real_adult_dicoms_warn_and_a_kermany_jpeg_does_not():
    for path in DICOMS:
        image = read_image(path)
        assert image.metadata.age_band == "adult (18 or older)"
        assert any("outside the training population: the patient is an adult" in w for w in image.warnings)
        ds = pydicom.dcmread(path)
        born = str(ds.get("PatientBirthDate") or "")
        assert not born or all(born not in w for w in image.warnings)     # no birth date, no exact age
    assert not read_image(JPEGS[0]).warnings


def test_a_child_in_the_training_age_range_does_not_warn(dcm, xray):
    ds = dcm.dataset((xray * 255).astype("uint8"))
    ds.PatientAge, ds.ViewPosition = "003Y", "AP"
    image = read_image(dcm.to_bytes(ds), "child.dcm")
    assert image.metadata.age_band == "1-5 years" and not image.warnings
    ds.ViewPosition = "LL"
    assert any("lateral view" in w for w in read_image(dcm.to_bytes(ds), "lateral.dcm").warnings)

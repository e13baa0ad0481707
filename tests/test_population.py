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


def test_the_age_warning_follows_the_models_population_on_real_adult_dicoms(tmp_path):
    """The decoder gives the age band; the predictor warns when the card's population leaves it out."""
    import json
    from engine.inference.predictor import Predictor
    from engine.inputs.sources import iter_inputs
    from engine.model.checkpoint import CARD_FILE
    from helpers import write_tiny_checkpoint
    for path in DICOMS:
        image = read_image(path)
        assert image.metadata.age_band == "adult (18 or older)"
        assert not any("the patient is" in w for w in image.warnings)          # not the decoder's call
    children = write_tiny_checkpoint(tmp_path / "children")                  # a card without a population
    adults = write_tiny_checkpoint(tmp_path / "adults")
    card = json.loads((adults / CARD_FILE).read_text())
    card["population"] = {"age_bands": list(AGE_BANDS[1:]), "description": "children and adults"}
    (adults / CARD_FILE).write_text(json.dumps(card))
    for folder, warns in ((children, True), (adults, False)):
        preds = Predictor.from_checkpoint(folder, backend="torch").predict_items(iter_inputs([*DICOMS, JPEGS[0]]))
        for p in preds[:-1]:
            assert any("outside the training population: the patient is an adult" in w for w in p.warnings) == warns
            born = str(pydicom.dcmread(DICOMS[0]).get("PatientBirthDate") or "")
            assert not born or all(born not in w for w in p.warnings)   # no birth date, no exact age
        assert not any("the patient is" in w for w in preds[-1].warnings)     # a JPEG has no age


def test_a_population_naming_an_unknown_band_is_refused():
    from engine.model.population import Population
    with pytest.raises(ValueError, match="population.age_bands"):
        Population.from_card_extra({"population": {"age_bands": ["teenagers"]}})


def test_a_child_in_the_training_age_range_does_not_warn(dcm, xray):
    ds = dcm.dataset((xray * 255).astype("uint8"))
    ds.PatientAge, ds.ViewPosition = "003Y", "AP"
    image = read_image(dcm.to_bytes(ds), "child.dcm")
    assert image.metadata.age_band == "1-5 years" and not image.warnings
    ds.ViewPosition = "LL"
    assert any("lateral view" in w for w in read_image(dcm.to_bytes(ds), "lateral.dcm").warnings)

"""Operating points per population (issue 25): the card's adult point applies when the DICOM header's
age says adult, the card's threshold otherwise (children, JPEGs, no age); a user's threshold replaces both."""

from __future__ import annotations

import csv
import io
import json
import shutil

import pydicom
import pytest

from engine.errors import CheckpointError
from engine.model.checkpoint import CARD_FILE, read_card
from engine.model.operating_point import ADULT_BAND, OperatingPoint, for_study, population_points
from helpers import DICOMS, SHIPPED_MODEL


def test_the_rule_adult_by_age_band_else_the_card():
    points = population_points({"operating_points": {"adult": {"value": 0.3, "rule": "sens>=0.93"}}})
    assert for_study(0.8, points, ADULT_BAND) == OperatingPoint("card: adult", 0.3, "sens>=0.93")
    for band in ("1-5 years", "6-17 years", None):
        assert for_study(0.8, points, band) == OperatingPoint("card", 0.8)
    given = OperatingPoint("given threshold", 0.5)
    assert for_study(0.8, points, ADULT_BAND, given) is given
    assert for_study(0.8, {}, ADULT_BAND).name == "card"


@pytest.mark.parametrize("value", [1.5, float("nan"), "0.3", None])
def test_an_impossible_population_point_makes_the_card_invalid(tmp_path, value):
    ckpt = shutil.copytree(SHIPPED_MODEL, tmp_path / "m")
    card = json.loads((ckpt / CARD_FILE).read_text())
    card["operating_points"] = {"adult": {"value": value}}
    (ckpt / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="operating_points.adult"):
        read_card(ckpt)


def _with_age(path, age: str, out):
    ds = pydicom.dcmread(path)
    ds.PatientAge = age
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    out.write_bytes(buf.getvalue())
    return out


def test_the_cli_flags_a_real_dicom_at_the_point_of_its_population(tmp_path):
    ckpt = shutil.copytree(SHIPPED_MODEL, tmp_path / "m")
    card = json.loads((ckpt / CARD_FILE).read_text())
    card["decision_threshold"]["value"] = 1.0                       # the card's threshold flags nothing
    card["operating_points"] = {"adult": {"value": 0.0, "rule": "test: every adult"}}
    (ckpt / CARD_FILE).write_text(json.dumps(card))
    adult = _with_age(DICOMS[1], "045Y", tmp_path / "adult.dcm")
    child = _with_age(DICOMS[1], "004Y", tmp_path / "child.dcm")
    from engine.cli.predict import main
    out = tmp_path / "r.csv"
    assert main([str(adult), str(child), "--out", str(out), "--checkpoint", str(ckpt), "--quiet"]) == 0
    rows = {r["file"]: r for r in csv.DictReader(open(out))}
    assert (rows["adult.dcm"]["operating_point"], rows["adult.dcm"]["flagged"], rows["adult.dcm"]["threshold"]) == \
        ("card: adult", "yes", "0.0")
    assert (rows["child.dcm"]["operating_point"], rows["child.dcm"]["flagged"]) == ("card", "no")
    assert main([str(adult), "--out", str(out), "--checkpoint", str(ckpt), "--threshold", "1.0", "--quiet"]) == 0
    row = next(csv.DictReader(open(out)))
    assert (row["operating_point"], row["flagged"]) == ("given threshold", "no")


def test_the_sr_finding_names_the_population_point(tmp_path):
    from engine.pacs.dicom_out import ResultWriter

    class _Pred:                     # the writer needs only the card from its predictor here
        card = read_card(SHIPPED_MODEL)
    _Pred.card.extra["operating_points"] = {"adult": {"value": 0.25, "rule": "test"}}
    writer = ResultWriter(_Pred())
    adult, child = writer.finding(0.3, age_band=ADULT_BAND), writer.finding(0.3, age_band="1-5 years")
    assert (adult.threshold, adult.threshold_origin) == (0.25, "the model card's adult operating point")
    assert (child.threshold, child.threshold_origin) == (_Pred.card.threshold, "the model card's decision threshold")

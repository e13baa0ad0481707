"""Site profiles: fitted on local cases with exact intervals, saved, reloaded after a restart, used by the CLI;
labels from reviewer decisions."""

import csv

import numpy as np
import pytest

from engine.evaluation import metrics as M
from engine.evaluation.site import (MIN_PER_CLASS, ProfileError, fit_profile, labels_from_decisions, list_profiles,
                         load_profile, save_profile)


def _cases(n_pos=60, n_neg=40, seed=0):
    rng = np.random.default_rng(seed)
    y = np.array([1] * n_pos + [0] * n_neg)
    s = np.clip(np.where(y == 1, rng.normal(0.75, 0.15, y.size), rng.normal(0.3, 0.15, y.size)), 0, 1)
    return y, s


def test_fit_reports_the_threshold_its_meaning_and_exact_intervals():
    y, s = _cases()
    p = fit_profile("Clinic A", y, s, "sensitivity>=0.95", model="m 1.0", source="labelled folder")
    assert p.threshold == pytest.approx(M.choose_threshold(y, s, "sensitivity>=0.95").threshold)
    c = M.confusion_at(y, s, p.threshold)
    assert p.sensitivity == pytest.approx((c.sensitivity, *M.clopper_pearson(c.tp, c.tp + c.fn)))
    assert p.specificity == pytest.approx((c.specificity, *M.clopper_pearson(c.tn, c.tn + c.fp)))
    assert p.sensitivity[0] >= 0.95 and (p.n_pneumonia, p.n_normal) == (60, 40) and p.reliable


def test_few_cases_are_flagged_unreliable_and_bad_input_refused():
    y, s = _cases(10, 8)
    p = fit_profile("small", y, s, "youden", model="m", source="review decisions")
    assert not p.reliable and f"at least {MIN_PER_CLASS} of each" in p.summary()
    with pytest.raises(ProfileError, match="both classes"):
        fit_profile("x", [1, 1], [0.2, 0.9], "youden", model="m", source="s")
    with pytest.raises(ProfileError, match="unknown threshold rule"):
        fit_profile("x", y, s, "ppv>=0.9", model="m", source="s")
    with pytest.raises(ProfileError, match="profile name"):
        fit_profile("../etc/passwd", y, s, "youden", model="m", source="s")


def test_round_trip_survives_a_restart_and_the_cli_uses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_PROFILES_DIR", str(tmp_path / "profiles"))
    y, s = _cases()
    saved = fit_profile("Clinic A", y, s, "specificity>=0.9", model="m", source="predictions CSV")
    save_profile(saved)
    assert load_profile("Clinic A") == saved                      # a new read from disk
    assert [p.name for p in list_profiles()] == ["Clinic A", "kermany-test-dev"]   # the user's, then the shipped
    with pytest.raises(ProfileError, match="no site profile named 'nope'"):
        load_profile("nope")
    from engine.cli.predict import main
    from helpers import JPEGS
    out = tmp_path / "r.csv"
    assert main([str(JPEGS[0]), str(JPEGS[-1]), "--out", str(out), "--profile", "Clinic A", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out)))
    assert {float(r["threshold"]) for r in rows} == {saved.threshold}
    assert all(r["flagged"] == ("yes" if float(r["probability"]) >= saved.threshold else "no") for r in rows)
    assert main([str(JPEGS[0]), "--out", str(out), "--profile", "nope", "--quiet"]) == 2


def test_labels_from_reviewer_decisions():
    decisions = [
        {"study_id": 1, "decision": "agree", "probability": 0.9, "threshold": 0.5},     # flagged, agreed: pneumonia
        {"study_id": 2, "decision": "disagree", "probability": 0.8, "threshold": 0.5},  # flagged, disagreed: normal
        {"study_id": 3, "decision": "agree", "probability": 0.1, "threshold": 0.5},     # not flagged, agreed: normal
        {"study_id": 4, "decision": "disagree", "probability": 0.2, "threshold": 0.5},  # missed: pneumonia
        {"study_id": 1, "decision": "disagree", "probability": 0.9, "threshold": 0.95}, # re-reviewed: the last counts
    ]
    y, s = labels_from_decisions(decisions)
    assert y.tolist() == [1, 0, 0, 1] and s.tolist() == [0.9, 0.8, 0.1, 0.2]


@pytest.mark.parametrize("threshold", [float("nan"), 7.5, -0.1, "0.5", True], ids=["nan", "7.5", "negative", "text", "bool"])
def test_a_profile_with_an_impossible_threshold_is_refused_on_load_and_by_the_cli(tmp_path, monkeypatch, threshold):
    import json
    monkeypatch.setenv("CXR_PROFILES_DIR", str(tmp_path / "profiles"))
    y, s = _cases()
    save_profile(fit_profile("ward", y, s, "youden", model="m", source="test"))
    path = tmp_path / "profiles" / "ward.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"threshold": threshold}))
    with pytest.raises(ProfileError, match="threshold must be a number in \\[0, 1\\]"):
        load_profile("ward")
    assert [p.name for p in list_profiles()] == ["kermany-test-dev"]   # skipped in the sidebar's list too
    from engine.cli.predict import main
    from helpers import JPEGS
    assert main([str(JPEGS[0]), "--out", str(tmp_path / "r.csv"), "--profile", "ward", "--quiet"]) == 2


def test_the_shipped_dev_half_profile_works_on_a_fresh_clone(tmp_path, monkeypatch):
    """``engine.predict --profile kermany-test-dev``: the example profile fitted on the dev half of the
    official test split ships in assets/profiles and is found with an empty profiles folder."""
    monkeypatch.setenv("CXR_PROFILES_DIR", str(tmp_path / "empty"))
    profile = load_profile("kermany-test-dev")
    assert (profile.n_normal, profile.n_pneumonia) == (117, 195) and profile.reliable
    from engine.model.checkpoint import read_card
    from helpers import JPEGS, SHIPPED_MODEL
    card = read_card(SHIPPED_MODEL)
    assert profile.model == f"{card.name} {card.version}"             # offered in the sidebar for this model
    from engine.cli.predict import main
    out = tmp_path / "r.csv"
    assert main([str(JPEGS[0]), "--out", str(out), "--profile", "kermany-test-dev", "--quiet"]) == 0
    row = next(csv.DictReader(open(out)))
    assert float(row["threshold"]) == profile.threshold and row["operating_point"] == "site profile kermany-test-dev"

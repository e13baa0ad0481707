"""training.manifest: the NIH label policy (RSNA's class wins, abnormal-without-opacity excluded, NIH's
label otherwise) and the patient-wise hold-out, on metadata rows like NIH's."""

from __future__ import annotations

import csv

from training.manifest import holdout_patient, main, nih_label, nih_rows
from helpers import SHARED_DATA


def test_rsna_class_wins_over_nih_and_abnormal_without_opacity_is_excluded():
    assert nih_label("pneumonia", "Normal") == ("normal", "rsna")
    assert nih_label("normal", "Lung Opacity") == ("pneumonia", "rsna")
    assert nih_label("pneumonia", "No Lung Opacity / Not Normal").label is None
    assert nih_label("pneumonia", "") == ("pneumonia", "nih")
    assert nih_label("normal", "") == ("normal", "nih")
    assert nih_label("effusion", "").label is None


def test_the_holdout_is_by_patient_and_stable():
    assert holdout_patient("61", 0.2) == holdout_patient("61", 0.2)
    share = sum(holdout_patient(str(i), 0.2) for i in range(5000)) / 5000
    assert 0.18 < share < 0.22


def test_a_patients_images_all_land_on_one_side(tmp_path):
    (tmp_path / "NORMAL").mkdir()
    rows = [{"file": f"NORMAL/{p}_{k}.jpeg", "label": "normal", "patient_id": str(p), "follow_up": str(k),
             "age": "50", "sex": "M", "view": "PA", "nih_labels": "No Finding", "original_size": "", "rsna_class": ""}
            for p in range(60) for k in range(3)]
    with open(tmp_path / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    train, held, excluded = nih_rows(tmp_path, 0.3)
    assert not excluded and len(train) + len(held) == 180
    assert not {r["patient_id"] for r in train} & {r["patient_id"] for r in held}
    assert held and train


def test_the_real_metadata_gives_the_documented_counts(tmp_path):
    nih = SHARED_DATA / "nih-cxr"
    if not (nih / "metadata.csv").exists():
        import pytest
        pytest.skip("../shared/data/nih-cxr is not here (a fresh clone)")
    assert main(["--kermany", str(SHARED_DATA / "kermany224"), "--nih", str(nih), "--out", str(tmp_path)]) == 0
    with open(tmp_path / "nih_excluded.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 135               # 106 + 29 RSNA "No Lung Opacity / Not Normal"

"""training.manifest: the NIH label policy (RSNA's class wins, abnormal-without-opacity excluded, NIH's
label otherwise) and the patient-wise hold-out, on metadata rows like NIH's."""

from __future__ import annotations

import csv
import shutil

import pytest

from training.manifest import holdout_patient, main, nih_label, nih_rows
from helpers import ROOT, SHARED_DATA

ASSETS = ROOT / "assets"


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


def test_a_manifest_weight_must_be_a_positive_number(tmp_path):
    from training.data import index_manifest
    for bad in ("0", "-1", "nan", "inf", "many"):
        path = tmp_path / "m.csv"
        path.write_text(f"path,label,weight\na.jpeg,normal,1\nb.jpeg,pneumonia,{bad}\n")
        with pytest.raises(ValueError, match=r"m\.csv line 3: weight '.*' is not a positive number"):
            index_manifest(path)


def test_nih_weight_is_written_on_nih_training_rows_only(tmp_path):
    kermany = tmp_path / "kermany" / "train" / "NORMAL"
    kermany.mkdir(parents=True)
    shutil.copy(next((ASSETS / "sample").rglob("*.jpeg")), kermany / "IM-0001-0001.jpeg")
    rows = [{"file": f"NORMAL/{p}.jpeg", "label": "normal", "patient_id": str(p), "follow_up": "0", "age": "50",
             "sex": "M", "view": "PA", "nih_labels": "No Finding", "original_size": "", "rsna_class": ""}
            for p in range(40)]
    nih = tmp_path / "nih"
    nih.mkdir()
    with open(nih / "metadata.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "out"
    assert main(["--kermany", str(tmp_path / "kermany"), "--nih", str(nih), "--out", str(out),
                 "--nih-weight", "4"]) == 0
    with open(out / "train.csv", newline="") as f:
        weights = {(r["source"], r["weight"]) for r in csv.DictReader(f)}
    assert weights == {("kermany", ""), ("nih", "4")}
    with open(out / "nih_holdout.csv", newline="") as f:
        assert {r["weight"] for r in csv.DictReader(f)} == {""}
    with pytest.raises(SystemExit):
        main(["--kermany", str(tmp_path / "kermany"), "--nih", str(nih), "--out", str(out), "--nih-weight", "0"])

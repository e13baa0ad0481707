"""Results a hospital's systems accept as AI results (IHE AIR): the SR, the Parametric Map, the capture.

On the two real DICOMs of ``assets/sample/dicom`` scored by the shipped model (``assets/models/default``):

* the SR passes Pixelmed's ``DicomSRValidator`` (what the IHE connectathon runs) with no error and no
  warning, and dciodvfy (dicom3tools) finds no error in the SR, the Parametric Map or the capture;
* the algorithm is named as AIR asks (Contributing Equipment, TID 4019), and the Device UID changes
  when the checkpoint's weights change (a copy with one tensor rewritten through safetensors);
* the Parametric Map's values are the explainer's heatmap stretched to the source's grid;
* a reader's decision makes the report VERIFIED with the reader as Verifying Observer;
* the SR, capture and map go into a real Orthanc by C-STORE and come back by DICOMweb (the Orthanc
  of ``tests/test_pacs.py``), and ``engine.predict --dicom-out`` writes all three.

Debian's ``pixelmed-apps``, ``dicom3tools``, ``orthanc`` and ``orthanc-dicomweb`` (``make pacs``).
"""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pydicom
import pytest

from engine.pacs import dicom_out
from engine.pacs.algorithm import PROCESSING_ALGORITHM, identity_for, uid_from_digest, weights_sha256
from engine.pacs.dicom_out import Review, ResultWriter, file_name

try:                                       # tests/ is on sys.path under pytest's default import mode
    pacs_tests = importlib.import_module("test_pacs")
except ImportError:
    pacs_tests = importlib.import_module("tests.test_pacs")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "models" / "default"
SAMPLE_DICOMS = sorted((ROOT / "assets" / "sample" / "dicom").glob("*.dcm"))
PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")      # Debian's libpixelmed-java (pixelmed-apps)
JAVA = shutil.which("java")
DCIODVFY = shutil.which("dciodvfy")
STANDARD_SCHEMES = {"DCM", "SCT", "UCUM", "UMLS", "RFC5646", "99IHE"}
REVIEW = Review("disagree", "Dr A. Reader", "2026-01-02T03:04:05+00:00")

needs_pixelmed = pytest.mark.skipif(
    not (PIXELMED_JAR.exists() and JAVA), reason="Pixelmed is missing: apt-get install -y --no-install-recommends "
                                                 "pixelmed-apps (make pacs)")
needs_dciodvfy = pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is missing: apt-get install dicom3tools")


def pixelmed_sr(path: Path) -> tuple[list[str], list[str], str]:
    """Errors and warnings of Pixelmed's DicomSRValidator on ``path``, and its whole output."""
    cmd = [JAVA, "-Djdk.xml.xpathExprOpLimit=0", "-Djdk.xml.xpathExprGrpLimit=0", "-Djdk.xml.xpathTotalOpLimit=0",
           "-cp", str(PIXELMED_JAR), "com.pixelmed.validate.DicomSRValidator", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    lines = text.splitlines()
    return [x for x in lines if x.startswith("Error")], [x for x in lines if x.startswith("Warning")], text


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [x for x in (out.stdout + out.stderr).splitlines() if x.startswith("Error")]


# ------------------------------------------------------------------------------------------------
# The shipped model on the real samples, once for the module

@pytest.fixture(scope="module")
def scored():
    """The writer (shipped model, card threshold) and each sample's bytes and prediction with images."""
    from engine.inference.predictor import Predictor
    from engine.inputs.sources import InputItem
    predictor = Predictor.from_checkpoint(MODEL)
    items = [InputItem(p.name, lambda p=p: p.read_bytes()) for p in SAMPLE_DICOMS]
    predictions = list(predictor.predict_stream(items, keep_images=True))
    assert [p.status for p in predictions] == ["ok", "ok"], [p.message for p in predictions]
    writer = ResultWriter(predictor)
    return SimpleNamespace(writer=writer, predictor=predictor,
                           cases=[(p.read_bytes(), pred) for p, pred in zip(SAMPLE_DICOMS, predictions)])


@pytest.fixture(scope="module")
def written(scored, tmp_path_factory):
    """[SR, SC, PM] per sample, the first with a reader's decision, saved; paths by (sample, kind)."""
    folder = tmp_path_factory.mktemp("air")
    out = {}
    for i, (data, pred) in enumerate(scored.cases):
        objects = scored.writer.objects(data, pred, REVIEW if i == 0 else None)
        assert [str(ds.SOPClassUID) for ds in objects] == \
            [dicom_out.COMPREHENSIVE_SR, dicom_out.SECONDARY_CAPTURE, dicom_out.PARAMETRIC_MAP]
        for ds in objects:
            path = folder / f"{i}-{file_name(ds)}"
            ds.save_as(path, enforce_file_format=True)
            out[(i, file_name(ds)[:2])] = path
    return out


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def _codes(ds):
    """Every coded entry anywhere in ``ds`` (sequences included)."""
    for elem in ds.iterall():
        if elem.VR == "SQ":
            for item in elem.value:
                if "CodingSchemeDesignator" in item:
                    yield item


# ------------------------------------------------------------------------------------------------
# Validation

@needs_pixelmed
def test_pixelmed_finds_no_error_and_no_warning_in_the_sr(written):
    for i in (0, 1):
        errors, warnings, text = pixelmed_sr(written[(i, "sr")])
        assert "Found Root Template TID_1500" in text, text
        assert not errors, text
        assert not warnings, text


@needs_dciodvfy
def test_dciodvfy_finds_no_error_in_the_sr_the_map_and_the_capture(written):
    for (i, kind), path in written.items():
        assert not dciodvfy_errors(path), (i, kind, dciodvfy_errors(path))


# ------------------------------------------------------------------------------------------------
# What the report says

def test_the_sr_names_the_algorithm_and_codes_the_finding(scored, written):
    import highdicom as hd
    writer = scored.writer
    for i, (data, pred) in enumerate(scored.cases):
        ds = pydicom.dcmread(written[(i, "sr")])
        source = dicom_out.source_header(data)
        # IHE AIR: the algorithm in Contributing Equipment and in the Equipment module
        equipment = next(e for e in ds.ContributingEquipmentSequence if "DeviceUID" in e)
        purpose = equipment.PurposeOfReferenceCodeSequence[0]
        assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == \
            (PROCESSING_ALGORITHM.value, "99IHE", "Processing Algorithm")
        assert equipment.Manufacturer == ds.Manufacturer == dicom_out.MANUFACTURER
        assert equipment.ManufacturerModelName == ds.ManufacturerModelName == writer.identity.name[:64]
        assert equipment.SoftwareVersions == writer.model_version
        assert equipment.DeviceUID == writer.identity.device_uid == uid_from_digest(weights_sha256(MODEL))
        items = list(_walk(ds.ContentSequence))
        by_code = {}
        for item in items:
            by_code.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(item)
        assert by_code["121012"][0].UID == writer.identity.device_uid          # Device Observer UID
        assert by_code["121058"][0].ConceptCodeSequence[0].CodeValue == "363679005"   # CID 100
        # TID 4019: name, version, the operating point as parameters
        assert by_code["111001"][0].TextValue == writer.identity.name
        assert by_code["111003"][0].TextValue == writer.model_version
        finding = writer.finding(pred.probability, pred.warnings, None, pred.metadata.age_band)
        params = {x.TextValue for x in by_code["111002"]}
        assert {f"decision threshold {finding.threshold:.6g}", f"operating point: {finding.threshold_origin}"} <= params
        # the finding, the probability, the threshold, the algorithm's call, the source image
        group = hd.sr.srread(written[(i, "sr")]).content.get_image_measurement_groups()[0]
        assert group.finding_type.value == "233604007"
        values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        assert values["122157"] == (pytest.approx(pred.probability, abs=1e-6), "1")
        assert values["122411"] == (pytest.approx(finding.threshold, abs=1e-6), "1")
        assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
        call = next(x for x in by_code["233604007"] if x.ValueType == "CODE" and "ConceptCodeSequence" in x)
        assert call.ConceptCodeSequence[0].CodeValue == ("52101004" if finding.flagged else "272519000")
        texts = [x.TextValue for x in by_code["121106"]]
        assert texts[0].startswith("NOT FOR DIAGNOSTIC USE")
        assert any("not a diagnosis" in t for t in texts)
        # no private code left anywhere
        assert {c.CodingSchemeDesignator for c in _codes(ds)} <= STANDARD_SCHEMES


def test_a_readers_decision_verifies_the_report(scored, written):
    reviewed = pydicom.dcmread(written[(0, "sr")])
    assert (reviewed.VerificationFlag, reviewed.PreliminaryFlag, reviewed.CompletionFlag) == \
        ("VERIFIED", "FINAL", "COMPLETE")
    observer = reviewed.VerifyingObserverSequence[0]
    assert str(observer.VerifyingObserverName) == REVIEW.reviewer
    assert observer.VerificationDateTime == "20260102030405+0000"
    texts = [x.TextValue for x in _walk(reviewed.ContentSequence) if x.ValueType == "TEXT"]
    assert any(t.startswith("Reviewer decision: disagree by Dr A. Reader") for t in texts)

    unreviewed = pydicom.dcmread(written[(1, "sr")])
    assert (unreviewed.VerificationFlag, unreviewed.PreliminaryFlag) == ("UNVERIFIED", "PRELIMINARY")
    assert "VerifyingObserverSequence" not in unreviewed

    data, pred = scored.cases[1]
    anonymous = scored.writer.objects(data, pred, Review("agree"))[0]      # a decision with no name
    assert (anonymous.VerificationFlag, anonymous.PreliminaryFlag) == ("UNVERIFIED", "FINAL")


# ------------------------------------------------------------------------------------------------
# The Device UID follows the weights

def _rewrite_one_tensor(folder: Path) -> None:
    """Rewrite ``folder/model.safetensors`` through safetensors with one weight nudged (still loadable)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file
    path = folder / "model.safetensors"
    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k, v in tensors.items() if v.dtype.kind == "f" and k.endswith("weight"))
    nudged = tensors[name].copy()
    nudged.flat[0] += np.asarray(1e-3, dtype=nudged.dtype)
    tensors[name] = nudged
    save_file(tensors, str(path), metadata=metadata)


def test_the_device_uid_changes_when_the_weights_change(scored, tmp_path):
    from engine.model.checkpoint import load_checkpoint, read_card
    same, changed = tmp_path / "same", tmp_path / "changed"
    shutil.copytree(MODEL, same)
    shutil.copytree(MODEL, changed)
    _rewrite_one_tensor(changed)
    load_checkpoint(changed)                                     # still a valid checkpoint

    def writer_for(folder: Path) -> ResultWriter:
        return ResultWriter(SimpleNamespace(card=read_card(folder), checkpoint=folder))

    original = scored.writer.identity.device_uid
    assert writer_for(same).identity.device_uid == original      # deterministic: same bytes, same UID
    new = writer_for(changed)
    assert new.identity.device_uid != original
    assert pydicom.uid.UID(new.identity.device_uid).is_valid and new.identity.device_uid.startswith("2.25.")
    assert new.identity.weights == f"sha256:{weights_sha256(changed)}"
    # the report written with the new weights says so, and is a new instance
    data, pred = scored.cases[0]
    finding = new.finding(pred.probability)
    sr = dicom_out.structured_report(dicom_out.source_header(data), finding, new.identity)
    assert sr.ContributingEquipmentSequence[0].DeviceUID == new.identity.device_uid
    old = dicom_out.structured_report(dicom_out.source_header(data), finding, scored.writer.identity)
    assert sr.SOPInstanceUID != old.SOPInstanceUID
    # without weights (a network built in memory), a UID from the name and version, said so
    bare = identity_for("m", "1")
    assert bare.device_uid.startswith("2.25.") and "no weights" in bare.weights


# ------------------------------------------------------------------------------------------------
# The parametric map

def test_the_parametric_map_holds_the_heatmap_on_the_source_grid(scored, written):
    import highdicom as hd
    for i, (data, pred) in enumerate(scored.cases):
        source = dicom_out.source_header(data)
        pm = pydicom.dcmread(written[(i, "pm")])
        assert (pm.Rows, pm.Columns, pm.NumberOfFrames) == (source.Rows, source.Columns, 1)
        assert pm.StudyInstanceUID == source.StudyInstanceUID and pm.SeriesInstanceUID != source.SeriesInstanceUID
        heat = scored.writer.explainer.explain_images([pred.model_input])[0]      # Review's map
        expected = np.clip(cv2.resize(heat, (source.Columns, source.Rows), interpolation=cv2.INTER_LINEAR), 0, 1)
        values = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(pm.Rows, pm.Columns)
        # equal, or within float tolerance where a float32 backend's layer3 output gave it
        np.testing.assert_allclose(values, expected, atol=1e-4 if scored.writer.uses_stage_input(pred) else 1e-6)
        assert values.min() >= 0.0 and values.max() <= 1.0 and values.max() > 0.5
        # highdicom reads it back, and the mapping is the Grad-CAM one
        back = hd.pm.ParametricMap.from_dataset(pm)
        mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
        assert (mapping.LUTLabel, mapping.MeasurementUnitsCodeSequence[0].CodeValue) == ("GRADCAM", "1")
        assert "Grad-CAM evidence for pneumonia" in mapping.LUTExplanation
        # on the source: referenced, and in a frame of reference (its own: the samples have none)
        refs = pm.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence
        assert refs[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert "FrameOfReferenceUID" not in source and pm.FrameOfReferenceUID
        assert pm.ContentQualification == "RESEARCH" and "NOT FOR DIAGNOSTIC USE" in pm.SeriesDescription
        algorithm = [e for e in pm.ContributingEquipmentSequence
                     if e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
        assert [e.DeviceUID for e in algorithm] == [scored.writer.identity.device_uid]
        for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
            assert pm.get(key) == source.get(key), key
        assert "InstitutionName" not in pm


def test_a_heatmap_the_caller_already_has_is_used_not_computed_again(scored):
    """Review's cached Grad-CAM goes into the map and the capture as given (the send does not run
    Grad-CAM again); a map that does not fit the network input is refused, naming the file."""
    data, pred = scored.cases[0]
    computed = scored.writer.heat(pred)
    given = np.ascontiguousarray(np.flipud(computed))                   # the same values, somewhere else
    source = dicom_out.source_header(data)
    pm = scored.writer.objects(data, pred, heat=given)[2]
    values = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(pm.Rows, pm.Columns)
    expected = np.clip(cv2.resize(given, (source.Columns, source.Rows), interpolation=cv2.INTER_LINEAR), 0, 1)
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert not np.allclose(given, computed)
    with pytest.raises(ValueError, match=f"{pred.name}: a heatmap of shape \\(7, 7\\)"):
        scored.writer.objects(data, pred, heat=np.zeros((7, 7), np.float32))


def test_a_stored_score_is_reused_and_the_file_decoded_for_its_images_only(scored, tmp_path):
    """The PACS send of a scored study reuses the store's result for this model (no second run of the
    network): the SR carries the stored probability, and the capture is the one the full path draws."""
    import highdicom as hd
    from engine.inputs.sources import InputItem
    from engine.pacs.send import results_for_study
    from engine.worklist.ingest import ingest
    from engine.worklist.store import Result, Store
    data, pred = scored.cases[0]
    store = Store(tmp_path / "store")
    ingest(store, None, [InputItem(pred.name, lambda: data)], source="test")
    stored = Result("ok", 0.123456, "", ("a stored warning",), pred.metadata)
    store.put_result(pred.sha256, "this-model", stored)
    [row] = store.studies(None, "this-model")
    recalled = scored.predictor.recall(InputItem(row.name, lambda: data, sha256=row.sha256), 0.123456)
    np.testing.assert_array_equal(recalled.model_input, pred.model_input)          # the same decode
    np.testing.assert_array_equal(recalled.image.pixels, pred.image.pixels)
    sr, sc, _ = results_for_study(store, row, scored.writer, review=REVIEW)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    group = hd.sr.srread(path).content.get_image_measurement_groups()[0]
    values = {m.name.value: m.value for m in group.get_measurements()}
    assert values["122157"] == pytest.approx(0.123456, abs=1e-9)                  # the stored score
    assert pred.probability != pytest.approx(0.123456, abs=1e-3)
    same_score = dataclasses.replace(pred, result=dataclasses.replace(pred.result, probability=0.123456,
                                                                      warnings=("a stored warning",)))
    full = scored.writer.objects(data, same_score, REVIEW)[1]        # the capture is labelled with the score
    drawn, recalled_sc = (np.frombuffer(x.PixelData, np.uint8).astype(int) for x in (full, sc))
    assert np.abs(drawn - recalled_sc).max() <= (1 if scored.writer.uses_stage_input(pred) else 0)
    # the outbox's rebuild after a restart reuses it too, given the receiver's model key
    from engine.pacs.outbox import rebuild
    entry = SimpleNamespace(id=1, sha256=row.sha256)
    for key, expected in (("this-model", 0.123456), ("", pred.probability)):    # no key: scored again
        rebuilt = rebuild(store, scored.writer, entry, key)[0]
        rebuilt.save_as(path, enforce_file_format=True)
        group = hd.sr.srread(path).content.get_image_measurement_groups()[0]
        assert {m.name.value: m.value for m in group.get_measurements()}["122157"] == \
            pytest.approx(expected, abs=1e-6), key


# ------------------------------------------------------------------------------------------------
# Into a PACS and back; the command line

@pacs_tests.needs_orthanc
def test_the_sr_map_and_capture_go_into_orthanc_and_come_back(scored, tmp_path):
    from dicomweb_client.api import DICOMwebClient
    from engine.pacs.send import parse_destination, send
    orthanc = pacs_tests.Orthanc(tmp_path, pacs_tests._free_port())
    try:
        data, pred = scored.cases[0]
        source = dicom_out.source_header(data)
        orthanc.upload(data)
        objects = scored.writer.objects(data, pred, REVIEW)
        send(objects, parse_destination(f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"), "TRIAGE")
        web = DICOMwebClient(orthanc.dicomweb)
        study = str(source.StudyInstanceUID)
        found = {}
        for series in web.search_for_series(study):
            uid = series["0020000E"]["Value"][0]
            for inst in web.search_for_instances(study, uid):
                sop = inst["00080018"]["Value"][0]
                found[sop] = web.retrieve_instance(study, uid, sop)
        assert {o.SOPInstanceUID for o in objects} <= set(found), "a result object is missing in Orthanc"
        sr, sc, pm = (found[o.SOPInstanceUID] for o in objects)
        assert sr.VerificationFlag == "VERIFIED" and sr.ContentSequence == objects[0].ContentSequence
        assert str(pm.SOPClassUID) == dicom_out.PARAMETRIC_MAP
        np.testing.assert_array_equal(np.frombuffer(pm.FloatPixelData, "<f4"),
                                      np.frombuffer(objects[2].FloatPixelData, "<f4"))
        assert sc.BurnedInAnnotation == "YES"
    finally:
        pacs_tests._stop(orthanc.proc)


def test_predict_dicom_out_writes_the_sr_the_map_and_the_capture(tmp_path):
    out = tmp_path / "dicom"
    done = subprocess.run([sys.executable, "-m", "engine.predict", str(SAMPLE_DICOMS[1]), "--out",
                           str(tmp_path / "r.csv"), "--dicom-out", str(out), "--checkpoint", str(MODEL), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    kinds = sorted(p.name[:2] for p in out.glob("*.dcm"))
    assert kinds == ["pm", "sc", "sr"], kinds
    assert "3 DICOM result object(s)" in done.stderr

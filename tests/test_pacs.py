"""Studies from a real PACS and results back to it: Orthanc, the receiver, DICOMweb, SR and capture.

A real Orthanc (Debian's ``orthanc`` and ``orthanc-dicomweb``, installed by ``make test``) is started
by a fixture on 127.0.0.1 with a temporary storage folder and a configuration written here, and
stopped by its PID; the receiver runs as a user runs it (``python -m engine.receive``). No mocks.

End to end: the two real DICOMs of ``assets/sample/dicom`` go from Orthanc to the receiver
(``POST /modalities/triage/store``), appear scored in the store's inbox, and their SR and heatmap
capture come back into Orthanc in the same study, where a DICOMweb query finds them; the SR's
probability is the CLI's for the same file. A CT and a corrupt radiograph are refused or reported
while the service stays up; a calling AE title off the allow-list is rejected.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import uid

from engine.pacs import dicom_out
from engine.pacs.dicom_out import Finding, Review, heatmap_capture, source_header, structured_report

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DICOMS = sorted((ROOT / "assets" / "sample" / "dicom").glob("*.dcm"))
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
DCIODVFY = shutil.which("dciodvfy")
PY = sys.executable

needs_orthanc = pytest.mark.skipif(
    not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()),
    reason="Debian's orthanc and orthanc-dicomweb are missing: apt-get install -y --no-install-recommends "
           "orthanc orthanc-dicomweb (make pacs)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(predicate, timeout: float, what: str, interval: float = 0.3):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
    return proc.returncode


def _source_identity() -> list[str]:
    """Identifier values of the sample files (none may reach a log)."""
    values = []
    for path in SAMPLE_DICOMS:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for key in ("PatientName", "PatientID", "AccessionNumber", "PatientBirthDate"):
            v = str(ds.get(key, "") or "").strip()
            if len(v) > 3 and v != "19010101":
                values.append(v)
    return values


# ------------------------------------------------------------------------------------------------
# Writing the objects (no server needed)

def _finding(**kw) -> Finding:
    base = dict(probability=0.8123456, threshold=0.656, threshold_origin="the model card's decision threshold",
                model_name="ResNet18+CBAM", model_version="0.1.0",
                warnings=("outside the training population: an adult",))
    base.update(kw)
    return Finding(**base)


@pytest.fixture(scope="module")
def sources() -> list[pydicom.Dataset]:
    return [source_header(p.read_bytes(), p.name) for p in SAMPLE_DICOMS]


def test_sr_round_trip_through_pydicom_and_highdicom(sources, tmp_path):
    import highdicom as hd
    src = sources[0]
    review = Review("disagree", "Dr Reviewer", "2026-01-01T10:00:00+00:00")
    sr = structured_report(src, _finding(review=review))
    path = tmp_path / dicom_out.file_name(sr)
    sr.save_as(path, enforce_file_format=True)

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == dicom_out.COMPREHENSIVE_SR
    assert back.StudyInstanceUID == src.StudyInstanceUID
    assert back.SeriesInstanceUID != src.SeriesInstanceUID
    for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber"):
        assert back.get(key) == src.get(key), key
    assert (back.CompletionFlag, back.VerificationFlag, back.PreliminaryFlag) == ("COMPLETE", "VERIFIED", "FINAL")
    assert str(back.VerifyingObserverSequence[0].VerifyingObserverName) == "Dr Reviewer"
    assert back.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert back.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99IHE"   # no private code

    report = hd.sr.srread(path)                       # highdicom parses it back as TID 1500
    group = report.content.get_image_measurement_groups()[0]
    assert group.finding_type.value == "233604007"
    values = {m.name.meaning: m.value for m in group.get_measurements()}
    assert values == {"Probability": pytest.approx(0.812346), "Threshold Value": pytest.approx(0.656)}
    assert not group.get_qualitative_evaluations()            # in the report's own container (TID 1500 row 12)
    assert group.source_images[0].referenced_sop_instance_uid == src.SOPInstanceUID
    evaluations = next(c for c in back.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    calls = {c.ConceptNameCodeSequence[0].CodeValue: c.ConceptCodeSequence[0].CodeMeaning
             for c in evaluations.ContentSequence if c.ValueType == "CODE"}
    assert calls == {"233604007": "Present"}                  # pneumonia, the algorithm's call at 0.656
    texts = [c.TextValue for c in evaluations.ContentSequence if c.ValueType == "TEXT" and c.ConceptNameCodeSequence[0]
             .CodeValue == "121106"]
    assert any(t.startswith("NOT FOR DIAGNOSTIC USE") for t in texts)
    assert "Threshold origin: the model card's decision threshold" in texts
    assert "Warning: outside the training population: an adult" in texts
    assert any(t.startswith("Reviewer decision: disagree by Dr Reviewer") for t in texts)

    unreviewed = structured_report(src, _finding(probability=0.2))
    assert unreviewed.PreliminaryFlag == "PRELIMINARY"
    assert unreviewed.SOPInstanceUID != sr.SOPInstanceUID
    assert structured_report(src, _finding(probability=0.2)).SOPInstanceUID == unreviewed.SOPInstanceUID


def test_heatmap_capture_is_labelled_and_files_with_the_study(sources):
    src = sources[1]
    picture = np.zeros((300, 600, 3), np.uint8)
    picture[:, 300:, 0] = 200
    sc = heatmap_capture(src, picture, _finding())
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.BurnedInAnnotation == "YES"
    assert "NOT FOR DIAGNOSTIC USE" in sc.ImageComments and "NOT FOR DIAGNOSTIC USE" in sc.SeriesDescription
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.PhotometricInterpretation == "RGB" and sc.Columns == 600 and sc.Rows > 300
    band = sc.pixel_array[: sc.Rows - 300]
    assert band.any(), "the label band has no text"
    np.testing.assert_array_equal(sc.pixel_array[sc.Rows - 300:], picture)
    # Identity copied, nothing new: every identifying attribute of the capture is the source's.
    for key in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "InstitutionName",
                "ReferringPhysicianName", "OtherPatientIDs", "PatientAddress"):
        assert sc.get(key) in (src.get(key), None, ""), key


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy is missing: apt-get install dicom3tools (make pacs)")
def test_dciodvfy_finds_no_error(sources, tmp_path):
    for src in sources:
        for ds in (structured_report(src, _finding(review=Review("agree", "R"))),
                   heatmap_capture(src, np.full((64, 128, 3), 90, np.uint8), _finding())):
            path = tmp_path / dicom_out.file_name(ds)
            ds.save_as(path, enforce_file_format=True)
            out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
            errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
            assert not errors, f"{path.name}: {errors}"


def test_destinations_parse():
    from engine.pacs.send import parse_destination
    d = parse_destination("ORTHANC@127.0.0.1:4242")
    assert (d.kind, d.aet, d.host, d.port) == ("dimse", "ORTHANC", "127.0.0.1", 4242)
    assert parse_destination("http://pacs:8042/dicom-web/").url == "http://pacs:8042/dicom-web"
    for bad in ("ORTHANC@host", "@h:1", "A@h:0", "x" * 17 + "@h:1", "ftp://x"):
        with pytest.raises(ValueError):
            parse_destination(bad)


# ------------------------------------------------------------------------------------------------
# A real Orthanc and the receiver

class Orthanc:
    def __init__(self, folder: Path, receiver_port: int, *, http_port: int = 0, dicom_port: int = 0) -> None:
        self.http_port, self.dicom_port = http_port or _free_port(), dicom_port or _free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        storage = folder / "storage"
        storage.mkdir(parents=True)
        config = {
            "Name": "pytest-orthanc", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "SaveJobs": False,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "DicomModalities": {"triage": ["TRIAGE", "127.0.0.1", receiver_port]},
            "DicomAssociationCloseDelay": 0, "DicomScuTimeout": 30, "ConcurrentJobs": 1,
        }
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2))
        self.log = folder / "orthanc.log"
        self.proc = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, cwd=folder)
        import requests
        self.http = requests.Session()

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited ({self.proc.returncode}): {self.log.read_text()[-2000:]}")
            try:
                return self.http.get(f"{self.url}/system", timeout=2).ok
            except requests.RequestException:
                return False
        _wait(up, 60, "Orthanc to answer")
        plugins = self.http.get(f"{self.url}/plugins").json()
        assert "dicom-web" in plugins, plugins

    def upload(self, data: bytes) -> dict:
        r = self.http.post(f"{self.url}/instances", data=data, timeout=30)
        r.raise_for_status()
        return r.json()

    def store_to(self, modality: str, ids: list[str]):
        return self.http.post(f"{self.url}/modalities/{modality}/store",
                              json={"Resources": ids, "Synchronous": True}, timeout=120)

    def series_modalities(self, study_id: str) -> list[str]:
        return [s["MainDicomTags"].get("Modality", "") for s in
                self.http.get(f"{self.url}/studies/{study_id}/series", timeout=10).json()]


@pytest.fixture(scope="module")
def pacs_setup(tmp_path_factory):
    """Orthanc and ``python -m engine.receive`` (forwarding back to Orthanc), both stopped by PID."""
    folder = tmp_path_factory.mktemp("pacs")
    receiver_port = _free_port()
    orthanc = Orthanc(folder, receiver_port)
    store_dir = folder / "store"
    log = folder / "receiver.log"
    env = {**os.environ, "CXR_STORE_DIR": str(store_dir)}
    receiver = subprocess.Popen(
        [PY, "-m", "engine.receive", "--store", str(store_dir), "--port", str(receiver_port), "--aet", "TRIAGE",
         "--allow-aet", "ORTHANC", "--allow-aet", "PYTEST", "--forward-to",
         f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)

    def listening():
        if receiver.poll() is not None:
            raise AssertionError(f"the receiver exited ({receiver.returncode}): {log.read_text()[-3000:]}")
        return "listening on" in log.read_text()
    try:
        _wait(listening, 180, "the receiver to listen")
        yield {"orthanc": orthanc, "receiver": receiver, "port": receiver_port, "store": store_dir, "log": log,
               "folder": folder}
    finally:
        rc = _stop(receiver)
        _stop(orthanc.proc)
    assert rc == 0, f"the receiver exited {rc} on SIGTERM: {log.read_text()[-3000:]}"


def _echo(port: int, calling: str = "PYTEST") -> bool:
    from pynetdicom import AE
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="TRIAGE")
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def _store_rows(store_dir: Path):
    from engine.worklist.ingest import model_key
    from engine.worklist.store import Store
    return Store(store_dir).studies(None, model_key())


@needs_orthanc
def test_end_to_end_orthanc_to_receiver_and_results_back(pacs_setup, tmp_path):
    from dicomweb_client.api import DICOMwebClient
    orthanc, store_dir, log = pacs_setup["orthanc"], pacs_setup["store"], pacs_setup["log"]
    assert orthanc.http.post(f"{orthanc.url}/modalities/triage/echo", json={}, timeout=30).ok

    uploaded = [orthanc.upload(p.read_bytes()) for p in SAMPLE_DICOMS]
    r = orthanc.store_to("triage", [u["ID"] for u in uploaded])
    assert r.ok, r.text
    assert r.json()["FailedInstancesCount"] == 0 and r.json()["InstancesCount"] == 2

    # Scored in the store's inbox (every worklist lists it), grouped by study, no UID in the name.
    def scored():
        done = [x for x in _store_rows(store_dir) if x.result is not None]
        return done if len(done) >= 2 else None
    rows = _wait(scored, 120, "two scored inbox rows")
    assert all(r.inbox and r.source == "dicom-receiver" and r.result.status == "ok" for r in rows)
    assert all(r.name.startswith("ORTHANC/study-") and "/image-" in r.name for r in rows)
    headers = [source_header(p.read_bytes()) for p in SAMPLE_DICOMS]
    for r in rows:
        assert not any(str(h.StudyInstanceUID) in r.name or str(h.SOPInstanceUID) in r.name for h in headers)

    # The SR and the capture come back into Orthanc, in each source's study.
    for u in uploaded:
        _wait(lambda: {"SR", "OT"} <= set(orthanc.series_modalities(u["ParentStudy"])), 120,
              "the SR and capture in Orthanc")

    # Found by a DICOMweb query; the SR's probability is the store's and the CLI's for the same file.
    cli_out = tmp_path / "cli"
    done = subprocess.run([PY, "-m", "engine.predict", *map(str, SAMPLE_DICOMS), "--out", str(cli_out / "r.csv"),
                           "--dicom-out", str(cli_out / "dicom"), "--quiet"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    import csv
    cli = {row["file"]: float(row["probability"]) for row in csv.DictReader((cli_out / "r.csv").open())}
    web = DICOMwebClient(orthanc.dicomweb)
    import highdicom as hd
    from engine.worklist.store import Store
    stored = {str(source_header(Store(store_dir).read_file(r.sha256)).SOPInstanceUID): r.result.probability
              for r in rows}
    for path, header in zip(SAMPLE_DICOMS, headers):
        series = web.search_for_series(str(header.StudyInstanceUID), search_filters={"Modality": "SR"})
        assert len(series) == 1
        se = series[0]["0020000E"]["Value"][0]
        inst = web.search_for_instances(str(header.StudyInstanceUID), se)
        assert len(inst) == 1
        sr = web.retrieve_instance(str(header.StudyInstanceUID), se, inst[0]["00080018"]["Value"][0])
        assert sr.PatientID == header.PatientID and sr.PatientName == header.PatientName
        sr_path = tmp_path / f"{path.stem}-sr.dcm"
        sr.save_as(sr_path, enforce_file_format=True)
        group = hd.sr.srread(sr_path).content.get_image_measurement_groups()[0]
        assert group.source_images[0].referenced_sop_instance_uid == header.SOPInstanceUID
        prob = next(m.value for m in group.get_measurements() if m.name.value == "122157")
        assert prob == pytest.approx(cli[path.name], abs=2e-6), (path.name, prob, cli[path.name])
        assert prob == pytest.approx(stored[str(header.SOPInstanceUID)], abs=2e-6)
        # --dicom-out wrote the same SR (the UID is derived from the source and the result).
        assert (cli_out / "dicom" / f"sr-{sr.SOPInstanceUID}.dcm").exists()
        ot_series = web.search_for_series(str(header.StudyInstanceUID), search_filters={"Modality": "OT"})
        assert len(ot_series) == 2                            # the heatmap capture and its parametric map
        assert all("NOT FOR DIAGNOSTIC USE" in s["0008103E"]["Value"][0] for s in ot_series)

    text = log.read_text()
    for value in _source_identity():
        assert value not in text, "an identifier reached the receiver's log"
    assert "Traceback" not in text


@needs_orthanc
def test_ct_and_corrupt_files_are_refused_or_reported_and_the_service_stays_up(pacs_setup, dcm, xray):
    orthanc, store_dir, log = pacs_setup["orthanc"], pacs_setup["store"], pacs_setup["log"]
    ct = dcm.dataset(xray, modality="CT", body_part="CHEST", sop_class=uid.CTImageStorage)
    ct_id = orthanc.upload(dcm.to_bytes(ct))["ID"]
    r = orthanc.store_to("triage", [ct_id])
    assert not r.ok or r.json().get("FailedInstancesCount", 0) == 1, r.text
    _wait(lambda: "refused (0x0122): CT Image Storage" in log.read_text(), 30, "the CT refusal in the log")

    corrupt = dcm.garbage_fragment(dcm.dataset(xray, modality="CR", sop_class=uid.ComputedRadiographyImageStorage),
                                   uid.JPEGBaseline8Bit)
    bad_id = orthanc.upload(dcm.to_bytes(corrupt))["ID"]
    r = orthanc.store_to("triage", [bad_id])
    assert r.ok and r.json()["FailedInstancesCount"] == 0, r.text      # received and kept...
    from engine.pacs.send import study_name
    name = study_name("ORTHANC", corrupt.StudyInstanceUID, corrupt.SOPInstanceUID)
    row = _wait(lambda: next((x for x in _store_rows(store_dir) if x.name == name and x.result is not None), None),
                120, "the corrupt file's row")
    assert row.result.status == "error" and row.result.message              # ...and reported on its row
    assert pacs_setup["receiver"].poll() is None
    assert _echo(pacs_setup["port"])
    assert not any("CT" == (x.result.metadata.modality if x.result else None) for x in _store_rows(store_dir))
    text = log.read_text()
    for value in dcm.IDENTIFIERS.values():
        assert value not in text, "an identifier reached the receiver's log"


@needs_orthanc
def test_calling_ae_title_off_the_allow_list_is_rejected(pacs_setup):
    assert not _echo(pacs_setup["port"], calling="STRANGER")
    assert _echo(pacs_setup["port"], calling="PYTEST")
    assert "rejected" in pacs_setup["log"].read_text()


@needs_orthanc
def test_dicomweb_query_pull_and_stow_of_a_reviewed_report(pacs_setup, tmp_path, capsys):
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient
    from engine.pacs import send as pacs
    from engine.pacs.dicom_out import ResultWriter
    from engine.worklist.ingest import model_key, score_files
    from engine.inference.predictor import Predictor
    from engine.worklist.store import Store
    orthanc = pacs_setup["orthanc"]
    for p in SAMPLE_DICOMS:
        orthanc.upload(p.read_bytes())
    headers = {str(source_header(p.read_bytes()).StudyInstanceUID) for p in SAMPLE_DICOMS}

    assert pacs.main(["query", "--url", orthanc.dicomweb, "--modality", "CR"]) == 0
    printed = capsys.readouterr().out
    assert headers <= {line.split("\t")[0] for line in printed.splitlines()}
    assert not any(v in printed for v in _source_identity())      # identifiers only when asked

    store = Store(tmp_path / "store")
    assert len(pacs.pull(orthanc.dicomweb, store, modalities=("CR",))) >= 2    # and the corrupt one, if sent
    shas = [sha for study in sorted(headers)
            for sha in pacs.pull(orthanc.dicomweb, store, modalities=("CR",), study_uid=study)]
    assert len(shas) == 2
    predictor = Predictor.from_checkpoint()
    key = model_key()
    assert score_files(store, {s: s[:8] for s in shas}, predictor, key) == 2
    rows = [r for r in store.studies(None, key) if r.sha256 in shas]
    assert len(rows) == 2 and all(r.source == "dicomweb" and r.result.status == "ok" for r in rows)

    row = rows[0]
    store.record_decision(row.id, reviewer="Dr Test", decision="agree", probability=row.result.probability,
                          threshold=0.656, model="m")
    writer = ResultWriter(predictor)
    sent = pacs.send_study_results(store, row, writer, pacs.parse_destination(orthanc.dicomweb))
    assert sent == 3                                          # SR, capture, parametric map
    study = str(source_header(store.read_file(row.sha256)).StudyInstanceUID)
    web = DICOMwebClient(orthanc.dicomweb)
    found = []
    for se in web.search_for_series(study, search_filters={"Modality": "SR"}):
        s_uid = se["0020000E"]["Value"][0]
        for inst in web.search_for_instances(study, s_uid):
            ds = web.retrieve_instance(study, s_uid, inst["00080018"]["Value"][0])
            path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            assert hd.sr.srread(path).content.get_image_measurement_groups()[0].finding_type.value == "233604007"
            evaluations = next(c for c in ds.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "C0034375")
            call = next(c.ConceptCodeSequence[0].CodeMeaning for c in evaluations.ContentSequence if c.ValueType == "CODE")
            texts = [c.TextValue for c in evaluations.ContentSequence if c.ValueType == "TEXT"]
            found.append((ds.VerificationFlag, call, any(t.startswith("Reviewer decision: agree by Dr Test") for t in texts)))
    assert ("VERIFIED", "Absent", True) in found, found


def test_a_bounded_read_stops_at_the_limit_and_reads_no_further():
    from engine.pacs.send import _first_part, _read_bounded

    def endless():
        for _ in range(3):
            yield b"x" * 1000
        raise AssertionError("read past the limit")
    assert _read_bounded(endless(), 2500) is None
    assert _read_bounded(iter([b"ab", b"cd"]), 4) == bytearray(b"abcd")
    body = bytearray(b"--b1\r\nContent-Type: application/dicom\r\n\r\nDICOM BYTES\r\n--b1--")
    assert _first_part(body, 'multipart/related; type="application/dicom"; boundary=b1') == b"DICOM BYTES"
    assert _first_part(bytearray(b"raw"), "application/dicom") == b"raw"


@needs_orthanc
def test_a_pull_refuses_an_instance_over_the_limit_while_it_streams(pacs_setup, tmp_path, dcm, xray):
    """Issue 20: a 300 MB instance was pulled whole into memory and kept past the receiver's limit.
    With CXR_MAX_FILE_MB=1 for the pulling process: an instance just over it and one well over it are
    refused, each with its own row saying so and nothing kept; the small one beside them is pulled."""
    import numpy as np
    orthanc = pacs_setup["orthanc"]
    rng = np.random.default_rng(7)
    small = dcm.dataset(xray, modality="DX")
    just_over = dcm.dataset(rng.integers(0, 4096, (740, 740), dtype=np.uint16), modality="DX")
    well_over = dcm.dataset(rng.integers(0, 4096, (1300, 1300), dtype=np.uint16), modality="DX")
    for ds in (just_over, well_over):
        ds.StudyInstanceUID = small.StudyInstanceUID     # one study, three series
    sizes = [len(dcm.to_bytes(ds)) for ds in (small, just_over, well_over)]
    assert sizes[0] < 2 ** 20 < sizes[1] < 2 ** 20 + 64 * 1024 < 2 * 2 ** 20 < sizes[2]
    for ds in (small, just_over, well_over):
        orthanc.upload(dcm.to_bytes(ds))
    store_dir = tmp_path / "store"
    done = subprocess.run([PY, "-m", "engine.pacs", "pull", "--url", orthanc.dicomweb, "--store", str(store_dir),
                           "--study", str(small.StudyInstanceUID), "--modality", "DX", "--no-score"],
                          cwd=ROOT, env={**os.environ, "CXR_MAX_FILE_MB": "1", "CXR_STORE_DIR": str(store_dir)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "1 instance(s) retrieved" in done.stderr
    from engine.pacs.send import study_name
    from engine.worklist.store import Store
    rows = {r.name: r for r in Store(store_dir).studies(None, "any")}
    name = {key: study_name("dicomweb", str(ds.StudyInstanceUID), str(ds.SOPInstanceUID))
            for key, ds in (("small", small), ("just", just_over), ("well", well_over))}
    assert rows[name["small"]].sha256 and rows[name["small"]].read_error == ""
    for key in ("just", "well"):
        row = rows[name[key]]
        assert row.status == "refused" and row.sha256 == "", row
        assert "over the 1,048,576-byte limit for one image (CXR_MAX_FILE_MB)" in row.read_error \
            or "over the 1.0 MB limit for one image (CXR_MAX_FILE_MB)" in row.read_error, row.read_error
        assert row.read_error in done.stderr                # said per instance
    assert f"{sizes[1]:,} bytes is over" in rows[name["just"]].read_error
    assert len([p for p in (store_dir / "files").rglob("*") if p.is_file()]) == 1
    assert not any(str(ds.SOPInstanceUID) in done.stderr for ds in (small, just_over, well_over))


@needs_orthanc
def test_dashboard_pulls_from_the_pacs_and_sends_a_reviewed_study_back(pacs_setup, tmp_path, monkeypatch):
    """AppTest: Triage's PACS source pulls the sample studies; Review sends the reviewed one by STOW-RS."""
    from streamlit.testing.v1 import AppTest
    orthanc = pacs_setup["orthanc"]
    for p in SAMPLE_DICOMS:
        orthanc.upload(p.read_bytes())
    monkeypatch.setenv("CXR_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("CXR_DICOMWEB_URL", orthanc.dicomweb)
    monkeypatch.setenv("CXR_PACS_DESTINATION", orthanc.dicomweb)
    monkeypatch.setenv("CXR_INBOX_POLL_S", "0")
    monkeypatch.chdir(ROOT)
    at = AppTest.from_file(str(ROOT / "dashboard" / "Home.py"), default_timeout=180).run()
    at.switch_page("views/triage.py").run()
    assert not at.exception, [e.message for e in at.exception]
    at.selectbox(key="pacs_modality").set_value("CR").run()
    at.button(key="pacs_search").click().run()
    assert not at.exception, [e.message for e in at.exception]
    hits = next(d.value for d in at.dataframe if "study date" in d.value.columns)
    assert len(hits) >= 2
    shown = hits.to_csv()
    assert not any(v in shown for v in _source_identity())
    at.button(key="pacs_pull").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("retrieved into the inbox" in s.value for s in at.success)
    at.run()
    table = next(d.value for d in at.dataframe if "probability" in d.value.columns)
    assert (table["file"].str.startswith("dicomweb/study-")).sum() >= 2

    at.switch_page("views/review.py").run()
    assert not at.exception, [e.message for e in at.exception]
    assert at.button(key="send_pacs").disabled                      # not reviewed yet
    at.text_input(key="review_reviewer").input("Dr A. Reader").run()    # asked before the first decision
    next(b for b in at.button if b.key and b.key.startswith("review_agree_")).click().run()
    at.switch_page("views/review.py").run()
    # the agreed study moved on; go back to a reviewed one
    from engine.worklist.ingest import model_key
    from engine.worklist.store import Store
    store = Store(tmp_path / "store")
    reviewed = [r for r in store.studies(None, model_key()) if r.review_status != "unreviewed"]
    assert len(reviewed) == 1
    at.session_state["review_sha"] = reviewed[0].sha256
    at.run()
    assert not at.button(key="send_pacs").disabled
    at.button(key="send_pacs").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any(s.value.startswith("Sent 3 objects") for s in at.success), [e.value for e in at.error]


def test_text_outside_the_source_character_set_survives(sources, tmp_path):
    src = sources[0]                                       # ISO_IR 100 (Latin-1)
    sr = structured_report(src, _finding(threshold_origin="preset “sensitivity ≥ 0.95”",
                                         review=Review("agree", "Dr Łukasz")))
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    assert back.PatientName == src.PatientName
    def texts(items):
        for item in items:
            if "TextValue" in item:
                yield item.TextValue
            yield from texts(item.get("ContentSequence", []))
    text = "\n".join(texts(back.ContentSequence))
    assert "preset “sensitivity ≥ 0.95”" in text and "Dr Łukasz" in text


def _source_with(charset: str, name: bytes, **values) -> pydicom.Dataset:
    """A real sample's header with another Specific Character Set and raw Patient Name bytes."""
    import io
    ds = pydicom.dcmread(SAMPLE_DICOMS[1])
    ds.SpecificCharacterSet = charset
    ds[0x00100010].value = name
    for key, value in values.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return source_header(buf.getvalue(), "probe.dcm")


IR87_NAME = (b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=\x1b$B$d$^$@\x1b(B^\x1b$B$?$m$&\x1b(B")


def test_a_japanese_iso_2022_source_gets_results_in_utf8_with_its_name_transcoded(tmp_path):
    src = _source_with("\\ISO 2022 IR 87", IR87_NAME)          # DICOM PS3.5 annex H's own example
    assert str(src.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    objects = dicom_out.result_objects(src, _finding(), np.full((64, 128, 3), 90, np.uint8),
                                       np.linspace(0, 1, 64 * 64).reshape(64, 64), name="probe.dcm")
    assert len(objects) == 3
    for ds in objects:
        path = tmp_path / dicom_out.file_name(ds)
        ds.save_as(path, enforce_file_format=True)
        back = pydicom.dcmread(path)
        assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == str(src.PatientName)
        if DCIODVFY:
            out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
            assert not [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.parametrize("charset, name, values, named", [
    ("ISO_IR 999", b"M\xfcller^Hans", {}, "ISO_IR 999"),                    # a character set DICOM lacks
    ("ISO_IR 192", b"M\xc3\xbcller^\xff\xfeHans", {}, "does not decode"),   # not UTF-8 though it says so
    ("ISO_IR 100", b"Smith^John\r\nEvil", {}, "control characters"),       # CR/LF in a PN
    ("ISO_IR 100", b"Doe^Jane", {"SOPInstanceUID": "1." + "2" * 124}, "SOPInstanceUID is not a valid UID"),
])
def test_identity_a_result_cannot_carry_refuses_the_result_naming_file_and_attribute(charset, name, values, named):
    src = _source_with(charset, name, **values)
    with pytest.raises(dicom_out.ResultNotWritable) as caught:
        dicom_out.result_objects(src, _finding(), None, name="probe.dcm")
    message = str(caught.value)
    assert message.startswith("probe.dcm: ") and named in message and "no result object" in message
    assert not any(part in message for part in ("Hans", "Evil", "Jane", "2222"))    # never the value


@needs_orthanc
def test_the_send_command_reports_a_row_it_cannot_write_and_sends_the_rows_after_it(pacs_setup, tmp_path, capsys):
    import io
    from dicomweb_client.api import DICOMwebClient
    from engine.pacs import send as pacs
    from engine.inference.predictor import Predictor
    from engine.inputs.sources import InputItem
    from engine.worklist.ingest import ingest, model_key, score_files
    from engine.worklist.store import Store
    bad = pydicom.dcmread(SAMPLE_DICOMS[1])
    bad.PatientName = "Smith^John\r\nEvil"                      # CR/LF: no valid SR can carry it
    bad.SOPInstanceUID = bad.StudyInstanceUID = uid.generate_uid()
    buf = io.BytesIO()
    bad.save_as(buf)
    store = Store(tmp_path / "store")
    ingest(store, None, [InputItem("bad.dcm", lambda: buf.getvalue()),
                         InputItem("good.dcm", lambda: SAMPLE_DICOMS[0].read_bytes())], source="pytest")
    rows = store.studies(None, model_key())
    key = model_key()
    score_files(store, {r.sha256: r.name for r in rows}, Predictor.from_checkpoint(), key)
    rows = sorted(store.studies(None, key), key=lambda r: r.name)     # bad.dcm first
    assert [r.result.status for r in rows] == ["ok", "ok"]
    capsys.readouterr()
    code = pacs.main(["send", "--store", str(tmp_path / "store"), "--to", pacs_setup["orthanc"].dicomweb])
    err = capsys.readouterr().err
    assert code == 1, err
    assert f"study row {rows[0].id}: not sent: bad.dcm: its PatientName holds control characters" in err
    assert "3 object(s) sent" in err and "for 1 of 2 study row(s)" in err and "Evil" not in err
    good_study = str(source_header(SAMPLE_DICOMS[0].read_bytes()).StudyInstanceUID)
    web = DICOMwebClient(pacs_setup["orthanc"].dicomweb)
    assert web.search_for_series(good_study, search_filters={"Modality": "SR"})
    assert not web.search_for_series(str(bad.StudyInstanceUID))

"""Our AI results in OHIF, the open-source DICOMweb viewer, from a real Orthanc (issue 22).

A real chest DICOM of ``assets/sample/dicom`` is scored by the shipped model; its Comprehensive SR
(TID 1500), heatmap capture and Grad-CAM Parametric Map (``engine.pacs.dicom_out.ResultWriter``) go
into a real Orthanc by STOW-RS (``engine.pacs.send.send``, what the send command does), beside the
source. OHIF 3.13.2 (``make viewer``: the prebuilt ``dist/`` of the npm package ``@ohif/app``) is
served by ``tests/viewer_helpers.ViewerServer`` on 127.0.0.1, which forwards ``/dicom-web`` to
Orthanc's DICOMweb root, and Debian's Chromium opens it as a reader would:

* the study list shows the study, its modalities and its four instances;
* the viewer's study browser lists the source, the capture, the map (as OHIF's ``PMAP``) and the SR
  under our series descriptions; the SR opens in OHIF's SR viewport over the source image, with the
  probability and the threshold as text beside the whole-image outline (OHIF shows SR measurements
  only with spatial coordinates: ``dicom_out`` gives the probability the whole image as a polyline);
* the map is offered but OHIF 3.13.2 does not place it on this radiograph: the source has no Image
  Orientation (Patient), OHIF then takes it as axial ([1,0,0,0,1,0]) while the map carries the coronal
  plane of the source's Patient Orientation, and OHIF refuses maps "oblique to the acquisition plane".
  The test asserts that refusal, so that a newer OHIF that places it fails here and docs/CONFORMANCE.md
  gets updated.

Skips only when OHIF's ``dist/`` is not installed (``make viewer``), or, as ``tests/test_pacs.py``,
when Orthanc is. Screenshots land in ``test-artifacts/viewer/``. 20-40 s on two busy cores.
"""

from __future__ import annotations

import importlib
import time
from pathlib import Path

import pydicom
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from engine.pacs import dicom_out

try:                                       # tests/ is on sys.path under pytest's default import mode
    pacs_tests = importlib.import_module("test_pacs")
    viewer_helpers = importlib.import_module("viewer_helpers")
except ImportError:
    pacs_tests = importlib.import_module("tests.test_pacs")
    viewer_helpers = importlib.import_module("tests.viewer_helpers")

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "assets" / "models" / "default"
# The JPEG baseline sample: OHIF 3.13.2 shows its pixels. (The JPEG 2000 MONOCHROME1 sample's
# viewport and thumbnail stayed black in OHIF here: its study and SR text appear all the same.)
SOURCE = ROOT / "assets" / "sample" / "dicom" / "cr_chest_pa_mono2_jpeg_baseline.dcm"
ARTIFACTS = ROOT / "test-artifacts" / "viewer"
TIMEOUT_MS = 30_000

pytestmark = [
    pytest.mark.skipif(not (viewer_helpers.OHIF_DIST / "index.html").is_file(),
                       reason=f"OHIF {viewer_helpers.OHIF_VERSION} is not installed in "
                              f"{viewer_helpers.OHIF_DIST}: run `make viewer`"),
    pacs_tests.needs_orthanc,
]


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    """Orthanc holding the source and our SR, capture and map; the objects and the source's header."""
    from engine.inference.predictor import Predictor
    from engine.inputs.sources import InputItem
    from engine.pacs.send import parse_destination, send

    data = SOURCE.read_bytes()
    predictor = Predictor.from_checkpoint(MODEL)
    [prediction] = predictor.predict_stream([InputItem(SOURCE.name, lambda: data)], keep_images=True)
    assert prediction.status == "ok", prediction.message
    objects = dicom_out.ResultWriter(predictor).objects(data, prediction)
    assert [str(o.SOPClassUID) for o in objects] == \
        [dicom_out.COMPREHENSIVE_SR, dicom_out.SECONDARY_CAPTURE, dicom_out.PARAMETRIC_MAP]

    orthanc = pacs_tests.Orthanc(tmp_path_factory.mktemp("viewer-orthanc"), pacs_tests._free_port())
    try:
        orthanc.upload(data)
        send(objects, parse_destination(orthanc.dicomweb))          # STOW-RS, as `engine.pacs send`
        yield {"orthanc": orthanc, "objects": objects, "source": pydicom.dcmread(SOURCE, stop_before_pixels=True)}
    finally:
        pacs_tests._stop(orthanc.proc)


@pytest.fixture(scope="module")
def viewer(pacs):
    with viewer_helpers.ViewerServer(viewer_helpers.OHIF_DIST, pacs["orthanc"].dicomweb) as server:
        yield server
    assert not server.failed(), f"requests OHIF made that failed: {server.failed()}"


@pytest.fixture
def page(browser, viewer, request):
    """A fresh page (no stored state) whose console is kept; a screenshot whatever the outcome."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    pg = context.new_page()
    pg.console_lines = []
    pg.on("console", lambda m: pg.console_lines.append(f"{m.type}: {m.text}"))
    pg.on("pageerror", lambda e: pg.console_lines.append(f"pageerror: {e}"))
    try:
        yield pg
    finally:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            pg.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"))
            (ARTIFACTS / f"{request.node.name}.console.txt").write_text("\n".join(pg.console_lines))
        finally:
            context.close()


def _wait_console(page, needle: str, timeout_s: float) -> str:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        hits = [line for line in page.console_lines if needle in line]
        if hits:
            return hits[0]
        page.wait_for_timeout(250)
    raise AssertionError(f"no console line with {needle!r} within {timeout_s:.0f} s")


def _open_study(page, viewer, study_uid: str) -> None:
    page.goto(f"{viewer.url}/viewer?StudyInstanceUIDs={study_uid}")
    page.locator('[data-cy="series-description-label"]', has_text=dicom_out.SR_SERIES_DESCRIPTION) \
        .wait_for(timeout=TIMEOUT_MS)


def test_the_study_list_shows_the_study(page, viewer, pacs):
    source = pacs["source"]
    page.goto(f"{viewer.url}/")
    row = page.locator("tr", has_text=str(source.PatientID)).first
    row.wait_for(timeout=TIMEOUT_MS)
    cells = [c.strip() for c in row.locator("td").all_inner_texts()]
    assert str(source.PatientID) in cells
    modalities = next(c for c in cells if "\\" in c).split("\\")
    assert {"CR", "SR"} <= set(modalities), cells        # the map and the capture are OT
    assert "4" in cells, cells                           # the source, the SR, the capture and the map


def test_the_sr_opens_over_the_source_with_the_probability_and_threshold(page, viewer, pacs):
    sr = pacs["objects"][0]
    _open_study(page, viewer, str(sr.StudyInstanceUID))
    series = dict(zip(page.locator('[data-cy="series-description-label"]').all_inner_texts(),
                      page.locator('[data-cy="series-modality-label"]').all_inner_texts()))
    assert series.get(dicom_out.SR_SERIES_DESCRIPTION) == "SR", series
    assert series.get(dicom_out.SC_SERIES_DESCRIPTION) == "OT", series
    assert series.get(dicom_out.PM_SERIES_DESCRIPTION) == "PMAP", series    # OHIF's Parametric Map handler

    # The SR viewport draws the measurement group on the source image: its outline and, as text,
    # each numeric measurement (name: value to 2 decimals, unit "1"), from the SR's content tree.
    group = next(c for c in sr.ContentSequence if c.ConceptNameCodeSequence[0].CodeValue == "126010")
    values = {}
    for item in group.ContentSequence[0].ContentSequence:
        if item.ValueType == "NUM":
            values[item.ConceptNameCodeSequence[0].CodeMeaning] = float(item.MeasuredValueSequence[0].NumericValue)
    assert set(values) == {"Probability", "Threshold Value"}, values
    texts = [f"{name}: {value:.2f}" for name, value in values.items()]
    # On a loaded 2-core machine OHIF 3.13 sometimes draws the SR before its source image and then drops
    # the annotation ("Measurement is invalidated, skipping..." in the console) for good; a reader would
    # open it again, and so does the test, once.
    for attempt in (1, 2):
        if attempt == 2:
            _open_study(page, viewer, str(sr.StudyInstanceUID))
        page.get_by_text(dicom_out.SR_SERIES_DESCRIPTION).first.dblclick()
        badge = page.locator('[data-cy="ModalityLoadBadge-default"]')
        badge.wait_for(timeout=TIMEOUT_MS)
        assert badge.inner_text().strip() == "SR"
        try:
            page.get_by_text(texts[0]).first.wait_for(timeout=TIMEOUT_MS)
            break
        except PlaywrightTimeout:
            if attempt == 2 or not any("Measurement is invalidated" in line for line in page.console_lines):
                raise
    viewport = page.locator('[data-cy="viewport-pane"]').first
    for text in texts:
        page.get_by_text(text).first.wait_for(timeout=TIMEOUT_MS)
        assert text in viewport.inner_text(), viewport.inner_text()
    # OHIF draws it read-only: only SRs of its own tools can be loaded as tracked measurements.
    badge.hover()
    page.get_by_text("This structured report is not compatible with this application.").first \
        .wait_for(timeout=TIMEOUT_MS)


def test_the_parametric_map_is_offered_but_ohif_does_not_place_it_on_this_radiograph(page, viewer, pacs):
    pm = pacs["objects"][2]
    assert "ImageOrientationPatient" not in pacs["source"]      # a projection radiograph, as most are
    _open_study(page, viewer, str(pm.StudyInstanceUID))
    page.get_by_text(dicom_out.PM_SERIES_DESCRIPTION).first.dblclick()
    page.get_by_text("Loading Parametric Map").first.wait_for(timeout=TIMEOUT_MS)
    line = _wait_console(page, "Parametric maps", 30)
    assert "to the acquisition plane of the source data are not yet supported" in line, line

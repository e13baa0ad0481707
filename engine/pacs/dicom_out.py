"""Results as DICOM: a Structured Report and a Secondary Capture of the heatmap, filed with the study.

For each scored DICOM image, two new instances in the source's study (same Study Instance UID, the
patient and study identity copied from the source, nothing else of it), each in its own new series:

* **Comprehensive SR** (highdicom), template TID 1500 *Measurement Report* with one TID 1501
  *Measurements and Qualitative Evaluations* group whose finding type is pneumonia (SCT 233604007):

  ========================================  ==========  ==================================================
  content item                              value type  concept
  ========================================  ==========  ==================================================
  probability of pneumonia (0-1)            NUM         (DCM 122157 "Probability"), unit UCUM "1"
  decision threshold                        NUM         (DCM 122411 "Threshold Value"), unit UCUM "1"
  flagged (probability >= threshold)        CODE        (99CXRTRIAGE FLAG) = SCT Yes / No
  reviewer agrees (only once reviewed)      CODE        (99CXRTRIAGE REVIEW) = SCT Yes / No
  model name and version                    (TID 4019)  Algorithm Name / Version, threshold as parameter
  source image                              IMAGE       Source (the scored instance's SOP Class/Instance)
  threshold origin, warnings, reviewer,     TEXT        (DCM 121106 "Comment"), one item each, prefixed
  "not for diagnostic use"                              ("Threshold origin: ...", "Warning: ...")
  ========================================  ==========  ==================================================

  The TEXT comments are the one extension to TID 1501, which has no row for free text; a reader that
  knows only TID 1500 still finds the probability, threshold and flag. Two codes are private, in the
  coding scheme ``99CXRTRIAGE`` that the SR declares in its Coding Scheme Identification Sequence.
  The report is COMPLETE, UNVERIFIED, and PRELIMINARY until a reviewer's decision is in it (then
  FINAL; still unverified: the tool does not sign). The reviewer's free-text note is not copied
  (it may name the patient; it stays in the local review log).

* **Secondary Capture** (highdicom ``SCImage``): the radiograph (the decoding worker's display copy,
  longest side 1,024 px) beside its Grad-CAM overlay, RGB, under a black band reading "NOT FOR
  DIAGNOSTIC USE" with the model, probability and threshold. Burned In Annotation is YES (that band;
  nothing identifying is drawn), Image Comments and the series description repeat "NOT FOR
  DIAGNOSTIC USE", and Source Image Sequence / Referenced Image Sequence point at the scored image.

UIDs are derived from the source instance, the model and the content (``generate_uid`` with entropy
sources), so sending the same result twice gives the same instance (a PACS keeps one), while a
reviewed report is a new instance. Non-DICOM inputs (JPEG, PNG) have no study to file into and get
nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import highdicom as hd
from engine.model.operating_point import for_study
from engine.errors import NotDicomError  # noqa: F401  (part of this module's interface)
from engine.evaluation.metrics import flagged as flag_rule


MANUFACTURER = "CXR Triage (open source)"
DEVICE_NAME = "CXR Triage"
PRIVATE_SCHEME = "99CXRTRIAGE"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
SR_SERIES_DESCRIPTION = "CXR Triage pneumonia report (not for diagnostic use)"
SC_SERIES_DESCRIPTION = "CXR Triage Grad-CAM heatmap (NOT FOR DIAGNOSTIC USE)"

PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
FLAGGED = hd.sr.CodedConcept("FLAG", PRIVATE_SCHEME, "Flagged for review (probability at or above threshold)")
REVIEWER_AGREES = hd.sr.CodedConcept("REVIEW", PRIVATE_SCHEME, "Reviewer agrees with the triage result")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")

# Radiograph storage classes: what the receiver accepts and what the writer refers to.
RADIOGRAPH_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

# Identity copied from the source into both objects (what a PACS files them by), and nothing else.
IDENTITY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
            "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
            "ReferringPhysicianName")


@dataclass(frozen=True)
class Review:
    decision: str                  # "agree" or "disagree"
    reviewer: str = ""
    time: str = ""                 # ISO time of the decision


@dataclass(frozen=True)
class Finding:
    """What the SR says about one image."""

    probability: float
    threshold: float
    threshold_origin: str          # "the model card", "operating point 'Youden'", "--threshold"
    model_name: str
    model_version: str
    warnings: tuple[str, ...] = ()
    review: Optional[Review] = None

    @property
    def flagged(self) -> bool:
        return flag_rule(self.probability, self.threshold)


def source_header(data: bytes, name: str = "the file") -> Dataset:
    """The source's header (no pixel data read) with the UIDs a result needs; NotDicomError if not."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except Exception as exc:
        raise NotDicomError(f"{name}: not a DICOM file ({type(exc).__name__})") from None
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise NotDicomError(f"{name}: the DICOM header has no {', '.join(missing)}")
    return ds


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _evidence(source: Dataset) -> Dataset:
    """A header-only copy holding the identity, the source's UIDs and character set."""
    ev = Dataset()
    for key in IDENTITY + ("SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
        if key in source:
            setattr(ev, key, source[key].value)
    for key in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
        if key not in ev:
            setattr(ev, key, None)   # type 2 attributes: present, empty
    return ev


def _copy_identity(target: Dataset, source: Dataset) -> None:
    """The source's identity values (decoded by pydicom) in our object, written as UTF-8: our own text
    (a preset's name, a reviewer's) may not fit the source's character set."""
    for key in IDENTITY:
        if key in source:
            setattr(target, key, source[key].value)
    target.SpecificCharacterSet = "ISO_IR 192"


def _image_ref(source: Dataset) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def _coding_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = PRIVATE_SCHEME
    item.CodingSchemeName = "CXR Triage local codes"
    item.CodingSchemeResponsibleOrganization = "CXR Triage project"
    return item


def _quiet(build):
    """highdicom warns about person names it finds odd, quoting them: a patient's name must never reach
    a log, so its warnings are silenced while it builds our objects."""
    import functools

    @functools.wraps(build)
    def wrapper(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return build(*args, **kwargs)
    return wrapper


@_quiet
def structured_report(source: Dataset, finding: Finding) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 1500, see the module docstring) about ``source``, in its study."""
    model = f"{finding.model_name} {finding.model_version}".strip()
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("cxr-triage-device", model), name=DEVICE_NAME, manufacturer_name=MANUFACTURER,
            model_name=model[:64]))
    algorithm = hd.sr.AlgorithmIdentification(
        name=finding.model_name or DEVICE_NAME, version=finding.model_version or "unknown",
        parameters=[f"threshold={finding.threshold:.6g}"])
    yes_no = lambda b: codes.SCT.Yes if b else codes.SCT.No   # noqa: E731
    evaluations = [hd.sr.QualitativeEvaluation(FLAGGED, yes_no(finding.flagged))]
    if finding.review is not None:
        evaluations.append(hd.sr.QualitativeEvaluation(REVIEWER_AGREES, yes_no(finding.review.decision == "agree")))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid("cxr-triage-tracking", source.SOPInstanceUID, model), identifier="pneumonia triage"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(finding.probability), 6),
                              unit=NO_UNITS, algorithm_id=algorithm),
            hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=round(float(finding.threshold), 6),
                              unit=NO_UNITS),
        ],
        qualitative_evaluations=evaluations,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])
    comments = [f"{NOT_FOR_DIAGNOSIS}: decision support only; a clinician makes every diagnosis.",
                f"Threshold origin: {finding.threshold_origin}"]
    comments += [f"Warning: {w}" for w in finding.warnings]
    if finding.review is not None:
        r = finding.review
        comments.append(f"Reviewer decision: {r.decision}" + (f" by {r.reviewer}" if r.reviewer else "")
                        + (f" at {r.time}" if r.time else ""))
    container = group[0]
    for text in comments:
        container.ContentSequence.append(
            hd.sr.TextContentItem(name=codes.DCM.Comment, value=text[:1024], relationship_type="CONTAINS"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=codes.SCT.ChestImaging,
        imaging_measurements=[group])
    content_key = (source.SOPInstanceUID, model, f"{finding.probability:.6f}", f"{finding.threshold:.6f}",
                   finding.threshold_origin, finding.review)
    sr = hd.sr.ComprehensiveSR(
        evidence=[_evidence(source)], content=report[0],
        series_instance_uid=_uid("cxr-triage-sr-series", source.StudyInstanceUID, model),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=_uid("cxr-triage-sr", *content_key),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=True,
        is_final=finding.review is not None, is_verified=False,
        transfer_syntax_uid=ExplicitVRLittleEndian)
    _copy_identity(sr, source)
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.CodingSchemeIdentificationSequence = [_coding_scheme()]
    return sr


def labelled_picture(picture_rgb: np.ndarray, finding: Finding) -> np.ndarray:
    """``picture_rgb`` (original | overlay) under a black band with "NOT FOR DIAGNOSTIC USE" and the
    result; uint8 RGB. Only these words are drawn: no identifier."""
    h, w = picture_rgb.shape[:2]
    band_h = max(48, int(round(w * 0.045)))
    band = np.zeros((band_h, w, 3), np.uint8)
    scale = band_h / 60.0
    model = f"{finding.model_name} {finding.model_version}".strip()
    flag = "flagged" if finding.flagged else "not flagged"
    lines = [(f"{NOT_FOR_DIAGNOSIS} - Grad-CAM heatmap (right), decision support only", (255, 255, 0)),
             (f"{model}: P(pneumonia) = {finding.probability:.3f}, {flag} at {finding.threshold:.3f}",
              (255, 255, 255))]
    for i, (text, colour) in enumerate(lines):
        y = int(band_h * (0.42 + 0.45 * i))
        cv2.putText(band, text, (int(8 * scale), y), cv2.FONT_HERSHEY_SIMPLEX, 0.75 * scale, colour,
                    max(1, int(round(1.6 * scale))), cv2.LINE_AA)
    return np.ascontiguousarray(np.concatenate([band, picture_rgb.astype(np.uint8)], axis=0))


@_quiet
def heatmap_capture(source: Dataset, picture_rgb: np.ndarray, finding: Finding) -> hd.sc.SCImage:
    """A Secondary Capture of ``picture_rgb`` (original | overlay, RGB uint8), labelled, in the study."""
    model = f"{finding.model_name} {finding.model_version}".strip()
    pixels = labelled_picture(picture_rgb, finding)
    orientation = source.get("PatientOrientation")
    orientation = tuple(str(v) for v in orientation) if orientation and len(orientation) == 2 else None
    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=_uid("cxr-triage-sc-series", source.StudyInstanceUID, model),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_uid("cxr-triage-sc", source.SOPInstanceUID, model, f"{finding.probability:.6f}",
                              f"{finding.threshold:.6f}"),
        instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),    # placeholder, emptied below: nothing invented
        transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.Laterality = source.get("Laterality") or None   # type 2C: the source's, or present and empty
    if orientation is None:
        sc.PatientOrientation = None          # type 2: present and empty when the source does not say
    _copy_identity(sc, source)
    sc.ConversionType = "WSD"                  # a workstation drew it
    sc.SeriesDescription = SC_SERIES_DESCRIPTION
    sc.ImageComments = (f"{NOT_FOR_DIAGNOSIS}. Left: the radiograph; right: Grad-CAM heatmap of {model} "
                        f"(P(pneumonia) {finding.probability:.3f}, threshold {finding.threshold:.3f}).")[:10240]
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = f"Grad-CAM heatmap overlay by {model}; {NOT_FOR_DIAGNOSIS}"[:1024]
    sc.SourceImageSequence = [_image_ref(source)]
    sc.ReferencedImageSequence = [_image_ref(source)]
    lossy = str(source.get("LossyImageCompression", "") or "")
    if lossy == "01":
        sc.LossyImageCompression = "01"
    return sc


def result_objects(source: Dataset, finding: Finding, picture_rgb: Optional[np.ndarray]) -> list[Dataset]:
    """The SR and, when a picture is given, the Secondary Capture."""
    out: list[Dataset] = [structured_report(source, finding)]
    if picture_rgb is not None:
        out.append(heatmap_capture(source, picture_rgb, finding))
    return out


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def file_name(ds: Dataset) -> str:
    kind = "sr" if ds.SOPClassUID == COMPREHENSIVE_SR else "sc"
    return f"{kind}-{ds.SOPInstanceUID}.dcm"


class ResultWriter:
    """SR and Secondary Capture for predictions of one model at one threshold.

    ``threshold`` None: the model card's (origin "the model card"). Grad-CAM (torch) is loaded on
    first use. :meth:`objects` takes the source's bytes and its :class:`~engine.inference.predictor.Prediction`
    made with ``keep_images=True`` (the display copy and the network input).
    """

    def __init__(self, predictor, threshold: Optional[float] = None, threshold_origin: Optional[str] = None,
                 *, explainer=None, heat_cutoff: float = 0.2, opacity: float = 0.4) -> None:
        self.predictor = predictor
        card = predictor.card
        self.threshold = float(card.threshold if threshold is None else threshold)
        self.threshold_origin = threshold_origin or (
            "the model card's decision threshold" if threshold is None else "set by the user")
        self.points = card.operating_points if threshold is None else {}
        self.model_name, self.model_version = card.name, str(card.version)
        self._explainer = explainer
        self.heat_cutoff, self.opacity = heat_cutoff, opacity

    @property
    def explainer(self):
        if self._explainer is None:
            self._explainer = self.predictor.load_explainer(freeze=True)   # the CLI: once per run
        return self._explainer

    def finding(self, probability: float, warnings=(), review: Optional[Review] = None,
                age_band: Optional[str] = None) -> Finding:
        """The finding at this study's operating point: the card's for its population (an adult by the
        header's age: the card's adult point, where it has one), unless a threshold was given."""
        point = for_study(self.threshold, self.points, age_band)
        origin = self.threshold_origin if point.name == "card" else f"the model card's {point.name[6:]} operating point"
        return Finding(float(probability), point.threshold, origin, self.model_name, self.model_version,
                       tuple(warnings), review)

    def picture(self, prediction) -> Optional[np.ndarray]:
        """Original | Grad-CAM overlay (RGB uint8) from a prediction's display copy and network input."""
        if prediction.image is None or prediction.model_input is None:
            return None
        from engine.inference.overlay import side_by_side
        heat = self.explainer.explain_images([prediction.model_input])[0]
        return side_by_side(prediction.image.pixels, heat, opacity=self.opacity, min_value=self.heat_cutoff)

    def objects(self, data: bytes, prediction, review: Optional[Review] = None) -> list[Dataset]:
        """[SR, SC] for a scored DICOM file; NotDicomError for other inputs; [] for a refused file."""
        source = source_header(data, prediction.name)
        if not prediction.ok:
            return []
        finding = self.finding(prediction.probability, prediction.warnings, review, prediction.metadata.age_band)
        return result_objects(source, finding, self.picture(prediction))


class DicomOutFolder:
    """``engine.predict --dicom-out DIR``: the SR and heatmap capture of each scored DICOM input,
    written as ``sr-<SOP Instance UID>.dcm`` and ``sc-<...>.dcm`` (no input name, no identifier in a
    file name). Inputs that are not DICOM, or were refused, get nothing (counted)."""

    def __init__(self, folder, predictor, threshold: Optional[float] = None,
                 threshold_origin: Optional[str] = None) -> None:
        from pathlib import Path
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = ResultWriter(predictor, threshold, threshold_origin)
        self.written = self.not_dicom = self.failed = 0

    def add(self, item, prediction) -> None:
        if not prediction.ok:
            return
        try:
            objects = self.writer.objects(item.read(), prediction)
        except NotDicomError:
            self.not_dicom += 1
            return
        except Exception:
            self.failed += 1
            return
        for ds in objects:
            ds.save_as(self.folder / file_name(ds), enforce_file_format=True)
            self.written += 1

    def summary(self) -> str:
        text = f"{self.written} DICOM result object(s) in {self.folder}"
        if self.not_dicom:
            text += f"; {self.not_dicom} input(s) not DICOM (no study to file results into)"
        if self.failed:
            text += f"; {self.failed} could not be written"
        return text

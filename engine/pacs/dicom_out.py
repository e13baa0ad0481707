"""Results as DICOM: a Structured Report, a Parametric Map and a Secondary Capture, filed with the study.

For each scored DICOM image, three new instances in the source's study (same Study Instance UID, the
patient and study identity copied from the source, nothing else of it), each in its own new series.
Every one names the algorithm as IHE AI Results (AIR) asks (:mod:`engine.pacs.algorithm`): a
Contributing Equipment item with Purpose of Reference (Newcode1, 99IHE, "Processing Algorithm"),
Manufacturer, Manufacturer's Model Name, Software Versions and a Device UID derived from the SHA-256
of the weights (new weights, new UID); the Equipment module says the same. ``docs/CONFORMANCE.md``
is the conformance statement.

* **Comprehensive SR** (highdicom), template TID 1500 *Measurement Report*, checked with Pixelmed's
  ``DicomSRValidator`` and dciodvfy (``tests/test_air.py``):

  ==========================================  ==========  ================================================
  content item                                value type  concept, value
  ==========================================  ==========  ================================================
  Procedure reported (TID 1500 row 4)         CODE        SCT 363679005 "Imaging procedure" (CID 100)
  observer: the algorithm (TID 1004)          UIDREF ...  Device Observer UID = the Device UID, name,
                                                          manufacturer, model name
  measurement group (TID 1501), finding       CODE        (DCM 121071 "Finding") = SCT 233604007 Pneumonia
  algorithm (TID 4019, in the group and in    TEXT        Algorithm Name (111001), Version (111003),
  the probability)                                        Parameters (111002): threshold, operating point
  probability of pneumonia (0-1)              NUM         (DCM 122157 "Probability"), unit UCUM "1"
  decision threshold                          NUM         (DCM 122411 "Threshold Value"), unit UCUM "1"
  source image                                IMAGE       the scored instance (SOP Class/Instance)
  Qualitative Evaluations (TID 1500 row 12)   CONTAINER   (UMLS C0034375 "Qualitative Evaluations")
    the algorithm's call (row 13)             CODE        SCT 233604007 Pneumonia = SCT 52101004 Present
                                                          or SCT 272519000 Absent (CID 241)
    "NOT FOR DIAGNOSTIC USE", what Present    TEXT        (DCM 121106 "Comment"), one item each
    means, threshold origin, warnings, the
    reviewer's decision (row 14)
  ==========================================  ==========  ================================================

  Present means the probability is at or above the operating point's threshold (the triage flag);
  the TEXT items say so, and that it is not a diagnosis. No private code is used. The report is
  COMPLETE; PRELIMINARY and UNVERIFIED until a reviewer has decided; then FINAL and VERIFIED, the
  reviewer as Verifying Observer (name only; organisation empty) at the decision's time, and the
  decision (agree / disagree with the algorithm's call) is one of the TEXT items. A decision without a
  reviewer's name leaves the report UNVERIFIED (a Verifying Observer must be named). The reviewer's
  free-text note is not copied (it may name the patient; it stays in the local review log).

* **Parametric Map** (highdicom ``ParametricMap``): the Grad-CAM heat (0-1, 32-bit float) resampled
  bilinearly from the network input (a plain stretch of the whole image) to the source's rows x
  columns, so that it lies pixel for pixel on the radiograph, with a Real World Value Mapping (label
  ``GRADCAM``, "Grad-CAM evidence for pneumonia", unit UCUM "1"), a VOI window 0-1, Content
  Qualification RESEARCH and the source image in its Derivation and Source Image sequences. Geometry
  (the IOD needs a Frame of Reference, Pixel Measures and a plane position and orientation): a source
  that has them (Frame of Reference UID, Image Position/Orientation (Patient), Pixel Spacing) lends
  them; a radiograph without them (CR and most DX have no Frame of Reference) gets a Frame of
  Reference of the map's own, derived from the source's SOP Instance UID (every map of that image
  shares it), with a nominal plane: position (0, 0, 0), orientation from the source's Patient
  Orientation (coronal L/F when it has none), and the source's Pixel Spacing, else its Imager Pixel
  Spacing, else 1 mm. Nothing in that frame is a patient position; a viewer lays the map on the
  radiograph by its pixel grid and its reference to the source image.

* **Secondary Capture** (highdicom ``SCImage``): the radiograph (the decoding worker's display copy,
  longest side 1,024 px) beside its Grad-CAM overlay, RGB, under a black band reading "NOT FOR
  DIAGNOSTIC USE" with the model, probability and threshold. Burned In Annotation is YES (that band;
  nothing identifying is drawn), Image Comments and the series description repeat "NOT FOR
  DIAGNOSTIC USE", and Source Image Sequence / Referenced Image Sequence point at the scored image.

UIDs are derived from the source instance, the model's Device UID and the content (``generate_uid``
with entropy sources), so sending the same result twice gives the same instance (a PACS keeps one),
while a reviewed report, or a report by other weights, is a new instance. Non-DICOM inputs (JPEG,
PNG) have no study to file into and get nothing.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Optional, Union

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.charset import python_encoding
from pydicom.multival import MultiValue
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DT

import highdicom as hd
from engine.model.operating_point import for_study
from engine.errors import NotDicomError, ResultNotWritable  # noqa: F401  (part of this module's interface)
from engine.evaluation.metrics import flagged as flag_rule
from engine.pacs.algorithm import (MANUFACTURER, AlgorithmIdentity, coding_scheme_item, contributing_equipment,
                                   identity_for, identity_of)


DEVICE_NAME = "CXR Triage"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE"
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
PM_SERIES_NUMBER = 9903
SR_SERIES_DESCRIPTION = "CXR Triage pneumonia report (not for diagnostic use)"
SC_SERIES_DESCRIPTION = "CXR Triage Grad-CAM heatmap (NOT FOR DIAGNOSTIC USE)"
PM_SERIES_DESCRIPTION = "CXR Triage Grad-CAM parametric map (NOT FOR DIAGNOSTIC USE)"

# Verifying Organization is required (type 1 for dciodvfy) once a reader verifies; the store keeps none.
ORGANIZATION_NOT_RECORDED = "not recorded"

# Codes (docs/CONFORMANCE.md says why each was chosen)
PROCEDURE_REPORTED = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")    # in CID 100
PNEUMONIA = hd.sr.CodedConcept("233604007", "SCT", "Pneumonia")
PRESENT = hd.sr.CodedConcept("52101004", "SCT", "Present")                          # CID 241
ABSENT = hd.sr.CodedConcept("272519000", "SCT", "Absent")                           # CID 241
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")

# The parametric map's values
HEAT_LABEL = "GRADCAM"                                    # LUT Label (SH, 16 characters)
HEAT_EXPLANATION = "Grad-CAM evidence for pneumonia (0-1, relative to its peak)"

# Radiograph storage classes: what the receiver accepts and what the writer refers to.
RADIOGRAPH_STORAGE = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
}
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
PARAMETRIC_MAP = "1.2.840.10008.5.1.4.1.1.30"

# Identity copied from the source into every object (what a PACS files them by), and nothing else.
IDENTITY = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
            "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber",
            "ReferringPhysicianName")
TYPE2_IDENTITY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "StudyDate",
                  "StudyTime", "AccessionNumber", "ReferringPhysicianName")


@dataclass(frozen=True)
class Review:
    """A reader's decision on the algorithm's result (:func:`engine.pacs.send.latest_review`)."""

    decision: str                  # "agree" or "disagree"
    reviewer: str = ""             # the reader's name (a user of this tool, not a patient identifier)
    time: str = ""                 # ISO time of the decision
    organization: str = ""         # to whom the reader answers (Verifying Organization); not recorded yet


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
    return source_header_sized(data, name)[0]


def source_header_sized(data: bytes, name: str = "the file") -> tuple[Dataset, int]:
    """:func:`source_header` and how many bytes of the file it spans (what keeping it in memory costs)."""
    stream = io.BytesIO(data)
    try:
        ds = pydicom.dcmread(stream, stop_before_pixels=True)
    except Exception as exc:
        raise NotDicomError(f"{name}: not a DICOM file ({type(exc).__name__})") from None
    missing = [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise NotDicomError(f"{name}: the DICOM header has no {', '.join(missing)}")
    return ds, stream.tell()


_UID_CHARS = frozenset("0123456789.")
# Control characters are not allowed in PN, LO or SH values (ESC only as a character-set switch,
# which pydicom has consumed when it decoded them).
_CONTROL = frozenset(chr(c) for c in range(32)) | {"\x7f"}


def writable_identity(source: Dataset, name: str = "the file") -> None:
    """Refuse (ResultNotWritable, naming the attribute, never its value) a source whose identity a
    result could not carry faithfully: a UID over 64 characters or with other than digits and dots,
    control characters (CR, LF, ...) in an identity value, or bytes its character set does not decode
    (pydicom turns them into U+FFFD, so the result's patient name would not match the source's)."""
    for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        uid = str(source.get(key, "") or "")
        if len(uid) > 64 or not set(uid) <= _UID_CHARS:
            raise ResultNotWritable(f"{name}: its {key} is not a valid UID ({len(uid)} characters; at most "
                                    "64 digits and dots): no result object written")
    unknown = [term for term in _terms(source) if term and term not in python_encoding]
    for key in IDENTITY:
        if key not in source or key.endswith("InstanceUID"):
            continue
        text = str(source[key].value or "")
        if unknown and not text.isascii():
            raise ResultNotWritable(f"{name}: its Specific Character Set names {', '.join(unknown)}, which "
                                    f"DICOM does not define, and its {key} is not plain ASCII: it cannot be "
                                    "transcoded faithfully, so no result object is written")
        if "\ufffd" in text:
            raise ResultNotWritable(f"{name}: its {key} holds bytes that its Specific Character Set "
                                    f"({_charset(source)}) does not decode: no result object written")
        if set(text) & _CONTROL:
            raise ResultNotWritable(f"{name}: its {key} holds control characters (line breaks or other), "
                                    "which its value representation forbids: no result object written")


def _terms(source: Dataset) -> list[str]:
    value = source.get("SpecificCharacterSet", "") or ""
    return [str(v).strip() for v in value] if isinstance(value, (list, MultiValue)) else [str(value).strip()]


def _charset(source: Dataset) -> str:
    return "\\".join(_terms(source)) or "the default repertoire"


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _evidence(source: Dataset) -> Dataset:
    """A header-only copy holding the identity, the source's UIDs and character set."""
    ev = Dataset()
    for key in IDENTITY + ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID"):
        if key in source:
            setattr(ev, key, source[key].value)
    ev.SpecificCharacterSet = "ISO_IR 192"       # the values are text pydicom decoded: written as UTF-8
    for key in TYPE2_IDENTITY:
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


def _model_label(finding: Finding) -> str:
    return f"{finding.model_name} {finding.model_version}".strip()


def _identity(finding: Finding, identity: Optional[AlgorithmIdentity]) -> AlgorithmIdentity:
    """``identity``, or one derived from the finding's model name and version (no weights at hand)."""
    return identity or identity_for(finding.model_name, finding.model_version)


def _equipment(identity: AlgorithmIdentity) -> dict:
    """The Equipment module's values for our objects (the algorithm, as in Contributing Equipment)."""
    return dict(manufacturer=MANUFACTURER, manufacturer_model_name=identity.name[:64],
                software_versions=identity.version[:64], device_serial_number=identity.serial)


# ------------------------------------------------------------------------------------------------
# The structured report

def _algorithm(finding: Finding, identity: AlgorithmIdentity) -> hd.sr.AlgorithmIdentification:
    """TID 4019: name, version, and the operating point as parameters."""
    return hd.sr.AlgorithmIdentification(
        name=identity.name[:1024], version=identity.version[:1024],
        parameters=[f"decision threshold {finding.threshold:.6g}",
                    f"operating point: {finding.threshold_origin}"[:1024]])


def _whole_image(source: Dataset) -> hd.sr.CoordinatesForMeasurement:
    """TID 300 row 'INFERRED FROM' (TID 320): the probability comes from the whole image, as a closed
    polyline along its edges ((0, 0) is the top-left pixel's top-left corner), SELECTED FROM it.
    Viewers that show only measurements with spatial coordinates (OHIF) show the report on it."""
    rows, columns = float(source.Rows), float(source.Columns)
    edges = np.array([[0.0, 0.0], [columns, 0.0], [columns, rows], [0.0, rows], [0.0, 0.0]])
    return hd.sr.CoordinatesForMeasurement(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=edges,
                                           source_image=hd.sr.SourceImageForRegion.from_source_image(source))


def _measurement_group(source: Dataset, finding: Finding,
                       identity: AlgorithmIdentity) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: pneumonia as the finding, its probability and the threshold, the source image."""
    algorithm = _algorithm(finding, identity)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=_uid("cxr-triage-tracking", source.SOPInstanceUID, identity.device_uid),
            identifier="pneumonia triage"),
        finding_type=PNEUMONIA,
        algorithm_id=algorithm,
        measurements=[
            hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(finding.probability), 6),
                              unit=NO_UNITS, algorithm_id=algorithm,
                              referenced_coordinates=[_whole_image(source)]),
            hd.sr.Measurement(name=codes.DCM.ThresholdValue, value=round(float(finding.threshold), 6),
                              unit=NO_UNITS),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)])


def _comments(finding: Finding) -> list[str]:
    """The TEXT items of the report's Qualitative Evaluations, "NOT FOR DIAGNOSTIC USE" first."""
    call = "Present" if finding.flagged else "Absent"
    relation = "at or above" if finding.flagged else "below"
    texts = [f"{NOT_FOR_DIAGNOSIS}: decision support only; a clinician makes every diagnosis.",
             f"Pneumonia {call} is the algorithm's triage call, not a diagnosis: P(pneumonia) "
             f"{finding.probability:.6f} is {relation} the decision threshold {finding.threshold:.6g}.",
             f"Threshold origin: {finding.threshold_origin}"]
    texts += [f"Warning: {w}" for w in finding.warnings]
    if finding.review is not None:
        r = finding.review
        texts.append(f"Reviewer decision: {r.decision}" + (f" by {r.reviewer}" if r.reviewer else "")
                     + (f" at {r.time}" if r.time else "") + " (with the algorithm's call above)")
    return [t[:1024] for t in texts]


def _evaluations(finding: Finding) -> hd.sr.ContainerContentItem:
    """TID 1500 rows 12-14: the algorithm's call on pneumonia (CODE) and the TEXT items."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS, relationship_type="CONTAINS")
    items: list = [hd.sr.CodeContentItem(name=PNEUMONIA, value=PRESENT if finding.flagged else ABSENT,
                                         relationship_type="CONTAINS")]
    items += [hd.sr.TextContentItem(name=codes.DCM.Comment, value=text, relationship_type="CONTAINS")
              for text in _comments(finding)]
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def _dicom_datetime(iso: str) -> Optional[DT]:
    """An ISO time as a DICOM DT, None if it does not parse."""
    try:
        return DT(datetime.fromisoformat(iso.strip().replace("Z", "+00:00")))
    except (ValueError, AttributeError):
        return None


def _verify(sr: Dataset, review: Optional[Review]) -> None:
    """The Verification Date Time of a verified report: the reviewer's decision time (when known)."""
    when = _dicom_datetime(review.time) if review is not None and review.time else None
    if when is not None and "VerifyingObserverSequence" in sr:
        sr.VerifyingObserverSequence[0].VerificationDateTime = when


@_quiet
def structured_report(source: Dataset, finding: Finding,
                      identity: Optional[AlgorithmIdentity] = None) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR (TID 1500, see the module docstring) about ``source``, in its study."""
    identity = _identity(finding, identity)
    model = _model_label(finding)
    device = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=identity.device_uid, name=DEVICE_NAME, manufacturer_name=MANUFACTURER,
            model_name=identity.name[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=device),
        procedure_reported=PROCEDURE_REPORTED,
        imaging_measurements=[_measurement_group(source, finding, identity)])
    report[0].ContentSequence.append(_evaluations(finding))
    review = finding.review
    verifier = review.reviewer.strip() if review is not None and review.reviewer else ""
    content_key = (source.SOPInstanceUID, identity.device_uid, f"{finding.probability:.6f}",
                   f"{finding.threshold:.6f}", finding.threshold_origin, finding.warnings, review)
    sr = hd.sr.ComprehensiveSR(
        evidence=[_evidence(source)], content=report[0],
        series_instance_uid=_uid("cxr-triage-sr-series", source.StudyInstanceUID, model),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=_uid("cxr-triage-sr", *content_key),
        instance_number=1, is_complete=True, is_final=review is not None,
        is_verified=bool(verifier), verifying_observer_name=verifier[:64] or None,
        verifying_organization=(review.organization or ORGANIZATION_NOT_RECORDED)[:64] if verifier else None,
        contributing_equipment=[contributing_equipment(identity, "the algorithm that made this report")],
        transfer_syntax_uid=ExplicitVRLittleEndian, **_equipment(identity))
    _copy_identity(sr, source)
    _verify(sr, review)
    sr.SeriesDescription = SR_SERIES_DESCRIPTION
    sr.CodingSchemeIdentificationSequence = [coding_scheme_item()]
    return sr


# ------------------------------------------------------------------------------------------------
# The heatmap capture

def labelled_picture(picture_rgb: np.ndarray, finding: Finding) -> np.ndarray:
    """``picture_rgb`` (original | overlay) under a black band with "NOT FOR DIAGNOSTIC USE" and the
    result; uint8 RGB. Only these words are drawn: no identifier."""
    h, w = picture_rgb.shape[:2]
    band_h = max(48, int(round(w * 0.045)))
    band = np.zeros((band_h, w, 3), np.uint8)
    scale = band_h / 60.0
    model = _model_label(finding)
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
def heatmap_capture(source: Dataset, picture_rgb: np.ndarray, finding: Finding,
                    identity: Optional[AlgorithmIdentity] = None) -> hd.sc.SCImage:
    """A Secondary Capture of ``picture_rgb`` (original | overlay, RGB uint8), labelled, in the study."""
    identity = _identity(finding, identity)
    model = _model_label(finding)
    pixels = labelled_picture(picture_rgb, finding)
    orientation = source.get("PatientOrientation")
    orientation = tuple(str(v) for v in orientation) if orientation and len(orientation) == 2 else None
    sc = hd.sc.SCImage(
        pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT",
        study_instance_uid=source.StudyInstanceUID,
        series_instance_uid=_uid("cxr-triage-sc-series", source.StudyInstanceUID, model),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=_uid("cxr-triage-sc", source.SOPInstanceUID, identity.device_uid,
                              f"{finding.probability:.6f}", f"{finding.threshold:.6f}"),
        instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation or ("L", "F"),    # placeholder, emptied below: nothing invented
        transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.Laterality = source.get("Laterality") or None   # type 2C: the source's, or present and empty
    if orientation is None:
        sc.PatientOrientation = None          # type 2: present and empty when the source does not say
    _copy_identity(sc, source)
    sc.ManufacturerModelName, sc.SoftwareVersions = identity.name[:64], identity.version[:64]
    sc.ContributingEquipmentSequence = [contributing_equipment(identity, "the algorithm that made the heatmap")]
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


# ------------------------------------------------------------------------------------------------
# The parametric map

def map_values(heat: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """The heat (network-input grid, 0-1) on the source's ``rows`` x ``columns`` grid, float32 in [0, 1].

    The network input is a plain stretch of the whole image (engine.model.preprocess), so the map is
    stretched back the same way: bilinear, pixel centres aligned (``cv2.resize``)."""
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != (rows, columns):
        heat = cv2.resize(heat, (int(columns), int(rows)), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(np.clip(heat, 0.0, 1.0), dtype=np.float32)


_AXES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "H": (0, 0, 1), "F": (0, 0, -1)}


def _direction(letters: str) -> Optional[np.ndarray]:
    """A Patient Orientation value ("L", "FL", ...) as a unit vector; None if it is not one."""
    if not letters or any(c not in _AXES for c in letters):
        return None
    v = np.sum([_AXES[c] for c in letters], axis=0).astype(float)
    n = float(np.linalg.norm(v))
    return v / n if n else None


def _orientation(source: Dataset) -> list[float]:
    """Image Orientation (Patient) from the source's Patient Orientation; coronal L/F when it has none."""
    value = source.get("PatientOrientation")
    if value and len(value) == 2:
        row, col = _direction(str(value[0]).upper()), _direction(str(value[1]).upper())
        if row is not None and col is not None and abs(float(row @ col)) < 1e-6:
            return [round(float(x), 6) for x in (*row, *col)]
    return [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def _positive_pair(value) -> Optional[list[float]]:
    """Two positive numbers (a spacing), or None."""
    try:
        pair = [float(v) for v in value or []]
    except (TypeError, ValueError):
        return None
    return pair if len(pair) == 2 and all(v > 0 for v in pair) else None


def _spacing(source: Dataset) -> Optional[list[float]]:
    """The source's Pixel Spacing, else its Imager Pixel Spacing, if positive; None otherwise."""
    return _positive_pair(source.get("PixelSpacing")) or _positive_pair(source.get("ImagerPixelSpacing"))


def _has_geometry(source: Dataset) -> bool:
    """Whether the source places its pixels in a Frame of Reference (UID, position, orientation, spacing)."""
    return all(str(source.get(k, "") or "").strip() for k in
               ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient")) \
        and _positive_pair(source.get("PixelSpacing")) is not None


def _map_geometry(source: Dataset) -> tuple[Dataset, dict]:
    """The header highdicom builds the map from (identity, UIDs, grid; no other value of the source)
    and the map's plane: the source's Frame of Reference and plane when it has them, else the map's
    own Frame of Reference with a nominal plane (the module docstring)."""
    g = Dataset()
    for key in IDENTITY + ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "Modality", "Rows", "Columns"):
        if key in source:
            setattr(g, key, source[key].value)
    g.SpecificCharacterSet = "ISO_IR 192"
    for key in TYPE2_IDENTITY:
        if key not in g:
            setattr(g, key, None)
    if _has_geometry(source):
        g.FrameOfReferenceUID = source.FrameOfReferenceUID
        position = [float(v) for v in source.ImagePositionPatient]
        orientation = [float(v) for v in source.ImageOrientationPatient]
        spacing = [float(v) for v in source.PixelSpacing]
    else:
        g.FrameOfReferenceUID = _uid("cxr-triage-frame-of-reference", source.SOPInstanceUID)
        position, orientation, spacing = [0.0, 0.0, 0.0], _orientation(source), _spacing(source) or [1.0, 1.0]
    g.ImagePositionPatient, g.ImageOrientationPatient, g.PixelSpacing = position, orientation, spacing
    g.SliceThickness = None                    # highdicom reads it; a projection has none
    plane = dict(pixel_measures=hd.PixelMeasuresSequence(pixel_spacing=spacing, slice_thickness=None),
                 plane_orientation=hd.PlaneOrientationSequence("PATIENT", orientation),
                 plane_positions=[hd.PlanePositionSequence("PATIENT", position)])
    return g, plane


@_quiet
def heatmap_map(source: Dataset, heat: np.ndarray, finding: Finding,
                identity: Optional[AlgorithmIdentity] = None) -> hd.pm.ParametricMap:
    """A Parametric Map of ``heat`` (the explainer's map, 0-1) on ``source``'s pixel grid, in its study."""
    identity = _identity(finding, identity)
    header, plane = _map_geometry(source)
    values = map_values(heat, int(source.Rows), int(source.Columns))
    mapping = hd.pm.RealWorldValueMapping(
        lut_label=HEAT_LABEL, lut_explanation=HEAT_EXPLANATION, unit=NO_UNITS,
        value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
    pm = hd.pm.ParametricMap(
        [header], values,
        series_instance_uid=_uid("cxr-triage-pm-series", source.StudyInstanceUID, _model_label(finding)),
        series_number=PM_SERIES_NUMBER,
        sop_instance_uid=_uid("cxr-triage-pm", source.SOPInstanceUID, identity.device_uid),
        instance_number=1, contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0,
                                                         window_explanation="Grad-CAM 0-1")],
        content_label=HEAT_LABEL, content_description=f"Grad-CAM heatmap, {NOT_FOR_DIAGNOSIS}"[:64],
        contributing_equipment=[contributing_equipment(identity, "the algorithm that made the heatmap")],
        transfer_syntax_uid=ExplicitVRLittleEndian, **plane, **_equipment(identity))
    _copy_identity(pm, source)
    pm.Laterality = source.get("Laterality") or None   # type 2C: the source's, or present and empty
    pm.SeriesDescription = PM_SERIES_DESCRIPTION
    pm.CodingSchemeIdentificationSequence = [coding_scheme_item()]
    return pm


# ------------------------------------------------------------------------------------------------
# All of them

def result_objects(source: Dataset, finding: Finding, picture_rgb: Optional[np.ndarray],
                   heat: Optional[np.ndarray] = None,
                   identity: Optional[AlgorithmIdentity] = None, name: str = "the source") -> list[Dataset]:
    """The SR; the Secondary Capture when a picture is given; the Parametric Map when a heatmap is.
    ResultNotWritable for a source whose identity they could not carry (:func:`writable_identity`)."""
    writable_identity(source, name)
    out: list[Dataset] = [structured_report(source, finding, identity)]
    if picture_rgb is not None:
        out.append(heatmap_capture(source, picture_rgb, finding, identity))
    if heat is not None:
        out.append(heatmap_map(source, heat, finding, identity))
    return out


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def file_name(ds: Dataset) -> str:
    kind = {COMPREHENSIVE_SR: "sr", PARAMETRIC_MAP: "pm"}.get(str(ds.SOPClassUID), "sc")
    return f"{kind}-{ds.SOPInstanceUID}.dcm"


class ResultWriter:
    """SR, Secondary Capture and Parametric Map for predictions of one model at one threshold.

    ``threshold`` None: the model card's (origin "the model card"). Grad-CAM (torch) is loaded on
    first use. The algorithm's identity (:mod:`engine.pacs.algorithm`: the Device UID from the
    weights' SHA-256) is computed once, here. :meth:`objects` takes the source's bytes and its
    :class:`~engine.inference.predictor.Prediction` made with ``keep_images=True`` (the display copy
    and the network input).
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
        self.identity = identity_of(predictor)
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

    def heat(self, prediction) -> Optional[np.ndarray]:
        """The Grad-CAM map (network-input grid, 0-1) of a prediction kept with its images; else None.

        The map Review shows for the study. Where everything runs in float32 (the backend's layer3 output
        and Grad-CAM itself) it is taken from that layer3 output (layer4 and the head only, no second pass
        of the network: equal within 1e-4); with bfloat16 or INT8 anywhere, on the whole network as Review
        computes it, since their rounding would move the map by up to a few hundredths."""
        if prediction.model_input is None:
            return None
        if self.uses_stage_input(prediction):
            return self.explainer.explain_stages([prediction.stage_input])[0]
        return self.explainer.explain_images([prediction.model_input])[0]

    def uses_stage_input(self, prediction) -> bool:
        """Whether :meth:`heat` takes this prediction's map from its layer3 output (all float32)."""
        explainer = self.explainer
        return (prediction.stage_input is not None and self.predictor.exact_stage_inputs
                and explainer.explains_stages and explainer.policy.autocast_dtype is None)

    def picture(self, prediction, heat: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
        """Original | Grad-CAM overlay (RGB uint8) from a prediction's display copy and network input."""
        if prediction.image is None or prediction.model_input is None:
            return None
        from engine.inference.overlay import side_by_side
        heat = self.heat(prediction) if heat is None else heat
        return side_by_side(prediction.image.pixels, heat, opacity=self.opacity, min_value=self.heat_cutoff)

    def objects(self, data: Union[bytes, Dataset], prediction, review: Optional[Review] = None,
                heat: Optional[np.ndarray] = None) -> list[Dataset]:
        """[SR, SC, PM] for a scored DICOM file; NotDicomError for other inputs; [] for a refused file.

        ``data``: the source's bytes, or its header when the caller has parsed it already (the receiver).
        ``heat``: this prediction's Grad-CAM map when the caller already has it (Review's cache), so it
        is not computed again; it must be this explainer's map of ``prediction.model_input``."""
        source = data if isinstance(data, Dataset) else source_header(data, prediction.name)
        if not prediction.ok:
            return []
        finding = self.finding(prediction.probability, prediction.warnings, review, prediction.metadata.age_band)
        if heat is not None and prediction.model_input is not None and heat.shape != prediction.model_input.shape[-2:]:
            raise ValueError(f"{prediction.name}: a heatmap of shape {heat.shape} does not fit the network input")
        heat = self.heat(prediction) if heat is None else heat
        picture = self.picture(prediction, heat) if heat is not None else None
        return result_objects(source, finding, picture, heat, self.identity, name=prediction.name)


class DicomOutFolder:
    """``engine.predict --dicom-out DIR``: the SR, heatmap capture and parametric map of each scored DICOM
    input, written as ``sr-<SOP Instance UID>.dcm``, ``sc-<...>.dcm`` and ``pm-<...>.dcm`` (no input
    name, no identifier in a file name). Inputs that are not DICOM, or were refused, get nothing (counted)."""

    def __init__(self, folder, predictor, threshold: Optional[float] = None,
                 threshold_origin: Optional[str] = None) -> None:
        from pathlib import Path
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.writer = ResultWriter(predictor, threshold, threshold_origin)
        self.written = self.not_dicom = self.failed = 0
        self.reasons: list[str] = []

    def add(self, item, prediction) -> None:
        if not prediction.ok:
            return
        try:
            objects = self.writer.objects(item.read(), prediction)
        except NotDicomError:
            self.not_dicom += 1
            return
        except ResultNotWritable as exc:       # the file and the attribute named, never the value
            self.failed += 1
            self.reasons.append(str(exc))
            return
        except Exception as exc:
            self.failed += 1
            self.reasons.append(f"{prediction.name}: the result objects could not be written ({type(exc).__name__})")
            return
        for ds in objects:
            ds.save_as(self.folder / file_name(ds), enforce_file_format=True)
            self.written += 1

    def summary(self) -> str:
        text = f"{self.written} DICOM result object(s) in {self.folder}"
        if self.not_dicom:
            text += f"; {self.not_dicom} input(s) not DICOM (no study to file results into)"
        if self.failed:
            text += f"; {self.failed} could not be written:\n  " + "\n  ".join(self.reasons)
        return text

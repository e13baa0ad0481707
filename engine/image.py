"""The decoded radiograph and the metadata that travels with it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class StudyMetadata:
    """What a reviewer needs to know about an image; never a patient identifier."""

    format: str = ""                       # "dicom", "jpeg" or "png"
    modality: Optional[str] = None
    body_part: Optional[str] = None
    view_position: Optional[str] = None
    study_date: Optional[str] = None
    manufacturer: Optional[str] = None
    pixel_spacing: Optional[tuple[float, float]] = None
    photometric_interpretation: Optional[str] = None
    window_center: Optional[float] = None
    window_width: Optional[float] = None
    bits_stored: Optional[int] = None
    transfer_syntax: Optional[str] = None
    rows: Optional[int] = None
    columns: Optional[int] = None
    number_of_frames: Optional[int] = None  # DICOM multi-frame: only the first frame is read
    sop_class: Optional[str] = None         # e.g. "Digital X-Ray Image Storage - For Presentation"
    decoder: Optional[str] = None           # pydicom pixel-data plugin used: "pylibjpeg", "gdcm", ...
    age_band: Optional[str] = None          # engine.model.population.AGE_BANDS, never the exact age
    study_key: Optional[str] = None         # a hash of StudyInstanceUID: groups a study's images, reveals nothing

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


@dataclass(frozen=True)
class PatientIdentifiers:
    """Identifiers kept apart from the study metadata: shown or exported only on request."""

    patient_name: Optional[str] = None
    patient_id: Optional[str] = None
    birth_date: Optional[str] = None
    accession_number: Optional[str] = None
    institution: Optional[str] = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v}


@dataclass(frozen=True)
class DecodedImage:
    """A radiograph as float32 grayscale in [0, 1], white = dense (bone), plus metadata.

    ``warnings`` carry non-fatal problems (a CT slice, a multi-frame file) to the CSV and the UI.
    """

    name: str
    pixels: np.ndarray
    metadata: StudyMetadata = field(default_factory=StudyMetadata)
    identifiers: PatientIdentifiers = field(default_factory=PatientIdentifiers)
    warnings: tuple[str, ...] = ()
    # Grayscale DICOM only: the stored values after the modality LUT (rescale), in the file's own
    # units, same shape as ``pixels``: what window/level in DICOM units works on. None otherwise.
    modality_values: Optional[np.ndarray] = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[:2]

"""Which algorithm made a result: the identity every result object carries (IHE AI Results, AIR).

IHE AIR asks each result object to name the algorithm that made it in the Contributing Equipment
Sequence (0018,A001): Purpose of Reference (Newcode1, 99IHE, "Processing Algorithm"), Manufacturer,
Manufacturer's Model Name, Software Versions and a Device UID that changes whenever the model
changes (for example by training). Here the Device UID is derived from the weights themselves:
``2.25.<the first 128 bits of the SHA-256 of model.safetensors, as a decimal integer>`` (a UUID-sized
integer under the ``2.25`` root, PS3.5 B.2), so the same weights give the same UID on every machine
and any change to them, however small, gives a new one. A predictor without a checkpoint folder
(a network built in memory) gets a UID derived from its card's name and version instead, and says so
in :attr:`AlgorithmIdentity.weights`.

The IHE code: AIR Rev. 1.1 (Trial Implementation), 6.5.3.1, writes it "(Newcode1, 99IHE, 1630
"Processing Algorithm")"; the code value is the placeholder ``Newcode1`` (1630 is the supplement's
margin line number, which copies into the text; MONAI Deploy, the reference implementation of the
profile, writes ``Newcode1``). :data:`PROCESSING_ALGORITHM_CODE` holds it in one place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from engine.inference.backends.artefacts import file_sha256
from engine.model.checkpoint import WEIGHTS_FILE

MANUFACTURER = "CXR Triage (open source)"
IHE_SCHEME = "99IHE"
PROCESSING_ALGORITHM_CODE = "Newcode1"
PROCESSING_ALGORITHM = hd.sr.CodedConcept(PROCESSING_ALGORITHM_CODE, IHE_SCHEME, "Processing Algorithm")


@dataclass(frozen=True)
class AlgorithmIdentity:
    """The model as the result objects name it."""

    name: str                     # Manufacturer's Model Name, TID 4019 Algorithm Name
    version: str                  # Software Versions, TID 4019 Algorithm Version
    device_uid: str               # Device UID (and the SR's Device Observer UID)
    weights: str                  # "sha256:<hex>" of model.safetensors, or why there is none

    @property
    def serial(self) -> str:
        """Device Serial Number (LO, 64 characters): the weights' SHA-256 in hex, else the UID's tail."""
        return self.weights[len("sha256:"):] if self.weights.startswith("sha256:") else self.device_uid[-64:]


def uid_from_digest(hex_digest: str) -> str:
    """``2.25.<int>`` from the first 128 bits of a hex digest (at most 44 characters)."""
    return f"2.25.{int(hex_digest[:32], 16)}"


def weights_sha256(checkpoint: Optional[str | Path]) -> Optional[str]:
    """SHA-256 (hex) of ``checkpoint/model.safetensors``; None without a checkpoint or its weights file."""
    if not checkpoint:
        return None
    try:
        return file_sha256(Path(checkpoint) / WEIGHTS_FILE)
    except OSError:
        return None


def identity_for(name: str, version: str, checkpoint: Optional[str | Path] = None) -> AlgorithmIdentity:
    """The identity of the model ``name`` ``version`` whose weights are in ``checkpoint`` (if given)."""
    name, version = (name or "CXR Triage model").strip(), (str(version or "unknown")).strip()
    sha = weights_sha256(checkpoint)
    if sha is not None:
        return AlgorithmIdentity(name, version, uid_from_digest(sha), f"sha256:{sha}")
    uid = generate_uid(prefix="2.25.", entropy_srcs=["cxr-triage-algorithm", name, version])
    return AlgorithmIdentity(name, version, uid, "no weights file: the UID is derived from the name and version")


def identity_of(predictor) -> AlgorithmIdentity:
    """The identity of a :class:`~engine.inference.predictor.Predictor` (its card and checkpoint)."""
    card = predictor.card
    return identity_for(card.name or card.architecture, str(card.version), getattr(predictor, "checkpoint", None))


def contributing_equipment(identity: AlgorithmIdentity, description: str = "") -> hd.ContributingEquipment:
    """The IHE AIR Contributing Equipment item for ``identity`` (Device UID included).

    highdicom accepts only the CID 7005 purposes; the item is built as "Processing Equipment" and its
    purpose then replaced by IHE's "Processing Algorithm", which AIR requires."""
    item = hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=identity.name[:64], software_versions=identity.version[:64],
        device_serial_number=identity.serial,
        contribution_description=description[:1024] if description else None)
    item.PurposeOfReferenceCodeSequence = [PROCESSING_ALGORITHM]
    item.DeviceUID = identity.device_uid
    return item


def coding_scheme_item() -> Dataset:
    """The Coding Scheme Identification item for IHE's 99IHE codes."""
    item = Dataset()
    item.CodingSchemeDesignator = IHE_SCHEME
    item.CodingSchemeName = "IHE Integrating the Healthcare Enterprise codes"
    item.CodingSchemeResponsibleOrganization = "IHE International"
    return item

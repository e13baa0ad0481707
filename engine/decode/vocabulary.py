"""Coded header values that may be shown: DICOM's defined terms, nothing free-text.

Modality, Body Part Examined and View Position are coded attributes, but nothing stops a modality
or a hand-edited file from putting free text (a patient's name, say) in them. A value is passed on
to the CSV, the worklist, warnings and logs only when it is one of the standard's defined terms
(PS3.3 C.7.3.1.1.1, PS3.16 CID 4031, PS3.3 C.8.11.5.1.1) or a known chest term; otherwise it is
withheld (None), like an identifier.
"""

from __future__ import annotations

import re
from typing import Optional

_MODALITIES = frozenset("""
AR ASMT AU BDUS BI BMD CR CT CTPROTOCOL DG DOC DX DR ECG EPS ES FID GM HC HD IO IOL IVOCT IVUS KER KO LEN
LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PLAN PR PT PX REG RESP RF RG RTDOSE RTIMAGE
RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG US VA XA XC
CD DD DM DS EC FA FS LP MA MS OPR ST VF DF CF
""".split())
_BODY_PARTS = frozenset("""
SKULL CSPINE TSPINE LSPINE SSPINE COCCYX CHEST CLAVICLE BREAST ABDOMEN PELVIS HIP SHOULDER ELBOW KNEE
ANKLE HAND FOOT EXTREMITY HEAD HEART NECK LEG ARM JAW WHOLEBODY THORAX LUNG SPINE ABDOMENPELVIS
CHESTABDOMEN CHESTABDPELVIS HEADNECK BRAIN FOREARM WRIST FINGER TOE HUMERUS FEMUR TIBIA FIBULA RIB
RIBS SACRUM ZYGOMA ORBIT SELLA SINUS MANDIBLE TMJ SCAPULA STERNUM CALCANEUS FACE NOSE ESOPHAGUS
STOMACH COLON KIDNEY BLADDER ENDOSCOPY ACJOINT IAC NASOPHARYNX OROPHARYNX LARYNX THYROID
TORAX TÓRAX BRUST PECHO POUMON THORAC
""".split())
_VIEW_POSITIONS = frozenset("AP PA LL RL RLD LLD RLO LLO LAT LATERAL AP-PA".split())
# Chest terms in other languages and common modality spellings ("PORT CHEST", "CHEST PA").
_CHEST_PHRASE = re.compile(r"^(PORT(ABLE)? )?(CHEST|THORAX|TORAX|TÓRAX|BRUST|PECHO|POUMON|LUNGS?)( (PA|AP|LAT|LATERAL))?$")

_TERMS = {"Modality": _MODALITIES, "BodyPartExamined": _BODY_PARTS, "ViewPosition": _VIEW_POSITIONS}


def defined_term(keyword: str, value: Optional[str]) -> Optional[str]:
    """``value`` (normalised to upper case) when it is a defined term of ``keyword``, else None."""
    if not value:
        return None
    term = " ".join(value.upper().split())
    if term in _TERMS.get(keyword, ()):
        return term
    if keyword == "BodyPartExamined" and _CHEST_PHRASE.match(term):
        return term
    return None

"""The record of one study's scoring, from the predictor to the store and every output.

:class:`Result` is what scoring one file with one model gives, and the one thing kept: the store holds
one per (file content, model), and every output (the CSV and Parquet rows, the worklist, the SR) is
written from it. The other study types are views of it:

- :class:`Prediction` is a Result on its way out of the predictor: with the input's name and content
  hash, the identifiers read from its header and, when asked, the decoded images that a heatmap or a
  results object needs.
- :class:`engine.worklist.store.StudyRow` is a Result in the store: with the study's place on a
  worklist and its review.
- :class:`engine.decode.pool.DecodedStudy` is what decoding gives before there is a Result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from engine.image import DecodedImage, PatientIdentifiers, StudyMetadata


def _without_name(name: str, message: str) -> str:
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message


@dataclass(frozen=True)
class Result:
    """The outcome of scoring one file with one model. No identifiers and no file name: the same bytes
    may arrive under other names, and names stay with the study rows."""

    status: str                                   # "ok" or "error"
    probability: Optional[float] = None
    message: str = ""                             # why there is no probability (without the file's name)
    warnings: tuple[str, ...] = ()
    metadata: StudyMetadata = field(default_factory=StudyMetadata)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @classmethod
    def refusal(cls, name: str, message: str) -> "Result":
        """An error result from a message that may start with the file's name (the name is dropped)."""
        return cls("error", None, _without_name(name, message))


@dataclass(frozen=True)
class Prediction:
    """One input's :class:`Result` as the predictor yields it, with what only this run has.

    ``image`` (pixels a display copy), ``model_input`` and ``stage_input`` are set only when the caller
    asked to keep images; ``ood_distance`` when the checkpoint has a fitted out-of-population score.
    """

    name: str
    sha256: str
    result: Result
    identifiers: PatientIdentifiers = field(default_factory=PatientIdentifiers)
    image: Optional[DecodedImage] = None
    model_input: Optional[np.ndarray] = None      # the (S, S) network input
    ood_distance: Optional[float] = None          # feature distance from the training images (engine.model.ood)
    stage_input: Optional[np.ndarray] = None      # on ONNX: the last stage's input (Grad-CAM)

    @classmethod
    def refused(cls, name: str, message: str, sha256: str = "") -> "Prediction":
        return cls(name, sha256, Result.refusal(name, message))

    @classmethod
    def scored(cls, name: str, sha256: str, probability: float, warnings: tuple[str, ...] = (),
               metadata: Optional[StudyMetadata] = None, **extra) -> "Prediction":
        result = Result("ok", float(probability), "", tuple(warnings), metadata or StudyMetadata())
        return cls(name, sha256, result, **extra)

    @property
    def ok(self) -> bool:
        return self.result.ok

    @property
    def status(self) -> str:
        return self.result.status

    @property
    def probability(self) -> Optional[float]:
        return self.result.probability

    @property
    def message(self) -> str:
        """Why there is no probability, naming the file ("" when there is one)."""
        return "" if self.ok else f"{self.name}: {self.result.message}"

    @property
    def warnings(self) -> tuple[str, ...]:
        return self.result.warnings

    @property
    def metadata(self) -> StudyMetadata:
        return self.result.metadata

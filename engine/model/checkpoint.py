"""Checkpoints are data, not code: ``model.safetensors`` plus ``model_card.json``.

The card records what inference needs (architecture, preprocessing, class names, temperature,
decision threshold) and what a reader needs (training data, validation metrics, time, hardware,
intended use). Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from engine.errors import CheckpointError
from engine.model.preprocess import Preprocessing
from engine.model.operating_point import OperatingPoint, population_points
from engine.model.population import Population
from engine.settings import settings

if TYPE_CHECKING:   # torch, safetensors and the models load only to read or write weights
    from torch import nn

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
VAL_PREDICTIONS_FILE = "val_predictions.csv"
CARD_VERSION = 1
INTENDED_USE = ("Decision support and research only: flags chest radiographs for review and shows "
                "where the network looked. It is not a diagnostic device and has not been cleared "
                "by any regulator; a clinician makes every diagnosis.")
ENSEMBLE = "ensemble"   # the architecture name of a deep-ensemble checkpoint (models.ensemble)
SHIPPED_MODEL_DIR = Path(__file__).resolve().parents[2] / "assets" / "models" / "default"
# $CXR_MODEL_DIR points every entry point (CLI, dashboard) at another checkpoint folder.
DEFAULT_MODEL_DIR = settings().model_dir or SHIPPED_MODEL_DIR


# A temperature outside this range makes every probability degenerate (1e-310: NaN; 1e308: 0.5).
TEMPERATURE_RANGE = (0.01, 100.0)


@dataclass
class ModelCard:
    architecture: str
    preprocessing: Preprocessing
    class_names: list[str] = field(default_factory=lambda: ["normal", "pneumonia"])
    threshold: float = 0.5
    threshold_rule: str = "default 0.5 (not tuned)"
    temperature: float = 1.0
    name: str = ""
    version: str = "0.1.0"
    extra: dict[str, Any] = field(default_factory=dict)  # training, validation, hardware, ...

    def __post_init__(self) -> None:
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ValueError(f"architecture must be a name, got {self.architecture!r}")
        if not (math.isfinite(self.temperature) and TEMPERATURE_RANGE[0] <= self.temperature <= TEMPERATURE_RANGE[1]):
            raise ValueError(f"temperature must be a finite number in [{TEMPERATURE_RANGE[0]:g}, "
                             f"{TEMPERATURE_RANGE[1]:g}] (outside it every probability is NaN, 0, 1 or 0.5), "
                             f"got {self.temperature}")
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise ValueError(f"decision threshold must be in [0, 1], got {self.threshold}")
        if len(self.class_names) < 2:
            raise ValueError(f"need at least 2 class names, got {self.class_names}")
        population_points(self.extra)          # each per-population point checked like the threshold
        Population.from_card_extra(self.extra)

    @property
    def label(self) -> str:
        """The model as every output records it (CSV, SR, decisions, site profiles): name and version."""
        return f"{self.name} {self.version}".strip()

    @property
    def population(self) -> Population:
        """Whom the model was trained on (``engine.model.population``): the age warnings follow it."""
        return Population.from_card_extra(self.extra)

    @property
    def operating_points(self) -> dict[str, OperatingPoint]:
        """The card's per-population operating points (``engine.model.operating_point``)."""
        return population_points(self.extra)

    @property
    def positive_index(self) -> int:
        return len(self.class_names) - 1

    def to_json(self) -> dict:
        return {"card_version": CARD_VERSION, "name": self.name or self.architecture,
                "version": self.version, "architecture": self.architecture,
                "input": self.preprocessing.as_dict(), "class_names": self.class_names,
                "decision_threshold": {"value": self.threshold, "rule": self.threshold_rule},
                "temperature": self.temperature, "intended_use": INTENDED_USE, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> "ModelCard":
        known = {"card_version", "name", "version", "architecture", "input", "class_names",
                 "decision_threshold", "temperature", "intended_use"}
        if not isinstance(d, dict):
            raise ValueError(f"a model card is a JSON object, got {type(d).__name__}")
        thr = d.get("decision_threshold", {})
        if isinstance(thr, (int, float)) and not isinstance(thr, bool):
            thr = {"value": thr}
        if not isinstance(thr, dict):
            raise ValueError(f"decision_threshold must be an object with a value, got {thr!r}")
        if not isinstance(d.get("input"), dict):
            raise ValueError("input (the preprocessing) must be an object with image_size")
        return cls(architecture=d["architecture"], preprocessing=Preprocessing.from_dict(d["input"]),
                   class_names=list(d.get("class_names", ["normal", "pneumonia"])),
                   threshold=float(thr.get("value", 0.5)), threshold_rule=thr.get("rule", ""),
                   temperature=float(d.get("temperature", 1.0)), name=d.get("name", ""),
                   version=str(d.get("version", "")),
                   extra={k: v for k, v in d.items() if k not in known})


def save_checkpoint(model: "nn.Module", card: ModelCard, out_dir: str | Path, *,
                    half: bool = False) -> Path:
    """Write weights (float16 storage with ``half``) and the card; return the folder."""
    from safetensors.torch import save_file
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"architecture": card.architecture})
    (out / CARD_FILE).write_text(json.dumps(card.to_json(), indent=2) + "\n")
    return out


def read_card(ckpt_dir: str | Path) -> ModelCard:
    folder = Path(ckpt_dir)
    card_path = folder / CARD_FILE
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint folder '{folder}' does not exist")
    if not card_path.is_file():
        raise CheckpointError(f"'{folder}' has no {CARD_FILE}: not a checkpoint folder")
    try:
        return ModelCard.from_json(json.loads(card_path.read_text()))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{card_path} is not a valid model card: {exc}") from None


def load_checkpoint(ckpt_dir: str | Path | None = None,
                    map_location: str = "cpu") -> tuple["nn.Module", ModelCard]:
    """Build the card's architecture and load its weights (float32, eval mode)."""
    from safetensors.torch import load_file

    from models import UnknownArchitecture
    folder = Path(ckpt_dir) if ckpt_dir else DEFAULT_MODEL_DIR
    card = read_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"'{folder}' has no {WEIGHTS_FILE}")
    try:
        model = _build(card)
    except UnknownArchitecture as exc:
        raise CheckpointError(f"{folder / CARD_FILE}: {exc}") from None
    try:
        state = load_file(str(weights), device=map_location)
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{weights} is not a readable safetensors file: {exc}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0:4]
        raise CheckpointError(
            f"{weights} does not fit architecture '{card.architecture}' "
            f"(in_channels={card.preprocessing.in_channels}, classes={len(card.class_names)}): "
            + " ".join(first)) from None
    return model.eval(), card


def _build(card: ModelCard) -> "nn.Module":
    """The card's network, untrained: one architecture, or an ensemble of the members its card lists."""
    from models import build_model
    channels, classes = card.preprocessing.in_channels, len(card.class_names)
    spec = card.extra.get("ensemble")
    if card.architecture != ENSEMBLE:
        return build_model(card.architecture, in_channels=channels, num_classes=classes)
    if not spec or len(spec.get("members") or []) < 2:
        raise CheckpointError(f"an '{ENSEMBLE}' card must list at least two members under 'ensemble.members'")
    from models.ensemble import EnsembleNet
    members = spec["members"]
    return EnsembleNet([build_model(m["architecture"], in_channels=channels, num_classes=classes) for m in members],
                       [float(m.get("temperature", 1.0)) for m in members], [m["architecture"] for m in members])


def load_val_predictions_path(ckpt_dir: str | Path) -> Optional[Path]:
    p = Path(ckpt_dir) / VAL_PREDICTIONS_FILE
    return p if p.is_file() else None

"""Image-based out-of-population score: Mahalanobis distance of the network's penultimate features.

Fitted at training time on the training images' features (``training.ood``) and stored beside the
weights (``ood.safetensors``: the mean, the shrunk inverse covariance, the cut-off), with its cut-off
chosen on the validation images so that about 5% of in-population images warn (Lee et al., NeurIPS
2018, "A simple unified framework for detecting out-of-distribution samples"). A study whose distance
exceeds the cut-off carries a warning; the probability is never hidden.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

OOD_FILE = "ood.safetensors"


@dataclass(frozen=True)
class FeatureOOD:
    mean: np.ndarray            # (D,)
    precision: np.ndarray       # (D, D), the inverse of the shrunk covariance
    cutoff: float               # distance above which a study warns
    target_rate: float          # share of validation images meant to exceed the cut-off
    validation_rate: float      # the share that did

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances of (N, D) features (float64)."""
        d = np.asarray(features, np.float64) - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def warning(self, distance: float) -> Optional[str]:
        if distance <= self.cutoff:
            return None
        return (f"outside the training population: the image looks unlike the training images "
                f"(feature distance {distance:.1f} > {self.cutoff:.1f}, a cut-off that "
                f"{100 * self.target_rate:.0f}% of validation images exceed)")

    def save(self, folder: Path | str) -> Path:
        from safetensors.numpy import save_file
        path = Path(folder) / OOD_FILE
        meta = {"cutoff": repr(self.cutoff), "target_rate": repr(self.target_rate),
                "validation_rate": repr(self.validation_rate), "method": "mahalanobis-penultimate"}
        save_file({"mean": self.mean.astype(np.float32), "precision": self.precision.astype(np.float32)},
                  str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, folder: Path | str) -> Optional["FeatureOOD"]:
        path = Path(folder) / OOD_FILE
        if not path.is_file():
            return None
        from safetensors import safe_open
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            mean, precision = f.get_tensor("mean"), f.get_tensor("precision")
        return cls(mean.astype(np.float64), precision.astype(np.float64), float(meta["cutoff"]),
                   float(meta["target_rate"]), float(meta["validation_rate"]))


def fit(train_features: np.ndarray, val_features: np.ndarray, target_rate: float = 0.05,
        shrinkage: float = 0.1) -> FeatureOOD:
    """Mean and shrunk covariance from training features; cut-off at the (1 - target_rate) quantile of
    the validation distances. Shrinkage towards the average variance keeps the inverse stable."""
    x = np.asarray(train_features, np.float64)
    mean = x.mean(axis=0)
    cov = np.cov(x - mean, rowvar=False)
    cov = (1 - shrinkage) * cov + shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    precision = np.linalg.inv(cov)
    partial = FeatureOOD(mean, precision, np.inf, target_rate, 0.0)
    val = partial.distances(val_features)
    cutoff = float(np.quantile(val, 1 - target_rate))
    return FeatureOOD(mean, precision, cutoff, target_rate, float(np.mean(val > cutoff)))


def describe(ood: FeatureOOD) -> str:
    return json.dumps({"method": "Mahalanobis distance of penultimate features", "cutoff": round(ood.cutoff, 3),
                       "target_rate": ood.target_rate, "validation_rate": round(ood.validation_rate, 4)})

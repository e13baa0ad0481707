"""The one place logits become a probability of pneumonia: softmax with the card's temperature."""

from __future__ import annotations

import numpy as np


def positive_probability(logits: np.ndarray, temperature: float, positive: int) -> np.ndarray:
    """P(class ``positive``) for each row of (N, C) ``logits`` after dividing by ``temperature``
    (computed in float64, shifted by the row maximum so that no exponent overflows)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, positive] / e.sum(axis=1)

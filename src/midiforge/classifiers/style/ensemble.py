"""The optional second opinion: a logistic regression on handcrafted features.

Tempo, brightness and note density separate reels from chorales on their own; mixing
them in can steady a CNN trained on little data. The mix is linear:
p = (w_cnn * p_cnn + w_hand * p_hand) / (w_cnn + w_hand), with w_hand = 0 (CNN only) by
default. The fitted regression is saved as plain numbers (`hand.json`), so inference
needs numpy only, neither scikit-learn nor torch.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from midiforge.config import ConfigError

HAND_FILE = "hand.json"


@dataclass
class HandModel:
    """Standardisation + multinomial logistic regression, as plain lists."""

    labels: list[str]
    mean: list[float]
    scale: list[float]
    coef: list[list[float]]  # (n_classes, n_features); one row for two classes
    intercept: list[float]

    def proba(self, features: np.ndarray) -> np.ndarray:
        """(n, n_features) -> (n, n_classes) probabilities."""
        x = (np.atleast_2d(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        z = x @ np.asarray(self.coef).T + np.asarray(self.intercept)
        if z.shape[1] == 1:  # scikit-learn's binary form: the logit of the second class
            z = np.concatenate([np.zeros_like(z), z], axis=1)
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / HAND_FILE
        path.write_text(json.dumps(asdict(self), indent=2))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> HandModel:
        return cls(**json.loads((Path(folder) / HAND_FILE).read_text()))


def fit_hand_model(
    features: np.ndarray, y: np.ndarray, labels: list[str], c: float = 1.0
) -> HandModel:
    """Fit on per-recording features (n, n_features) and class indices y."""
    from sklearn.linear_model import LogisticRegression

    mean = features.mean(axis=0)
    scale = np.where(features.std(axis=0) > 0, features.std(axis=0), 1.0)
    lr = LogisticRegression(C=c, max_iter=2000).fit((features - mean) / scale, y)
    if list(lr.classes_) != list(range(len(labels))):
        raise ConfigError("every style needs training recordings for the handcrafted model")
    return HandModel(
        labels=list(labels),
        mean=mean.tolist(),
        scale=scale.tolist(),
        coef=lr.coef_.tolist(),
        intercept=lr.intercept_.tolist(),
    )


def combine(
    p_cnn: np.ndarray, p_hand: np.ndarray | None, w_cnn: float, w_hand: float
) -> np.ndarray:
    """The weighted mean of the two probability vectors; the CNN alone where w_hand is 0."""
    if p_hand is None or w_hand == 0:
        return p_cnn
    return (w_cnn * p_cnn + w_hand * p_hand) / (w_cnn + w_hand)

"""Pick a model's note-decoding thresholds on held-out recordings.

A fine-tuned model's output probabilities are not on stock's scale: the fiddle model
trained with basic-pitch's recipe fires onsets with more confidence, and at stock's 0.5
it splits held notes (measured: held-out onset-F1 0.60 at 0.5, 0.84 at 0.85). So after
training, `midiforge train run` decodes the validation pieces' full recordings over a
grid of onset and frame thresholds, keeps the pair with the best weighted note score,
and saves it as the model's `decoding.yaml` (notes.py). The model runs once per
recording; only the decoding is repeated per grid point.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from midiforge.config import ConfigError
from midiforge.transcription.notes import NoteDecoding, decode_notes

METRICS = ("precision", "recall", "f1", "f1_offset")


@dataclass
class Calibration:
    enabled: bool = True
    onset_thresholds: list[float] = field(
        default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    )
    frame_thresholds: list[float] = field(default_factory=lambda: [0.2, 0.3, 0.4, 0.5])
    # score = sum of weight * (mean over pieces of the metric); onset-F1 and
    # onset+offset F1 count the same by default.
    objective: dict[str, float] = field(default_factory=lambda: {"f1": 1.0, "f1_offset": 1.0})

    def validate_config(self) -> None:
        grid = [*self.onset_thresholds, *self.frame_thresholds]
        if not self.onset_thresholds or not self.frame_thresholds:
            raise ConfigError("calibrate: give at least one onset and one frame threshold")
        if any(not 0 < t < 1 for t in grid):
            raise ConfigError("calibrate: thresholds must lie between 0 and 1")
        unknown = set(self.objective) - set(METRICS)
        if unknown or not any(self.objective.values()):
            raise ConfigError(
                f"calibrate.objective: weights over {', '.join(METRICS)}, not all zero"
                + (f" (unknown: {', '.join(sorted(unknown))})" if unknown else "")
            )


def score(outputs: Sequence[dict[str, np.ndarray]], refs: Sequence[np.ndarray],
          decoding: NoteDecoding) -> dict[str, float]:  # fmt: skip
    """Mean note metrics over pieces for one decoding (a piece counts once, whatever its
    length, as in `midiforge compare`)."""
    from midiforge.evaluation import note_metrics

    rows = [note_metrics(r, decode_notes(o, decoding)) for o, r in zip(outputs, refs, strict=True)]
    return {k: float(np.mean([row[k] for row in rows])) for k in METRICS}


def _preference(g: dict[str, float]) -> tuple[float, float]:
    """Higher score first; on a tie, the pair nearest basic-pitch's defaults (0.5, 0.3),
    so thresholds never move without evidence."""
    distance = abs(g["onset_threshold"] - 0.5) + abs(g["frame_threshold"] - 0.3)
    return round(g["score"], 6), -distance


def calibrate(outputs: Sequence[dict[str, np.ndarray]], refs: Sequence[np.ndarray],
              cfg: Calibration) -> dict[str, Any]:  # fmt: skip
    """The best (onset, frame) pair on these recordings, its metrics, and the whole grid."""
    if not outputs:
        raise ValueError("calibration needs at least one recording with a reference")
    grid = []
    for onset, frame in itertools.product(cfg.onset_thresholds, cfg.frame_thresholds):
        dec = NoteDecoding(onset_threshold=onset, frame_threshold=frame)
        metrics = score(outputs, refs, dec)
        value = sum(w * metrics[k] for k, w in cfg.objective.items())
        grid.append({"onset_threshold": onset, "frame_threshold": frame, "score": value,
                     **metrics})  # fmt: skip
    best = max(grid, key=_preference)
    return {"best": best, "grid": grid, "pieces": len(outputs)}

"""basic-pitch model output -> notes, with basic-pitch's own decoding.

The decoding is `predict()`'s own, `output_to_notes_polyphonic`, in the step-for-step port
in `note_events` (importing basic-pitch's module costs ~3 s per process), skipping
pitch-bend estimation, which does not change note events. Notes come back as
(start_s, end_s, pitch, velocity) rows, velocity = round(127 * amplitude) as basic-pitch
writes it to MIDI.

Thresholds belong to a model: a fine-tuned model's outputs are calibrated differently
from stock's, so `midiforge train run` picks them on its validation pieces and writes
`decoding.yaml` beside `model.onnx`. A threshold left unset (None) is taken from there,
else from basic-pitch's defaults; a threshold the user sets always wins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from midiforge.transcription import constants as bp
from midiforge.transcription import note_events

DECODING_FILE = "decoding.yaml"
# basic-pitch's `predict()` defaults, so the stock model's notes match basic-pitch's.
BASIC_PITCH_DEFAULTS = {"onset_threshold": 0.5, "frame_threshold": 0.3, "minimum_note_ms": 127.70}


@dataclass
class NoteDecoding:
    onset_threshold: float | None = None  # None: the model's decoding.yaml, else 0.5
    frame_threshold: float | None = None  # None: the model's decoding.yaml, else 0.3
    minimum_note_ms: float | None = None  # None: the model's decoding.yaml, else 127.7
    minimum_frequency: float | None = None
    maximum_frequency: float | None = None
    melodia_trick: bool = True

    def resolve(self, model_defaults: Mapping[str, Any] | None = None) -> NoteDecoding:
        """Every unset threshold filled: from `model_defaults`, else basic-pitch's; the
        result checked (ConfigError)."""
        filled = {}
        for key, fallback in BASIC_PITCH_DEFAULTS.items():
            if getattr(self, key) is None:
                filled[key] = float((model_defaults or {}).get(key, fallback))
        resolved = dataclasses.replace(self, **filled)
        resolved.validate_config()
        return resolved

    def validate_config(self) -> None:
        """Thresholds strictly between 0 and 1 (at or below 0 the note decoder, which
        clears energy to 0 as it takes notes, would never finish), a finite minimum length
        >= 0, positive frequencies, the minimum below the maximum."""
        from midiforge.config import ConfigError

        for key in ("onset_threshold", "frame_threshold"):
            value = getattr(self, key)
            if value is not None and not 0 < value < 1:
                raise ConfigError(f"{key} must lie between 0 and 1, not {value}")
        ms = self.minimum_note_ms
        if ms is not None and not (math.isfinite(ms) and ms >= 0):
            raise ConfigError(f"minimum_note_ms must be a finite number >= 0, not {ms}")
        lo, hi = self.minimum_frequency, self.maximum_frequency
        for key, value in (("minimum_frequency", lo), ("maximum_frequency", hi)):
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key} must be a positive number of Hz, not {value}")
        if lo is not None and hi is not None and lo >= hi:
            raise ConfigError(f"minimum_frequency {lo} must lie below maximum_frequency {hi}")


def model_decoding(model_path: str | Path) -> dict[str, float]:
    """The thresholds saved beside an ONNX model (`decoding.yaml`), or {} if none."""
    path = Path(model_path).parent / DECODING_FILE
    if not path.is_file():
        return {}
    saved = yaml.safe_load(path.read_text()) or {}
    return {k: float(saved[k]) for k in BASIC_PITCH_DEFAULTS if k in saved}


def save_decoding(folder: str | Path, values: Mapping[str, float], note: str = "") -> Path:
    """Write `decoding.yaml` into a model folder (only the keys models own)."""
    body = {k: float(values[k]) for k in BASIC_PITCH_DEFAULTS if k in values}
    path = Path(folder) / DECODING_FILE
    header = f"# {note}\n" if note else ""
    path.write_text(header + yaml.safe_dump(body, sort_keys=False))
    return path


def decode_notes(output: dict[str, np.ndarray], cfg: NoteDecoding) -> np.ndarray:
    cfg = cfg.resolve()  # a no-op when the caller resolved against its model
    min_len = int(np.round(cfg.minimum_note_ms / 1000 * (bp.AUDIO_SAMPLE_RATE / bp.FFT_HOP)))
    events = note_events.output_to_notes_polyphonic(
        output["note"],
        output["onset"],
        onset_thresh=cfg.onset_threshold,
        frame_thresh=cfg.frame_threshold,
        infer_onsets=True,
        min_note_len=min_len,
        min_freq=cfg.minimum_frequency,
        max_freq=cfg.maximum_frequency,
        melodia_trick=cfg.melodia_trick,
    )
    if not events:
        return np.zeros((0, 4))
    times = note_events.model_frames_to_time(output["contour"].shape[0])
    rows = [(times[s], times[e], p, np.round(127 * a)) for s, e, p, a in events]
    arr = np.asarray(rows, dtype=np.float64)
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))]

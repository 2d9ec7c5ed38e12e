"""basic-pitch model output -> notes, with basic-pitch's own decoding.

We call `basic_pitch.note_creation.output_to_notes_polyphonic` (the decoding inside
`predict()`), skipping pitch-bend estimation, which does not change note events. Notes
come back as (start_s, end_s, pitch, velocity) rows, velocity = round(127 * amplitude)
as basic-pitch writes it to MIDI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midiforge.transcription import constants as bp


@dataclass
class NoteDecoding:
    onset_threshold: float = 0.5  # basic-pitch's defaults, so results match predict()
    frame_threshold: float = 0.3
    minimum_note_ms: float = 127.70
    minimum_frequency: float | None = None
    maximum_frequency: float | None = None
    melodia_trick: bool = True


def decode_notes(output: dict[str, np.ndarray], cfg: NoteDecoding) -> np.ndarray:
    from basic_pitch import note_creation  # after constants: the package is already quiet

    min_len = int(np.round(cfg.minimum_note_ms / 1000 * (bp.AUDIO_SAMPLE_RATE / bp.FFT_HOP)))
    events = note_creation.output_to_notes_polyphonic(
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
    times = note_creation.model_frames_to_time(output["contour"].shape[0])
    rows = [(times[s], times[e], p, np.round(127 * a)) for s, e, p, a in events]
    arr = np.asarray(rows, dtype=np.float64)
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))]

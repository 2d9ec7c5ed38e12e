"""Note-level transcription metrics (mir_eval), one definition for the whole project.

`f1` is onset-only (50 ms tolerance); `f1_offset` adds mir_eval's default offset rule
(within 20% of the reference note's duration or 50 ms, whichever is larger).
"""

from __future__ import annotations

import mir_eval
import numpy as np
import pretty_midi

ONSET_TOLERANCE_S = 0.05


def _intervals_pitches(notes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    intervals = notes[:, :2].copy()
    # mir_eval rejects zero-length notes; they carry no duration information anyway.
    intervals[:, 1] = np.maximum(intervals[:, 1], intervals[:, 0] + 1e-3)
    return intervals, pretty_midi.note_number_to_hz(notes[:, 2])


def note_metrics(ref: np.ndarray, est: np.ndarray) -> dict[str, float]:
    """precision/recall/f1 (onsets) and f1_offset for two (N, 4) note arrays."""
    ref_i, ref_p = _intervals_pitches(ref)
    est_i, est_p = _intervals_pitches(est)
    if len(ref_i) == 0 or len(est_i) == 0:
        return {"precision": 0.0, "recall": 0.0, "f1": 0.0, "f1_offset": 0.0}
    p, r, f, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref_i, ref_p, est_i, est_p, onset_tolerance=ONSET_TOLERANCE_S, offset_ratio=None
    )
    _, _, f_off, _ = mir_eval.transcription.precision_recall_f1_overlap(
        ref_i, ref_p, est_i, est_p, onset_tolerance=ONSET_TOLERANCE_S
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f), "f1_offset": float(f_off)}

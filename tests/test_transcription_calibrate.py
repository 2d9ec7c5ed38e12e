"""Decoding thresholds that belong to a model: resolution order, decoding.yaml, and the
calibration grid on outputs whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from midiforge.config import ConfigError
from midiforge.transcription import calibrate
from midiforge.transcription.notes import (
    NoteDecoding,
    model_decoding,
    save_decoding,
)


def test_unset_thresholds_come_from_the_model_then_basic_pitch():
    got = NoteDecoding(frame_threshold=0.25).resolve(
        {"onset_threshold": 0.8, "frame_threshold": 0.6}
    )
    assert (got.onset_threshold, got.frame_threshold, got.minimum_note_ms) == (0.8, 0.25, 127.70)
    assert NoteDecoding().resolve(None).onset_threshold == 0.5
    assert NoteDecoding().resolve().frame_threshold == 0.3


def test_decoding_yaml_round_trip(tmp_path):
    model = tmp_path / "model.onnx"
    assert model_decoding(model) == {}  # stock and hand-made models have none
    save_decoding(tmp_path, {"onset_threshold": 0.7, "frame_threshold": 0.4, "score": 1.2}, "why")
    assert model_decoding(model) == {"onset_threshold": 0.7, "frame_threshold": 0.4}
    assert (tmp_path / "decoding.yaml").read_text().startswith("# why\n")


def _outputs_with_a_false_onset() -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Two held notes with true onsets at 0.75, and a false onset of 0.55 in the middle of
    the first: thresholds at or below 0.55 split that note in two."""
    from basic_pitch import note_creation

    frames = 400
    note, onset = np.zeros((frames, 88), np.float32), np.zeros((frames, 88), np.float32)
    spans = [(60, 20, 120), (64, 150, 250)]
    for pitch, a, b in spans:
        note[a:b, pitch - 21] = 0.9
        onset[a, pitch - 21] = 0.75
    onset[70, 60 - 21] = 0.55
    times = note_creation.model_frames_to_time(frames)
    ref = np.array([(times[a], times[b], p, 100) for p, a, b in spans], np.float64)
    return {"note": note, "onset": onset, "contour": np.zeros((frames, 264), np.float32)}, ref


def test_calibration_finds_the_threshold_that_stops_the_split():
    out, ref = _outputs_with_a_false_onset()
    cfg = calibrate.Calibration(onset_thresholds=[0.4, 0.5, 0.6, 0.7], frame_thresholds=[0.3])
    result = calibrate.calibrate([out], [ref], cfg)
    by_onset = {g["onset_threshold"]: g for g in result["grid"]}
    assert by_onset[0.5]["precision"] < 1.0  # the split note is a false positive
    assert by_onset[0.6]["f1"] == pytest.approx(1.0)
    # 0.6 and 0.7 tie; the tie goes to the one nearer basic-pitch's 0.5
    assert result["best"]["onset_threshold"] == 0.6
    assert result["pieces"] == 1 and len(result["grid"]) == 4


def test_calibration_config_is_checked():
    with pytest.raises(ConfigError, match="between 0 and 1"):
        calibrate.Calibration(onset_thresholds=[1.5]).validate_config()
    with pytest.raises(ConfigError, match="unknown: f2"):
        calibrate.Calibration(objective={"f2": 1.0}).validate_config()

"""The note-decoding port gives exactly basic-pitch's events, on real and random outputs."""

import subprocess
import sys

import numpy as np
import pytest

from midiforge import audio, registry
from midiforge.transcription import note_events
from midiforge.transcription.runner import OnnxTranscriber

OPTIONS = [
    {},  # predict()'s defaults
    {"onset_thresh": 0.3, "frame_thresh": 0.2, "min_note_len": 3},
    {"melodia_trick": False},
    {"infer_onsets": False},
    {"min_freq": 110.0, "max_freq": 880.0},
    {"energy_tol": 4},
]
DEFAULTS = {
    "onset_thresh": 0.5,
    "frame_thresh": 0.3,
    "min_note_len": 11,
    "infer_onsets": True,
    "min_freq": None,
    "max_freq": None,
}


def _theirs(note, onset, **kw):
    from basic_pitch import note_creation

    # theirs zeroes bins outside min/max frequency in the arrays it is given
    return note_creation.output_to_notes_polyphonic(note.copy(), onset.copy(), **kw)


def _assert_same(ours, theirs):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        assert a[:3] == b[:3]
        assert a[3] == b[3]  # same frames averaged in the same order: bit-equal


@pytest.fixture(scope="module")
def real_outputs(tiny_corpus):
    files = sorted((tiny_corpus / "audio").rglob("*.wav"))[:3]
    clips = [audio.load_for_transcription(f.read_bytes(), audio.AudioLimits()) for f in files]
    return OnnxTranscriber(registry.stock_model_path(), device="cpu")(clips)


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
def test_equal_to_basic_pitch_on_real_outputs(real_outputs, options):
    kw = {**DEFAULTS, **options}
    for out in real_outputs:
        note, onset = out["note"], out["onset"]
        before = note.copy()
        ours = note_events.output_to_notes_polyphonic(note, onset, **kw)
        assert len(ours) > 5
        _assert_same(ours, _theirs(note, onset, **kw))
        np.testing.assert_array_equal(note, before)  # ours leaves the caller's arrays alone


def test_equal_to_basic_pitch_on_random_outputs():
    rng = np.random.default_rng(7)
    total = 0
    for trial in range(20):
        n = int(rng.integers(2, 300))
        # sparse, blocky activations, so that onsets, held notes and melodia notes all occur
        note = (rng.random((n, 88)) < 0.05).astype(np.float32)
        note = np.maximum(note, np.roll(note, 1, axis=0)) * rng.uniform(0.2, 1.0, (n, 88))
        onset = (rng.random((n, 88)) * note).astype(np.float32)
        kw = {**DEFAULTS, **OPTIONS[trial % len(OPTIONS)]}
        ours = note_events.output_to_notes_polyphonic(note, onset, **kw)
        _assert_same(ours, _theirs(note, onset, **kw))
        total += len(ours)
    assert total > 1000
    silent = np.zeros((50, 88), np.float32)  # all-zero frame diffs: NaN onsets in both
    with np.errstate(all="ignore"):
        assert note_events.output_to_notes_polyphonic(silent, silent, **DEFAULTS) == []
        assert _theirs(silent, silent, **DEFAULTS) == []


def test_equal_to_basic_pitch_on_ties_nan_and_long_outputs():
    """Coarse levels make many equal maxima (which one basic-pitch takes first decides
    the notes); a NaN stops the melodia pass in both; long runs cross the walk's chunks."""
    rng = np.random.default_rng(11)
    total = 0
    for trial in range(12):
        n = int(rng.integers(50, 2000))
        held = np.repeat(rng.random((n // 40 + 1, 88)) < 0.08, 40, axis=0)[:n]
        note = (held * rng.integers(0, 5, (n, 88)) / 4).astype(np.float32)
        onset = (note * (rng.random((n, 88)) < 0.1)).astype(np.float32)
        kw = {**DEFAULTS, **OPTIONS[trial % len(OPTIONS)]}
        if trial % 4 == 3:
            note[rng.integers(n), rng.integers(88)] = np.nan
        with np.errstate(invalid="ignore"):
            ours = note_events.output_to_notes_polyphonic(note, onset, **kw)
            _assert_same(ours, _theirs(note, onset, **kw))
        total += len(ours)
    assert total > 500


def test_frame_times_equal_basic_pitch():
    from basic_pitch import note_creation

    for n in (0, 1, 171, 172, 173, 5000):
        np.testing.assert_array_equal(
            note_events.model_frames_to_time(n), note_creation.model_frames_to_time(n)
        )


def test_decoding_does_not_import_basic_pitch_note_creation():
    code = (
        "import sys, numpy as np\n"
        "from midiforge.transcription.notes import NoteDecoding, decode_notes\n"
        "z = np.zeros((100, 88), np.float32)\n"
        "decode_notes({'note': z, 'onset': z, 'contour': np.zeros((100, 264))}, NoteDecoding())\n"
        "print(sorted(m for m in ('basic_pitch.note_creation', 'mir_eval', 'librosa')"
        " if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "bad",
    [
        {"frame_threshold": -0.1},  # the decoder clears energy to 0 > -0.1: it never ended
        {"onset_threshold": 0.0},
        {"onset_threshold": 1.5},
        {"minimum_note_ms": -1.0},
        {"minimum_frequency": 500.0, "maximum_frequency": 100.0},
    ],
)
def test_decoding_settings_out_of_range_are_refused(bad):
    from midiforge.config import ConfigError
    from midiforge.transcription.notes import NoteDecoding, decode_notes

    rng = np.random.default_rng(0)
    outputs = {k: rng.random((50, n)).astype(np.float32)
               for k, n in (("note", 88), ("onset", 88), ("contour", 264))}  # fmt: skip
    with pytest.raises(ConfigError, match=next(iter(bad))):
        decode_notes(outputs, NoteDecoding(**bad))

"""FluidSynth rendering: timing, pitch, silence where there are no notes, determinism."""

import numpy as np
import pytest

from midiforge import midi_io, render

SR = 22_050


def one_note(pitch=69, start=0.5, end=1.0, program=0):
    return midi_io.midi_from_notes(np.array([[start, end, pitch, 100]]), program=program)


def test_length_is_last_note_off_plus_tail():
    audio = render.render_midi(one_note(), sample_rate=SR, tail_s=0.25)
    assert audio.dtype == np.float32
    assert len(audio) == round(1.25 * SR)
    assert 0.85 < np.max(np.abs(audio)) <= 0.9  # peak-normalised to -1 dBFS


def test_note_sounds_when_and_at_the_pitch_it_should():
    audio = render.render_midi(one_note(pitch=69), sample_rate=SR, tail_s=0.5)
    before = audio[: int(0.48 * SR)]
    during = audio[int(0.6 * SR) : int(0.95 * SR)]
    assert np.sqrt(np.mean(before**2)) < 1e-4  # silence before the onset
    assert np.sqrt(np.mean(during**2)) > 0.05
    spectrum = np.abs(np.fft.rfft(during * np.hanning(len(during))))
    peak_hz = np.fft.rfftfreq(len(during), 1 / SR)[np.argmax(spectrum)]
    assert abs(peak_hz - 440.0) < 10


def test_no_reverb_tail_after_release():
    audio = render.render_midi(one_note(start=0.1, end=0.4), sample_rate=SR, tail_s=1.5)
    late = audio[int(1.4 * SR) :]
    assert np.sqrt(np.mean(late**2)) < 1e-3


def test_deterministic_and_sample_rate_respected():
    a = render.render_midi(one_note(), sample_rate=16_000)
    b = render.render_midi(one_note(), sample_rate=16_000)
    assert len(a) == round(1.25 * 16_000)
    np.testing.assert_array_equal(a, b)


def test_missing_soundfont_is_a_clear_error(tmp_path):
    with pytest.raises(render.RenderError, match="soundfont not found"):
        render.render_midi(one_note(), soundfont=tmp_path / "none.sf2")

"""Drum-hit features, labels, detection defaults and hit MIDI, on signals with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from midiforge.classifiers.drums import hitmidi
from midiforge.classifiers.drums.detect import (
    DrumDefaults,
    detect_hits,
    fallback_keep,
    load_defaults,
)
from midiforge.classifiers.drums.features import FEATURES, FeatureConfig, hit_features
from midiforge.classifiers.drums.kit import STEMS, UnknownStemError
from midiforge.classifiers.drums.labels import (
    confusion,
    decision_metrics,
    label_detections,
    match_hits,
)
from midiforge.config import ConfigError

SR = 22_050
COL = {name: i for i, name in enumerate(FEATURES)}


def _silence(seconds: float = 1.0) -> np.ndarray:
    return np.zeros(round(seconds * SR), dtype=np.float32)


def _place(audio: np.ndarray, at_s: float, sound: np.ndarray) -> np.ndarray:
    i = round(at_s * SR)
    audio[i : i + len(sound)] += sound[: len(audio) - i]
    return audio


def _decaying_sine(freq: float, tau_s: float, seconds: float = 0.8, amp: float = 1.0):
    t = np.arange(round(seconds * SR)) / SR
    return (amp * np.exp(-t / tau_s) * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _features(audio: np.ndarray, onsets, stem: str = "kick") -> np.ndarray:
    return hit_features(audio, SR, np.asarray(onsets, float), stem, FeatureConfig())


# --- features --------------------------------------------------------------------------------


def test_shape_order_and_empty_input():
    assert FEATURES == ("Str", "Amp", "BodyE", "BrillE", "Total", "GeoMean", "SustainMs")
    f = _features(_place(_silence(), 0.2, _decaying_sine(100, 0.05)), [0.2, 0.6])
    assert f.shape == (2, 7) and np.isfinite(f).all()
    assert _features(_silence(), []).shape == (0, 7)
    with pytest.raises(UnknownStemError, match="choose from kick"):
        _features(_silence(), [0.1], stem="cowbell")


def test_body_sine_dominates_brilliance_and_click_is_brilliant():
    body = _features(_place(_silence(), 0.3, _decaying_sine(100, 0.08)), [0.3])[0]
    assert body[COL["BodyE"]] - body[COL["BrillE"]] > 40
    click = _silence()
    click[round(0.3 * SR)] = 0.9  # an impulse: flat spectrum, so energy goes with bandwidth
    c = _features(click, [0.3])[0]
    assert c[COL["BrillE"]] - c[COL["BodyE"]] > 10  # 3,500 Hz of band against 110 Hz


def test_energy_scale_is_mean_square_in_db():
    t = np.arange(SR) / SR
    sine = np.sin(2 * np.pi * 100 * t).astype(np.float32)  # full scale, mean square 0.5
    f = _features(sine, [0.5])[0]
    assert f[COL["BodyE"]] == pytest.approx(-3.01, abs=0.3)
    assert f[COL["Total"]] == pytest.approx(-3.01, abs=0.3)
    assert f[COL["BrillE"]] < -60
    assert _features(_silence(), [0.5])[0, COL["Total"]] == -120.0  # the silence floor


def test_geomean_is_mean_of_band_energies_in_db():
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(SR)).astype(np.float32)
    _place(audio, 0.4, _decaying_sine(90, 0.05, amp=0.6))
    for stem in STEMS:
        f = _features(audio, [0.1, 0.4, 0.7], stem=stem)
        lin = np.sqrt(10 ** (f[:, COL["BodyE"]] / 10) * 10 ** (f[:, COL["BrillE"]] / 10))
        np.testing.assert_allclose(f[:, COL["GeoMean"]], 10 * np.log10(lin), atol=1e-9)


def test_amp_is_the_window_peak():
    audio = _place(_silence(), 0.2, _decaying_sine(200, 0.02, amp=0.3))
    audio[round(0.23 * SR)] = -0.7  # inside [t - 10 ms, t + 60 ms)
    audio[round(0.35 * SR)] = 0.95  # after the window: not this hit's
    assert _features(audio, [0.2])[0, COL["Amp"]] == pytest.approx(0.7)


@pytest.mark.parametrize("tau_ms", [10.0, 50.0, 300.0])
def test_sustain_of_exponential_decay_matches_tau_ln10(tau_ms):
    audio = _place(_silence(1.5), 0.2, _decaying_sine(400, tau_ms / 1000, seconds=1.2))
    got = _features(audio, [0.2])[0, COL["SustainMs"]]
    # The documented value: tau ln 10, plus half an envelope frame.
    expected = tau_ms * np.log(10) + FeatureConfig().env_frame_ms / 2
    assert got == pytest.approx(expected, abs=2.5)


def test_sustain_ends_where_a_weak_hit_sinks_back_into_a_tail():
    # A loud long tail, and a weak short hit on top of it: measured from the tail's level
    # the weak hit is short, though it never falls 20 dB below its own peak.
    audio = _place(_silence(1.5), 0.1, _decaying_sine(150, 0.5, seconds=1.3, amp=0.8))
    _place(audio, 0.5, _decaying_sine(3000, 0.01, seconds=0.2, amp=0.8))
    f = _features(audio, [0.1, 0.5])
    assert f[1, COL["SustainMs"]] < 60 < f[0, COL["SustainMs"]]


def test_strength_is_high_at_a_hit_and_low_inside_a_held_tone():
    audio = _place(_silence(1.5), 0.5, _decaying_sine(300, 0.3, amp=0.8))
    f = _features(audio, [0.5, 0.9])
    assert f[0, COL["Str"]] > 3 * f[1, COL["Str"]]


# --- labels ----------------------------------------------------------------------------------


def test_matching_tolerance_edges():
    assert match_hits([1.0], [1.03], 0.03) == [(0, 0)]
    assert match_hits([1.0], [1.0301], 0.03) == []
    assert match_hits([1.0], [0.97], 0.03) == [(0, 0)]
    assert label_detections([], [1.0]).tolist() == []
    assert label_detections([1.0, 2.0], []).tolist() == [0, 0]


def test_matching_is_one_to_one_and_nearest_first():
    # A double trigger: only the nearer detection takes the hit.
    assert label_detections([1.0, 1.02], [1.015]).tolist() == [0, 1]
    # Two edited hits near one detection: it is used once.
    assert match_hits([1.0], [0.99, 1.005]) == [(0, 1)]
    # Closest pair first, not first-come: 1.025-1.02 (5 ms) beats 1.00-1.02 (20 ms),
    # which leaves 1.00 unmatched (1.045 is 45 ms away).
    assert match_hits([1.0, 1.025], [1.02, 1.045]) == [(1, 0)]
    # Ties go to the earlier detection.
    assert match_hits([0.99, 1.01], [1.0]) == [(0, 0)]


def test_confusion_and_metrics():
    c = confusion(np.array([1, 1, 0, 0, 1]), np.array([1, 0, 1, 0, 1]))
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 1}
    m = decision_metrics(c)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert decision_metrics({"tp": 0, "fp": 0, "fn": 3, "tn": 1})["f1"] == 0.0


# --- detection defaults and fallback ----------------------------------------------------------


def test_defaults_cover_every_stem_and_a_user_yaml_overrides(tmp_path):
    d = load_defaults()
    assert isinstance(d, DrumDefaults)
    assert {s: d.for_stem(s).geomean_db for s in STEMS}["snare"] == -50.0
    user = tmp_path / "my.yaml"
    user.write_text("snare:\n  geomean_db: -10\n")
    mine = load_defaults(user)
    assert mine.snare.geomean_db == -10.0
    assert mine.snare.min_sustain_ms == d.snare.min_sustain_ms
    assert mine.kick == d.kick
    user.write_text("snare:\n  geomean: -10\n")
    with pytest.raises(ConfigError, match=r"snare\.geomean"):
        load_defaults(user)
    with pytest.raises(UnknownStemError):
        d.for_stem("bongo")


def test_fallback_removes_weak_or_short_hits():
    th = load_defaults().snare
    rows = np.zeros((3, 7))
    rows[:, COL["GeoMean"]] = [th.geomean_db + 5, th.geomean_db - 5, th.geomean_db + 5]
    rows[:, COL["SustainMs"]] = [200.0, 200.0, th.min_sustain_ms / 2]
    assert fallback_keep(rows, th).tolist() == [True, False, False]


def test_detection_finds_clicks_at_their_times():
    rng = np.random.default_rng(1)
    audio = (0.001 * rng.standard_normal(2 * SR)).astype(np.float32)
    times = np.array([0.25, 0.6, 1.0, 1.3, 1.7])
    hit = _decaying_sine(1200, 0.03, seconds=0.2) + 0.3 * rng.standard_normal(round(0.2 * SR))
    for t in times:
        _place(audio, t, (hit * np.exp(-np.arange(len(hit)) / (0.03 * SR))).astype(np.float32))
    d = load_defaults()
    found = detect_hits(audio, SR, d.snare, d.hop_length, d.n_fft)
    assert label_detections(found, times, 0.02).sum() == len(times)
    assert len(detect_hits(_silence(), SR, d.snare)) == 0


# --- hit MIDI -----------------------------------------------------------------------------------


def test_hit_midi_round_trip(tmp_path):
    onsets = np.array([0.1, 0.35, 0.5, 1.25])
    vel = hitmidi.amp_to_velocity(np.array([1.0, 0.5, 0.1, 1e-4]))
    assert vel.tolist()[0] == 127 and vel.tolist()[-1] == 1 and np.all(np.diff(vel) < 0)
    hitmidi.write_hits(tmp_path / "x.mid", onsets, vel, "cymbals")
    np.testing.assert_allclose(hitmidi.read_onsets(tmp_path / "x.mid"), onsets, atol=2e-3)
    (tmp_path / "bad.mid").write_bytes(b"not midi")
    with pytest.raises(hitmidi.HitFileError, match=r"bad\.mid"):
        hitmidi.read_onsets(tmp_path / "bad.mid")

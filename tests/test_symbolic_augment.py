"""Augmentation: which copies exist, and that each copy changes exactly what it says."""

import numpy as np
import pretty_midi
import pytest

from midiforge import config, corpus, midi_io
from midiforge.symbolic import augment as ag
from midiforge.symbolic import tokenize as tk

CFG = ag.AugmentConfig()


def melody_midi(pitches, velocities=None, step=0.25) -> bytes:
    velocities = velocities or [80] * len(pitches)
    rows = [
        (i * step, (i + 1) * step, p, v)
        for i, (p, v) in enumerate(zip(pitches, velocities, strict=True))
    ]
    return midi_io.midi_bytes(midi_io.midi_from_notes(np.array(rows)))


def notes_of(midi: bytes) -> np.ndarray:
    return midi_io.notes_array(midi_io.load_midi(midi))


@pytest.fixture(scope="module")
def fiddle() -> bytes:
    cand = corpus.Candidate("fiddle", "ryansMammoth/LucyCampbellsReel.abc")
    pm, _ = corpus.score_to_midi(cand, seconds=20)
    return midi_io.midi_bytes(pm)


@pytest.fixture(scope="module")
def fiddle_copies(fiddle):
    return ag.augment(fiddle, np.random.default_rng(7), CFG)


def test_middle_range_melody_gets_all_keys_and_both_octaves():
    copies = ag.augment(melody_midi(list(range(60, 77))), np.random.default_rng(0), CFG)
    shifts = [(a["transpose"], a["octave"]) for a, _ in copies]
    assert len(copies) == 13
    assert shifts == [(s, 0) for s in (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6)] + [(0, -1), (0, 1)]


def test_melody_near_the_top_gets_fewer_keys_and_no_octave_up():
    # Highest note 105; the range ends before 109, so at most +3.
    copies = ag.augment(melody_midi(list(range(90, 106))), np.random.default_rng(0), CFG)
    shifts = [(a["transpose"], a["octave"]) for a, _ in copies]
    assert shifts == [(s, 0) for s in (-5, -4, -3, -2, -1, 1, 2, 3)] + [(0, -1)]
    for _, midi in copies:
        assert notes_of(midi)[:, 2].max() < 109


def test_pitches_shift_exactly_and_beats_do_not_move(fiddle, fiddle_copies):
    orig = midi_io.load_midi(fiddle)
    orig_notes = midi_io.notes_array(orig)
    assert len(fiddle_copies) == 13
    for applied, midi in fiddle_copies:
        pm = midi_io.load_midi(midi)
        notes = midi_io.notes_array(pm)
        shift = applied["transpose"] + 12 * applied["octave"]
        np.testing.assert_array_equal(notes[:, 2], orig_notes[:, 2] + shift)
        beats = [pm.time_to_tick(t) / pm.resolution for t in notes[:, 0]]
        orig_beats = [orig.time_to_tick(t) / orig.resolution for t in orig_notes[:, 0]]
        np.testing.assert_allclose(beats, orig_beats, atol=1e-3)


def test_tempo_scales_note_times_by_its_inverse(fiddle, fiddle_copies):
    orig_notes = notes_of(fiddle)
    scales = [a["tempo_scale"] for a, _ in fiddle_copies]
    assert all(0.9 <= s <= 1.1 and s == round(s, 4) for s in scales)
    for applied, midi in fiddle_copies:
        notes = notes_of(midi)
        np.testing.assert_allclose(
            notes[:, 1], orig_notes[:, 1] / applied["tempo_scale"], atol=1e-3
        )
        _, tempi = midi_io.load_midi(midi).get_tempo_changes()
        assert tempi[0] == pytest.approx(120 * applied["tempo_scale"], rel=1e-5)


def test_every_tempo_is_scaled():
    from symusic import Note, Score, Tempo, Track

    score = Score(480)
    score.tempos.extend([Tempo(0, 100.0), Tempo(4 * 480, 150.0)])  # 150 bpm from beat 4
    track = Track(program=0)
    track.notes.extend([Note(i * 240, 200, 60 + i, 80) for i in range(16)])
    score.tracks.append(track)
    applied, midi = ag.augment(score.dumps_midi(), np.random.default_rng(0), CFG)[0]
    times, tempi = midi_io.load_midi(midi).get_tempo_changes()
    scale = applied["tempo_scale"]
    np.testing.assert_allclose(tempi, [100 * scale, 150 * scale], rtol=1e-5)
    assert times[1] == pytest.approx(2.4 / scale, abs=1e-4)  # beat 4 at 100 bpm = 2.4 s


def test_a_file_without_tempo_is_scaled_from_the_midi_default():
    from symusic import Note, Score, Track

    score = Score(480)
    track = Track(program=0)
    track.notes.extend([Note(i * 480, 400, 60 + i, 80) for i in range(16)])
    score.tracks.append(track)
    assert len(score.tempos) == 0
    applied, midi = ag.augment(score.dumps_midi(), np.random.default_rng(0), CFG)[0]
    _, tempi = midi_io.load_midi(midi).get_tempo_changes()
    np.testing.assert_allclose(tempi, [120 * applied["tempo_scale"]], rtol=1e-5)
    assert notes_of(midi)[-1, 0] == pytest.approx(15 * 0.5 / applied["tempo_scale"], abs=1e-3)


def test_velocities_shift_and_clamp():
    velocities = [1, 5, 60, 125, 127] * 4
    midi = melody_midi([60 + i for i in range(20)], velocities)
    copies = ag.augment(midi, np.random.default_rng(3), CFG)
    deltas = [a["velocity_delta"] for a, _ in copies]
    assert min(deltas) < -4 and max(deltas) > 2  # this seed clamps at both ends
    for applied, out in copies:
        expected = np.clip(np.array(velocities) + applied["velocity_delta"], 1, 127)
        np.testing.assert_array_equal(notes_of(out)[:, 3], expected)


def test_same_seed_same_bytes_different_seed_different_draws(fiddle, fiddle_copies):
    again = ag.augment(fiddle, np.random.default_rng(7), CFG)
    assert again == fiddle_copies
    other = ag.augment(fiddle, np.random.default_rng(8), CFG)
    draws = [(a["tempo_scale"], a["velocity_delta"]) for a, _ in fiddle_copies]
    assert [(a["tempo_scale"], a["velocity_delta"]) for a, _ in other] != draws
    assert [m for _, m in other] != [m for _, m in fiddle_copies]


def test_every_copy_tokenizes_and_tempo_shows_in_tokens(fiddle, fiddle_copies):
    tokenizer = tk.make_tokenizer(tk.TokenizerSettings())
    tempo_tokens = set()
    for _, midi in fiddle_copies:
        ids, reason, detail = tk.encode(tokenizer, midi)
        assert (reason, detail) == (None, "")
        tempo_tokens |= {tokenizer[int(i)] for i in ids if tokenizer[int(i)].startswith("Tempo_")}
    assert len(tempo_tokens) >= 3


def test_drums_are_not_transposed_but_get_the_velocity_shift():
    pm = midi_io.midi_from_notes(
        np.array([(i * 0.25, i * 0.25 + 0.2, 60 + i, 80) for i in range(13)])
    )
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(90, 36 + i % 3, i * 0.5, i * 0.5 + 0.1) for i in range(6)]
    pm.instruments.append(drums)
    for applied, midi in ag.augment(midi_io.midi_bytes(pm), np.random.default_rng(0), CFG):
        out = midi_io.load_midi(midi)
        drum = next(i for i in out.instruments if i.is_drum)
        assert [n.pitch for n in drum.notes] == [36 + i % 3 for i in range(6)]
        assert {n.velocity for n in drum.notes} == {90 + applied["velocity_delta"]}


def test_key_signatures_follow_the_transposition(fiddle, fiddle_copies):
    key = midi_io.load_midi(fiddle).key_signature_changes[0].key_number  # A major = 9
    for applied, midi in fiddle_copies:
        moved = midi_io.load_midi(midi).key_signature_changes[0].key_number
        assert moved == (key + applied["transpose"]) % 12


def test_no_pitched_notes_no_copies_and_switches_off():
    empty = midi_io.midi_bytes(midi_io.midi_from_notes(np.zeros((0, 4))))
    assert ag.augment(empty, np.random.default_rng(0), CFG) == []
    midi = melody_midi(list(range(60, 77)))
    only_octaves = ag.AugmentConfig(transpose_all_keys=False)
    assert [a["octave"] for a, _ in ag.augment(midi, np.random.default_rng(0), only_octaves)] == [
        -1,
        1,
    ]
    plain = ag.AugmentConfig(tempo_range=(1.0, 1.0), velocity_delta=0, octave_shift=False)
    for applied, _ in ag.augment(midi, np.random.default_rng(0), plain):
        assert (applied["tempo_scale"], applied["velocity_delta"]) == (1.0, 0)


def test_unreadable_midi_and_bad_configs_raise_value_error():
    with pytest.raises(ValueError, match="not a readable MIDI"):
        ag.augment(b"nope", np.random.default_rng(0), CFG)
    with pytest.raises(ValueError, match="tempo_range"):
        config.from_dict(ag.AugmentConfig, {"tempo_range": [1.2, 0.8]})

"""REMI tokenization: real pieces round-trip, the tokenizer file round-trips, bad input
gives reasons."""

import random
from fractions import Fraction

import numpy as np
import pytest
import yaml
from symusic import Note, Score, Track

from midiforge import config, corpus, midi_io
from midiforge.symbolic import tokenize as tk


@pytest.fixture(scope="module")
def tokenizer():
    return tk.make_tokenizer(tk.TokenizerSettings())


def corpus_midi(style: str, path: str, seconds: float = 20.0) -> bytes:
    pm, _ = corpus.score_to_midi(corpus.Candidate(style, path), seconds=seconds)
    corpus.assign_programs(pm, style, vary=False, rng=random.Random(0))
    return midi_io.midi_bytes(pm)


@pytest.fixture(scope="module")
def fiddle() -> bytes:
    return corpus_midi("fiddle", "ryansMammoth/LucyCampbellsReel.abc")


def notes_in_quarters(score: Score) -> list[tuple]:
    """(program, pitch, start, duration, velocity) with times as exact quarter fractions,
    so scores at different ticks per quarter compare directly."""
    tpq = score.ticks_per_quarter
    return sorted(
        (
            -1 if t.is_drum else t.program,
            n.pitch,
            Fraction(n.time, tpq),
            Fraction(n.duration, tpq),
            n.velocity,
        )
        for t in score.tracks
        for n in t.notes
    )


@pytest.mark.parametrize(
    ("style", "path", "programs"),
    [
        ("fiddle", "ryansMammoth/LucyCampbellsReel.abc", {40}),
        ("quartet", "haydn/opus74no1/movement1.mxl", {40, 41, 42}),
        ("chorale", "bach/bwv27.6.mxl", {19}),
    ],
)
def test_real_pieces_encode_and_decode_to_the_preprocessed_notes(tokenizer, style, path, programs):
    midi = corpus_midi(style, path)
    ids, reason, detail = tk.encode(tokenizer, midi)
    assert (reason, detail) == (None, "")
    assert ids.dtype == np.int32 and ids.ndim == 1 and len(ids) > 100
    preprocessed = tokenizer.preprocess_score(Score.from_midi(midi))
    decoded = tokenizer.decode(ids.tolist())
    assert notes_in_quarters(decoded) == notes_in_quarters(preprocessed)
    assert {t.program for t in decoded.tracks} == programs
    assert decoded.note_num() > 50


def test_quartet_tracks_share_one_stream_with_program_tokens(tokenizer):
    midi = corpus_midi("quartet", "haydn/opus74no1/movement1.mxl", seconds=10)
    assert len(midi_io.load_midi(midi).instruments) == 4
    ids, _, _ = tk.encode(tokenizer, midi)
    tokens = [tokenizer[int(i)] for i in ids]
    assert {t for t in tokens if t.startswith("Program_")} == {
        "Program_40",
        "Program_41",
        "Program_42",
    }
    assert tokens[:2] == ["Bar_None", "TimeSig_4/4"]


def test_saved_tokenizer_loads_and_encodes_identically(tokenizer, fiddle, tmp_path):
    path = tmp_path / "tokenizer.json"
    tk.save_tokenizer(tokenizer, path)
    loaded = tk.load_tokenizer(path)
    assert loaded == tokenizer
    assert len(loaded) == len(tokenizer)
    np.testing.assert_array_equal(tk.encode(loaded, fiddle)[0], tk.encode(tokenizer, fiddle)[0])


def test_settings_round_trip_through_yaml_to_the_same_tokenizer(tokenizer):
    settings = tk.TokenizerSettings()
    text = yaml.safe_dump(config.to_dict(settings))
    again = config.from_dict(tk.TokenizerSettings, yaml.safe_load(text))
    assert again == settings
    assert tk.make_tokenizer(again) == tokenizer
    with pytest.raises(ValueError, match="0-4"):
        config.from_dict(tk.TokenizerSettings, {"beat_res": {"0-4": 8}})


def test_no_notes_is_a_reason(tokenizer):
    empty = midi_io.midi_bytes(midi_io.midi_from_notes(np.zeros((0, 4))))
    assert tk.encode(tokenizer, empty)[:2] == (None, "no_notes")


def test_notes_the_tokenizer_would_drop_are_a_reason(tokenizer):
    """MidiTok's preprocessing drops pitches outside its range without a word, and the
    round trip starts from what is left: one such note used to vanish from the tokens
    while the row kept it."""
    notes = np.array([(i * 0.5, i * 0.5 + 0.4, 60 + i, 80) for i in range(8)] + [(4, 4.4, 110, 80)])
    ids, reason, detail = tk.encode(tokenizer, midi_io.midi_bytes(midi_io.midi_from_notes(notes)))
    assert (ids, reason) == (None, "pitch_out_of_range")
    assert detail == "1 of 9 notes outside pitches 21-109"


def _meter_piece(num: int, den: int, bars: int = 4) -> bytes:
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(initial_tempo=120)
    pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0))
    inst = pretty_midi.Instrument(40)
    beat = 2.0 / den  # seconds per beat of the denominator at quarter = 120
    for i in range(num * bars):
        inst.notes.append(pretty_midi.Note(80, 60 + i % 12, i * beat, i * beat + 0.9 * beat))
    pm.instruments.append(inst)
    return midi_io.midi_bytes(pm)


@pytest.mark.parametrize("meter", [(2, 2), (3, 2), (4, 2), (3, 1), (9, 8), (7, 8), (6, 8), (3, 4)])
def test_each_meter_is_tokenized_in_its_own_bars(tokenizer, meter):
    """Four bars of the meter: its own TimeSig token and four Bar tokens. MidiTok's default
    range wrote 2/2, 3/2, 4/2, 3/1, 9/8 and 7/8 as 4/4 (a 4/2 piece came out as 8 bars)."""
    num, den = meter
    ids, reason, _ = tk.encode(tokenizer, _meter_piece(num, den))
    assert reason is None
    names = [tokenizer[int(i)] for i in ids]
    assert {n for n in names if n.startswith("TimeSig_")} == {f"TimeSig_{num}/{den}"}
    assert names.count("Bar_None") == 4


def test_a_meter_outside_the_range_is_a_reason_not_4_4(tokenizer):
    ids, reason, detail = tk.encode(tokenizer, _meter_piece(5, 16))
    assert (ids, reason) == (None, "unsupported_time_signature")
    assert detail.startswith("5/16 not in")


def test_non_midi_bytes_are_tokenize_failed_not_an_exception(tokenizer):
    ids, reason, detail = tk.encode(tokenizer, b"this is not a MIDI file at all")
    assert (ids, reason) == (None, "tokenize_failed")
    assert "MIDI" in detail or "midi" in detail


def test_transcription_style_notes_round_trip(tokenizer):
    # Unquantized onsets and overlapping notes, as a transcriber writes them.
    rng = np.random.default_rng(0)
    starts = np.sort(rng.uniform(0, 20, 120))
    notes = np.c_[
        starts,
        starts + rng.uniform(0.05, 1.5, 120),
        rng.integers(40, 90, 120),
        rng.integers(20, 120, 120),
    ]
    ids, reason, _ = tk.encode(tokenizer, midi_io.midi_bytes(midi_io.midi_from_notes(notes)))
    assert reason is None
    assert len(ids) > 300


def test_roundtrip_difference_counts_changed_notes_across_resolutions():
    def score(tpq, notes):
        s = Score(tpq)
        track = Track(program=40)
        for time, dur, pitch in notes:
            track.notes.append(Note(time, dur, pitch, 80))
        s.tracks.append(track)
        return s

    a = score(8, [(0, 4, 60), (4, 4, 62), (8, 8, 64)])
    assert tk.roundtrip_difference(a, score(16, [(0, 8, 60), (8, 8, 62), (16, 16, 64)])) == 0
    b = score(16, [(0, 8, 60), (8, 8, 63), (16, 8, 64)])  # one pitch, one duration off
    assert tk.roundtrip_difference(a, b) == 2
    assert tk.roundtrip_difference(a, score(8, [(0, 4, 60)])) == 2  # two notes lost


def test_without_programs_one_track_encodes_and_several_are_refused(fiddle):
    tokenizer = tk.make_tokenizer(tk.TokenizerSettings(use_programs=False))
    ids, reason, _ = tk.encode(tokenizer, fiddle)
    assert reason is None and len(ids) > 100
    quartet = corpus_midi("quartet", "haydn/opus74no1/movement1.mxl", seconds=5)
    ids, reason, detail = tk.encode(tokenizer, quartet)
    assert (ids, reason) == (None, "tokenize_failed")
    assert "use_programs" in detail


def test_tokenizer_loads_without_torch_and_leaves_pytorch_data_importable():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from midiforge.symbolic.tokenize import TokenizerSettings, make_tokenizer\n"
        "make_tokenizer(TokenizerSettings())\n"
        "print('torch' in sys.modules)\n"
        "import miditok.pytorch_data\n"
        "print(miditok.pytorch_data.DatasetMIDI.__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "DatasetMIDI"]

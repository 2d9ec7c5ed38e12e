"""The fast MIDI writer against pretty_midi's own writer: the same bytes, every time."""

from __future__ import annotations

import numpy as np
import pytest

from midiforge import midi_io
from midiforge.midi_write import notes_midi_bytes


def pretty(notes, program=0, name="", resolution=480) -> bytes:
    return midi_io.midi_bytes(midi_io.midi_from_notes(notes, program, name, resolution))


def random_notes(rng, n: int, seconds: float, grid: float | None) -> np.ndarray:
    start = rng.uniform(-0.5, seconds, n)
    end = start + rng.choice([0.0, 0.001, 0.05, 0.5, 3.0], n) * rng.uniform(0, 1, n)
    if grid:  # many events on the same ticks: chords, note-off meeting note-on
        start, end = np.round(start / grid) * grid, np.round(end / grid) * grid
    pitch = rng.integers(0, 128, n) if n < 40 else rng.integers(55, 62, n)
    velocity = rng.integers(0, 128, n) + rng.uniform(0, 0.99, n)  # int() truncates
    return np.stack([start, end, pitch, velocity], axis=1)


@pytest.mark.parametrize("seed", range(40))
def test_same_bytes_as_pretty_midi(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.choice([0, 1, 2, 7, 60, 400]))
    grid = rng.choice([None, 0.125, 1 / 480])
    notes = random_notes(rng, n, float(rng.choice([1.0, 15.0, 20000.0])), grid)
    name = str(rng.choice(["", "piano", "Violín", "a" * 200]))
    program = int(rng.integers(0, 128))
    resolution = int(rng.choice([96, 220, 480, 960]))
    assert notes_midi_bytes(notes, program, name, resolution) == pretty(
        notes, program, name, resolution
    )


def test_edge_times_and_ties():
    half_tick = 60.0 / (120.0 * 480) / 2
    notes = np.array(
        [
            [0.0, 0.0, 60, 100],  # zero length at 0
            [-1.0, 0.5, 61, 90],  # starts before 0: tick 0
            [0.5, 1.0, 61, 80],  # note-on on the tick its predecessor ends
            [half_tick, 3 * half_tick, 62, 70],  # exactly half a tick: round half to even
            [5 * half_tick, 7 * half_tick, 62, 70],
            [1.0, 1.0, 64, 1],
            [1.0, 2.0, 64, 127],  # same pitch and tick, two velocities
            [400.0, 400.1, 0, 0],  # multi-byte delta times, extreme data bytes
            [400.0, 401.0, 127, 127],
        ]
    )
    assert notes_midi_bytes(notes) == pretty(notes)
    assert notes_midi_bytes(notes[::-1]) == pretty(notes[::-1])


def test_reads_back_as_the_notes():
    notes = np.array([[0.25, 0.75, 60, 100], [0.5, 1.0, 64, 90]])
    back = midi_io.notes_array(midi_io.load_midi(notes_midi_bytes(notes, program=40)))
    np.testing.assert_allclose(back, notes, atol=1 / 960)


@pytest.mark.parametrize(
    ("notes", "program", "message"),
    [
        ([[0, 1, 128, 100]], 0, "pitches"),
        ([[0, 1, 60, -1]], 0, "velocities"),
        ([[0, np.nan, 60, 100]], 0, "finite"),
        ([[0, 1, 60, 100]], 128, "program"),
    ],
)
def test_out_of_range_is_a_value_error(notes, program, message):
    with pytest.raises(ValueError, match=message):
        notes_midi_bytes(np.asarray(notes, dtype=np.float64), program)
    with pytest.raises(ValueError, match=r"range 0\.\.127|NaN"):  # as mido refuses it
        pretty(np.asarray(notes, dtype=np.float64), program)

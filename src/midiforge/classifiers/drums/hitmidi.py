"""Drum hits to and from MIDI files, through `midiforge.midi_io`.

A hit file is one drum instrument (channel 10) with one note per hit. Velocity follows
the hit's peak level (Amp) in dB, so a ghost note comes out quiet in the DAW without the
producer re-drawing it: 0 dB (the stem's loudest sample) is 127, -36 dB and below is 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from midiforge import midi_io
from midiforge.classifiers.drums.kit import OUTPUT_NOTE, check_stem
from midiforge.errors import MidiforgeError

NOTE_S = 0.1  # written note length; drum samples ring on regardless of note-off
# Notes end at the next hit at the latest: overlapping notes of one key are read back by
# pretty_midi (and some DAWs) with every one ending at the first note-off.
MIN_NOTE_S = 0.005
VELOCITY_RANGE_DB = 36.0


class HitFileError(MidiforgeError, ValueError):
    """A raw or edited MIDI file that cannot be read."""


def amp_to_velocity(amp: np.ndarray) -> np.ndarray:
    db = 20.0 * np.log10(np.maximum(np.asarray(amp, dtype=np.float64), 1e-9))
    scaled = 1.0 + 126.0 * np.clip(1.0 + db / VELOCITY_RANGE_DB, 0.0, 1.0)
    return np.round(scaled).astype(np.int64)


def write_hits(path: str | Path, onsets_s: np.ndarray, velocities: np.ndarray, stem: str) -> None:
    onsets = np.asarray(onsets_s, dtype=np.float64).reshape(-1)
    order = np.argsort(onsets, kind="stable")
    onsets, velocities = onsets[order], np.asarray(velocities).reshape(-1)[order]
    following = np.append(onsets[1:], np.inf)
    ends = np.maximum(np.minimum(onsets + NOTE_S, following), onsets + MIN_NOTE_S)
    notes = np.column_stack(
        [
            onsets,
            ends,
            np.full(len(onsets), OUTPUT_NOTE[check_stem(stem)]),
            np.clip(velocities, 1, 127),
        ]
    )
    pm = midi_io.midi_from_notes(notes, name=stem)
    pm.instruments[0].is_drum = True
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(midi_io.midi_bytes(pm))


def read_onsets(path: str | Path) -> np.ndarray:
    """Sorted note start times of every note in the file, drums or not: producers' edits
    come back from DAWs on whatever channel the track used."""
    try:
        pm = midi_io.load_midi(Path(path))
    except ValueError as e:
        raise HitFileError(f"{path}: {e}") from None
    return np.sort(midi_io.notes_array(pm, include_drums=True)[:, 0])

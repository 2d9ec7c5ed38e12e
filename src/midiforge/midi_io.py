"""All MIDI reading and writing goes through here (note arrays are written by
midi_write.notes_midi_bytes, the same bytes as midi_bytes(midi_from_notes(...)), faster).

Notes inside the library are float arrays of rows (start_s, end_s, pitch, velocity),
sorted by start then pitch.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pretty_midi

# pretty_midi allocates a float64 tick -> seconds table of (largest tick + 1) entries,
# plus temporaries of the same size while filling it, so MAX_TICK bounds the memory any
# file, however small, can demand: a 40-byte file with huge delta times would otherwise
# ask for gigabytes and get the worker killed. Its default (10**7) rejects long
# music21-written files (10,080 ticks per quarter: 20 minutes at 60 bpm is ~12M ticks);
# 3 * 10**7 admits 20 minutes at up to ~150 bpm for a table of 240 MB (~700 MB at peak,
# measured).
_MAX_TICK = 3 * 10**7


def _allow_long_files() -> None:
    # Set, not raised to at least ours: the bound is what keeps a worker's memory safe.
    pretty_midi.pretty_midi.MAX_TICK = _MAX_TICK


def load_midi(src: bytes | str | Path) -> pretty_midi.PrettyMIDI:
    """Parse MIDI from bytes or a path; raises ValueError with the parser's reason."""
    _allow_long_files()
    try:
        if isinstance(src, bytes | bytearray):
            return pretty_midi.PrettyMIDI(io.BytesIO(src))
        return pretty_midi.PrettyMIDI(str(src))
    except Exception as e:  # mido/pretty_midi raise many types for corrupt files
        raise ValueError(f"not a readable MIDI file: {type(e).__name__}: {e}") from None


def midi_bytes(pm: pretty_midi.PrettyMIDI) -> bytes:
    buf = io.BytesIO()
    pm.write(buf)
    return buf.getvalue()


def notes_array(pm: pretty_midi.PrettyMIDI, include_drums: bool = False) -> np.ndarray:
    """(N, 4) float64 rows of (start_s, end_s, pitch, velocity)."""
    rows = [
        (n.start, n.end, n.pitch, n.velocity)
        for inst in pm.instruments
        if include_drums or not inst.is_drum
        for n in inst.notes
    ]
    if not rows:
        return np.zeros((0, 4), dtype=np.float64)
    arr = np.asarray(rows, dtype=np.float64)
    return arr[np.lexsort((arr[:, 2], arr[:, 0]))]


def midi_from_notes(
    notes: np.ndarray, program: int = 0, name: str = "", resolution: int = 480
) -> pretty_midi.PrettyMIDI:
    pm = pretty_midi.PrettyMIDI(resolution=resolution)
    inst = pretty_midi.Instrument(program=program, name=name)
    for start, end, pitch, velocity in np.asarray(notes, dtype=np.float64).reshape(-1, 4):
        inst.notes.append(
            pretty_midi.Note(
                velocity=int(velocity), pitch=int(pitch), start=float(start), end=float(end)
            )
        )
    pm.instruments.append(inst)
    return pm


def truncate(pm: pretty_midi.PrettyMIDI, seconds: float, min_note_s: float = 0.03) -> None:
    """Cut a piece at `seconds` in place: later notes go, sounding notes end there.

    Notes left shorter than `min_note_s` are dropped: a 5 ms sliver at the cut is not a
    note anyone played, and it would count as a miss in transcription metrics.
    """
    for inst in pm.instruments:
        kept = []
        for n in inst.notes:
            if n.start >= seconds:
                continue
            n.end = min(n.end, seconds)
            if n.end - n.start >= min_note_s:
                kept.append(n)
        inst.notes = kept
        inst.control_changes = [c for c in inst.control_changes if c.time < seconds]
        inst.pitch_bends = [b for b in inst.pitch_bends if b.time < seconds]
    pm.instruments = [i for i in pm.instruments if i.notes]
    # Meta events past the cut would stretch get_end_time() and so the rendered audio.
    pm.time_signature_changes = [t for t in pm.time_signature_changes if t.time < seconds]
    pm.key_signature_changes = [k for k in pm.key_signature_changes if k.time < seconds]
    pm.lyrics = [x for x in pm.lyrics if x.time < seconds]
    pm.text_events = [x for x in pm.text_events if x.time < seconds]

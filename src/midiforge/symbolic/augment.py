"""Augmented copies of a piece: transposition, octave shift, tempo and velocity jitter.

We work on symusic Scores: times are ticks, so scaling every tempo changes the
seconds while leaving every note's position in beats (and so its REMI tokens, apart
from Tempo tokens) untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import symusic

# The 12 keys: the original plus these shifts, split so no copy moves more than a
# fifth up or a fourth down (smaller shifts keep parts in their instruments' ranges).
TRANSPOSE_SHIFTS = tuple(s for s in range(-5, 7) if s != 0)
MIDI_DEFAULT_QPM = 120.0


@dataclass
class AugmentConfig:
    # Copies at every shift in TRANSPOSE_SHIFTS that keeps all pitches in pitch_range.
    transpose_all_keys: bool = True
    # Each copy gets a tempo scale drawn uniformly from this range.
    tempo_range: tuple[float, float] = (0.9, 1.1)
    # Each copy gets an integer velocity shift drawn from [-delta, delta], clamped 1..127.
    velocity_delta: int = 10
    # Extra copies an octave down and up where the whole pitch range allows.
    octave_shift: bool = True
    # The tokenizer's pitch range, upper bound exclusive.
    pitch_range: tuple[int, int] = (21, 109)

    def validate_config(self) -> None:
        from midiforge.config import ConfigError

        lo, hi = self.tempo_range
        if not 0 < lo <= hi:
            raise ConfigError(f"augment.tempo_range {self.tempo_range}: need 0 < low <= high")
        if self.velocity_delta < 0:
            raise ConfigError(f"augment.velocity_delta {self.velocity_delta} must be >= 0")
        if not 0 <= self.pitch_range[0] < self.pitch_range[1] <= 128:
            raise ConfigError(f"augment.pitch_range {self.pitch_range} must lie within 0..128")


def _shift_key_signature(key: int, semitones: int) -> int:
    """Sharps (+) / flats (-) count after transposing; -5..6 (Db rather than C#)."""
    # 7 semitones per step round the circle of fifths, and 7 * 7 = 49 = 1 (mod 12), so
    # multiplying by 7 maps sharps <-> tonic pitch class both ways.
    sharps = ((key * 7 + semitones) * 7) % 12
    return sharps - 12 if sharps > 6 else sharps


def _apply(
    score: symusic.Score, semitones: int, tempo_scale: float, velocity_delta: int
) -> symusic.Score:
    from symusic import Note, Tempo

    out = score.copy()  # deep copy
    for track in out.tracks:
        soa = track.notes.numpy()
        if len(soa["pitch"]) == 0:
            continue
        if not track.is_drum:  # drum "pitches" name instruments, not notes
            soa["pitch"] = soa["pitch"].astype(np.int16) + semitones
        soa["velocity"] = np.clip(soa["velocity"].astype(np.int16) + velocity_delta, 1, 127)
        track.notes = Note.from_numpy(
            time=soa["time"],
            duration=soa["duration"],
            pitch=soa["pitch"].astype(np.int8),
            velocity=soa["velocity"].astype(np.int8),
        )
    if len(out.tempos) == 0 or out.tempos[0].time != 0:
        # No tempo before the first event means the MIDI default; make it explicit so
        # it can be scaled.
        out.tempos.insert(0, Tempo(0, MIDI_DEFAULT_QPM))
    for tempo in out.tempos:
        tempo.qpm = tempo.qpm * tempo_scale
    if semitones % 12:
        for ks in out.key_signatures:
            ks.key = _shift_key_signature(ks.key, semitones)
    return out


def _plan(lo: int, hi: int, cfg: AugmentConfig) -> list[tuple[int, int]]:
    """(transpose, octave) of every copy whose pitches all stay in cfg.pitch_range."""

    def fits(shift: int) -> bool:
        return cfg.pitch_range[0] <= lo + shift and hi + shift < cfg.pitch_range[1]

    plan = []
    if cfg.transpose_all_keys:
        plan += [(s, 0) for s in TRANSPOSE_SHIFTS if fits(s)]
    if cfg.octave_shift:
        plan += [(0, o) for o in (-1, 1) if fits(12 * o)]
    return plan


def augment(
    midi: bytes, rng: np.random.Generator, cfg: AugmentConfig
) -> list[tuple[dict[str, Any], bytes]]:
    """All augmented copies of one piece, not including the original.

    Each item is (applied, midi_bytes), applied = {"transpose": semitones (0 for octave
    copies), "tempo_scale": float rounded to 4 places (the value actually applied),
    "velocity_delta": int, "octave": -1 | 0 | 1}. Copies come in a fixed order
    (transpositions -5..+6, then octave -1, +1), each drawing its tempo scale and then
    its velocity shift from `rng`, so output is a function of the rng state. A piece
    without pitched notes gets no copies. Raises ValueError on unreadable MIDI.
    """
    from symusic import Score

    try:
        score = Score.from_midi(midi)
    except Exception as e:  # symusic raises RuntimeError (and others) on corrupt files
        raise ValueError(f"not a readable MIDI file: {type(e).__name__}: {e}") from None
    pitches = [t.notes.numpy()["pitch"] for t in score.tracks if not t.is_drum]
    pitches = [p for p in pitches if len(p)]
    if not pitches:
        return []
    all_pitches = np.concatenate(pitches).astype(np.int64)
    plan = _plan(int(all_pitches.min()), int(all_pitches.max()), cfg)
    out = []
    for transpose, octave in plan:
        tempo_scale = round(float(rng.uniform(*cfg.tempo_range)), 4)
        velocity_delta = int(rng.integers(-cfg.velocity_delta, cfg.velocity_delta + 1))
        copy = _apply(score, transpose + 12 * octave, tempo_scale, velocity_delta)
        applied = {
            "transpose": transpose,
            "tempo_scale": tempo_scale,
            "velocity_delta": velocity_delta,
            "octave": octave,
        }
        out.append((applied, copy.dumps_midi()))
    return out

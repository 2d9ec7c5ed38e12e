"""Musical sanity checks on a piece: key, range, polyphony, note count.

`analyze` measures, `check` judges the measurements against a `ValidateConfig`, and
`assess` does both for one MIDI file without ever raising. Keeping measuring apart from
judging lets the pipeline store the stats on every row and re-judge a dataset under a
new config without re-reading MIDI.

The key estimate is Krumhansl-Schmuckler with music21's own profile weights, computed
with numpy on a duration-weighted pitch-class histogram: it gives the same answer as
music21's `analysis.discrete.KrumhanslSchmuckler` without building a Stream per piece
(which costs ~100x more).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from midiforge import midi_io

MODES = ("major", "minor")
# Pitch classes counted as "in key", relative to the tonic. Minor adds the raised 6th
# and 7th (melodic/harmonic minor) so that leading tones are not counted as foreign.
SCALES = {
    "major": frozenset({0, 2, 4, 5, 7, 9, 11}),
    "minor": frozenset({0, 2, 3, 5, 7, 8, 9, 10, 11}),
}
# Conventional spellings (the fewest accidentals; C# minor but Db major).
TONIC_NAMES = {
    "major": ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B"),
    "minor": ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B"),
}

# Far below one MIDI tick (~1 ms at 480 ticks per quarter, 120 bpm), so onsets are
# either identical or further apart than this.
_MIN_SPAN_S = 1e-6

REASONS = ("too_few_notes", "out_of_key", "range_too_narrow", "range_too_wide", "too_polyphonic")


def _default_per_style() -> dict[str, dict[str, Any]]:
    return {
        "chorale": {"max_polyphony": 5, "max_range_semitones": 48},
        "quartet": {"max_polyphony": 6, "max_range_semitones": 60},
    }


@dataclass
class ValidateConfig:
    # Reject above this fraction of notes (by count) outside the estimated key's scale.
    max_out_of_key: float = 0.30
    # Pitch span (max - min) must lie within [min, max]: lead lines span 1 to 3 octaves.
    min_range_semitones: int = 12
    max_range_semitones: int = 36
    # Lead lines are monophonic; ensemble styles override this in per_style.
    max_polyphony: int = 1
    # Overlaps shorter than this are legato or transcription smear, not polyphony.
    overlap_tolerance_s: float = 0.05
    # ... and for transcriptions: basic-pitch ends notes late (onset+offset F1 ~0.13 on
    # fiddle and flute renders), so a monophonic line transcribes with 5-24% of its time
    # "two-voiced" at 50 ms but 0-2% at 150 ms, measured on the demo corpus, 2026-11-21.
    overlap_tolerance_transcribed_s: float = 0.15
    # Share of sounding time allowed above max_polyphony: a lead line with one ghost note
    # from the transcriber, or a fiddler's occasional double stop, is still a lead line.
    max_polyphony_share: float = 0.05
    min_notes: int = 8
    # Overrides of the fields above for a style.
    per_style: dict[str, dict[str, Any]] = field(default_factory=_default_per_style)

    def validate_config(self) -> None:
        """Raise ConfigError (a ValueError) if a per_style override names an unknown field;
        midiforge.config.from_dict calls this, so a typo fails when the config loads."""
        for style in self.per_style:
            self.for_style(style)

    def for_style(self, style: str) -> ValidateConfig:
        """A copy with `per_style[style]` applied (an unknown style gets a plain copy)."""
        overrides = dict(self.per_style.get(style) or {})
        known = {f.name for f in dataclasses.fields(self)} - {"per_style"}
        unknown = sorted(set(overrides) - known)
        if unknown:
            from midiforge.config import ConfigError

            raise ConfigError(
                f"per_style[{style!r}]: unknown field(s) {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return dataclasses.replace(self, per_style=copy.deepcopy(self.per_style), **overrides)


@functools.cache
def music21_key_profiles() -> np.ndarray:
    """(24, 12): row k is the profile of key k (major C..B, then minor C..B) indexed by
    absolute pitch class, i.e. music21's Krumhansl-Schmuckler weights rotated to each
    tonic. The dataset job reads them once on its driver and hands them to its actors
    (`key_profiles=` below): importing music21 costs each actor ~0.4 s of start-up."""
    from music21.analysis.discrete import KrumhanslSchmuckler

    ks = KrumhanslSchmuckler()
    rows = []
    for mode in MODES:
        weights = np.asarray(ks.getWeights(mode), dtype=np.float64)
        for tonic in range(12):
            rows.append(np.roll(weights, tonic))
    return np.stack(rows)


def estimate_key(
    pc_histogram: np.ndarray, profiles: np.ndarray | None = None
) -> tuple[int, str, float]:
    """(tonic pitch class, mode, correlation) of the best-correlated of the 24 keys.

    Pearson correlation of the histogram with each rotated profile, as music21 does; a
    flat or empty histogram correlates 0 with everything and comes out as C major.
    profiles: `music21_key_profiles()`'s table (read here when not given).
    """
    profiles = music21_key_profiles() if profiles is None else profiles
    hist = np.asarray(pc_histogram, dtype=np.float64) - np.mean(pc_histogram)
    prof = profiles - profiles.mean(axis=1, keepdims=True)
    denom = np.sqrt((prof**2).sum(axis=1) * (hist**2).sum())
    corr = np.divide(prof @ hist, denom, out=np.zeros(24), where=denom > 0)
    best = int(np.argmax(corr))
    return best % 12, MODES[best // 12], float(corr[best])


def key_name(tonic: int, mode: str) -> str:
    return f"{TONIC_NAMES[mode][tonic % 12]} {mode}"


def max_polyphony(notes: np.ndarray, overlap_tolerance_s: float = 0.05) -> int:
    """Most notes sounding at once, each note's end pulled in by the tolerance.

    The maximum is reached at some note's onset, so we count, at each onset, the notes
    whose shortened span [start, end - tol) covers it. A note shorter than the tolerance
    keeps a sliver of a span at its onset, so simultaneous staccato notes are a chord.
    """
    if len(notes) == 0:
        return 0
    starts = notes[:, 0]
    ends = np.maximum(notes[:, 1] - overlap_tolerance_s, starts + _MIN_SPAN_S)
    started = np.searchsorted(np.sort(starts), starts, side="right")
    ended = np.searchsorted(np.sort(ends), starts, side="right")
    return int(np.max(started - ended))


def polyphony_seconds(notes: np.ndarray, overlap_tolerance_s: float = 0.05) -> list[float]:
    """Seconds spent with exactly k notes sounding, for k = 0..max (ends shortened as in
    max_polyphony); index 0 is the silence between the first onset and the last end."""
    if len(notes) == 0:
        return [0.0]
    starts = notes[:, 0]
    ends = np.maximum(notes[:, 1] - overlap_tolerance_s, starts + _MIN_SPAN_S)
    times = np.concatenate([starts, ends])
    steps = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.lexsort((steps, times))  # at equal times, ends (-1) before starts
    times, level = times[order], np.cumsum(steps[order]).astype(int)
    out = np.zeros(int(level.max()) + 1)
    np.add.at(out, level[:-1], np.diff(times))
    return [round(float(x), 4) for x in out]


def _first_time_signature(pm: Any) -> str:
    if not pm.time_signature_changes:
        return "4/4"
    ts = min(pm.time_signature_changes, key=lambda t: t.time)
    return f"{ts.numerator}/{ts.denominator}"


def analyze(
    midi: bytes, overlap_tolerance_s: float = 0.05, *, key_profiles: np.ndarray | None = None
) -> dict[str, Any]:
    """Musical statistics of a MIDI file (drum tracks excluded).

    Keys: key ('G major', 'E minor'; '' without notes), key_confidence (correlation of
    the chosen key profile), bpm (first tempo; the MIDI default 120 if none), time_signature
    (first one, '4/4' if none), n_notes, pitch_min, pitch_max, out_of_key_ratio (by note
    count), max_polyphony, duration_s (last pitched note-off).
    Raises ValueError only if the bytes are not readable MIDI. key_profiles: see
    `estimate_key`.
    """
    pm = midi_io.load_midi(midi)
    notes = midi_io.notes_array(pm)  # drums excluded
    _, tempi = pm.get_tempo_changes()
    stats: dict[str, Any] = {
        "key": "",
        "key_confidence": 0.0,
        "bpm": round(float(tempi[0]), 3) if len(tempi) else 120.0,
        "time_signature": _first_time_signature(pm),
        "n_notes": len(notes),
        "pitch_min": 0,
        "pitch_max": 0,
        "out_of_key_ratio": 0.0,
        "max_polyphony": 0,
        "polyphony_seconds": [0.0],
        "duration_s": 0.0,
    }
    if len(notes) == 0:
        return stats
    pitches = notes[:, 2].astype(np.int64)
    pcs = pitches % 12
    durations = np.maximum(notes[:, 1] - notes[:, 0], 0.0)
    hist = np.bincount(pcs, weights=durations, minlength=12)
    tonic, mode, corr = estimate_key(hist, key_profiles)
    in_key = np.isin((pcs - tonic) % 12, sorted(SCALES[mode]))
    stats.update(
        key=key_name(tonic, mode),
        key_confidence=round(corr, 4),
        pitch_min=int(pitches.min()),
        pitch_max=int(pitches.max()),
        out_of_key_ratio=round(float(1.0 - in_key.mean()), 4),
        max_polyphony=max_polyphony(notes, overlap_tolerance_s),
        polyphony_seconds=polyphony_seconds(notes, overlap_tolerance_s),
        duration_s=round(float(notes[:, 1].max()), 4),
    )
    return stats


def check(stats: dict[str, Any], cfg: ValidateConfig) -> tuple[str | None, str]:
    """(None, '') if the stats pass `cfg`, else (reason, detail) for the first failure.

    Reasons, in the order tested: see REASONS. Details name the measured value and the
    threshold, e.g. 'out_of_key_ratio 0.42 > 0.30 (key C major)'.
    """
    n = stats["n_notes"]
    if n < cfg.min_notes:
        return "too_few_notes", f"n_notes {n} < {cfg.min_notes}"
    ratio = stats["out_of_key_ratio"]
    if ratio > cfg.max_out_of_key:
        return (
            "out_of_key",
            f"out_of_key_ratio {ratio:.2f} > {cfg.max_out_of_key:.2f} (key {stats['key']})",
        )
    lo, hi = stats["pitch_min"], stats["pitch_max"]
    span = hi - lo
    if span < cfg.min_range_semitones:
        return (
            "range_too_narrow",
            f"pitch range {span} semitones ({lo}-{hi}) < {cfg.min_range_semitones}",
        )
    if span > cfg.max_range_semitones:
        return (
            "range_too_wide",
            f"pitch range {span} semitones ({lo}-{hi}) > {cfg.max_range_semitones}",
        )
    poly = stats["max_polyphony"]
    if poly > cfg.max_polyphony:
        secs = stats.get("polyphony_seconds") or []
        sounding = sum(secs[1:])
        share = sum(secs[cfg.max_polyphony + 1 :]) / sounding if sounding > 0 else 1.0
        if share > cfg.max_polyphony_share:
            return (
                "too_polyphonic",
                f"{share:.0%} of sounding time above {cfg.max_polyphony} voice(s) "
                f"(max {poly}) > {cfg.max_polyphony_share:.0%}; "
                f"overlaps under {cfg.overlap_tolerance_s:g} s ignored",
            )
    return None, ""


def assess(
    midi: bytes, cfg: ValidateConfig, *, key_profiles: np.ndarray | None = None
) -> tuple[dict[str, Any] | None, str | None, str]:
    """analyze + check for one file, never raising: (stats, reason, detail).

    Unreadable bytes give (None, 'midi_unreadable', parser message). Pass a config
    already specialised with `for_style`.
    """
    try:
        stats = analyze(midi, cfg.overlap_tolerance_s, key_profiles=key_profiles)
    except ValueError as e:
        return None, "midi_unreadable", str(e)
    reason, detail = check(stats, cfg)
    return stats, reason, detail

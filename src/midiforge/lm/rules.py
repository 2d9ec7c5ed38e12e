"""The rule-based baseline (`--model rules`): scale- and chord-aware random melodies.

One chord a bar, drawn from common diatonic progressions of the key and ending with the
authentic cadence V-I. The melody puts a chord tone on every strong beat (beat 1 always;
also the middle beat of bars of four or six beats), moves mostly by step along the scale
elsewhere with occasional leaps, takes its rhythms from a few quarter/eighth patterns,
approaches the final tonic by step and holds it through the last bar.

Minor keys use the natural minor scale, except that the V chord (and the melody over it)
takes the raised leading tone, as common-practice minor does. Tempo is in quarter notes
per minute, as in MIDI and the Tempo tokens. The file ends at the last barline, with the
same end marker as `grammar.decode_to_midi`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from midiforge.lm.vocab import parse_key

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
NATURAL_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 10)
LEADING_TONE = 11  # semitones above the tonic
# Chords as scale degrees (0 = I/i), one a bar, cycled to the piece's length; the last two
# bars are then set to V-I. Minor avoids ii (diminished).
MAJOR_PROGRESSIONS = (
    (0, 3, 4, 0),  # I IV V I
    (0, 5, 3, 4),  # I vi IV V
    (0, 4, 5, 3),  # I V vi IV
    (0, 3, 0, 4),  # I IV I V
    (0, 1, 4, 0),  # I ii V I
    (0, 5, 1, 4),  # I vi ii V
)
MINOR_PROGRESSIONS = (
    (0, 3, 4, 0),  # i iv V i
    (0, 5, 2, 6),  # i VI III VII
    (0, 3, 6, 2),  # i iv VII III
    (0, 5, 3, 4),  # i VI iv V
    (0, 6, 5, 4),  # i VII VI V
)
DOMINANT = 4  # scale degree of V

# Rhythms in quarter notes, per beat length. Two-beat figures may start on a strong beat
# whose next beat is weak.
BEAT_PATTERNS: dict[float, tuple[tuple[float, ...], ...]] = {
    0.5: ((0.5,),),
    1.0: ((1.0,), (0.5, 0.5), (1.0,), (0.5, 0.5)),
    1.5: ((1.5,), (1.0, 0.5), (0.5, 0.5, 0.5)),
    2.0: ((2.0,), (1.0, 1.0), (1.0, 0.5, 0.5)),
}
TWO_BEAT_PATTERNS = ((2.0,), (1.5, 0.5))
P_TWO_BEATS = 0.25
# Melodic motion off the strong beats: probabilities of a step, a repeated note, a leap.
P_STEP, P_REPEAT = 0.65, 0.10
# Strong beats take the chord tone nearest the previous note this often, else another
# chord tone within a fifth.
P_NEAREST_CHORD_TONE = 0.7
RANGE_BELOW, RANGE_ABOVE = 5, 16  # semitones around the tonic placed in MIDI 60-71
VELOCITY_STRONG, VELOCITY_BEAT, VELOCITY_OFFBEAT = 92, 84, 76
# Beats a bar may hold: MidiTok's REMI goes up to 12/8 (its TIME_SIGNATURE_RANGE, and
# beat_res reaches 12 beats), which covers every meter of our styles. The bound also
# keeps a request such as 1000000000/4, whose bars are drawn beat by beat, from
# running for hours in a thread nothing can cancel.
MAX_NUMERATOR = 12


@dataclass(frozen=True)
class Meter:
    numerator: int
    denominator: int

    @classmethod
    def parse(cls, text: str) -> Meter:
        num, sep, den = text.strip().partition("/")
        if not (sep and num.isdigit() and den.isdigit()):
            raise ValueError(f"not a time signature: {text!r} (write e.g. '4/4', '6/8')")
        meter = cls(int(num), int(den))
        # x/1 too: the tokenizer holds the corpus's 2/1, 3/1 and 4/1 (whole-note beats).
        if not 1 <= meter.numerator <= MAX_NUMERATOR or meter.denominator not in (1, 2, 4, 8):
            raise ValueError(
                f"unsupported time signature {text!r}: numerators 1-{MAX_NUMERATOR}, "
                "denominators 1, 2, 4, 8"
            )
        return meter

    @property
    def bar_quarters(self) -> float:
        return self.numerator * 4 / self.denominator

    @property
    def beat_quarters(self) -> float:
        """Compound meters (6/8, 9/8, 12/8) beat in dotted quarters."""
        if self.denominator == 8 and self.numerator % 3 == 0:
            return 1.5
        return 4 / self.denominator

    @property
    def beats(self) -> int:
        return round(self.bar_quarters / self.beat_quarters)

    def strong(self, beat: int) -> bool:
        return beat == 0 or (self.beats % 2 == 0 and self.beats >= 4 and beat == self.beats // 2)


def scale_pitch_classes(key: str) -> tuple[int, ...]:
    """The key's scale (natural minor for minor keys), as pitch classes."""
    tonic, mode = parse_key(key)
    scale = MAJOR_SCALE if mode == "major" else NATURAL_MINOR_SCALE
    return tuple((tonic + s) % 12 for s in scale)


def leading_tone(key: str) -> int:
    return (parse_key(key)[0] + LEADING_TONE) % 12


def _triad(key: str, degree: int) -> tuple[int, ...]:
    tonic, mode = parse_key(key)
    scale = scale_pitch_classes(key)
    pcs = [scale[(degree + k) % 7] for k in (0, 2, 4)]
    if mode == "minor" and degree == DOMINANT:
        pcs[1] = (tonic + LEADING_TONE) % 12  # major V
    return tuple(pcs)


def chord_plan(key: str, bars: int, seed: int) -> list[tuple[int, ...]]:
    """Each bar's chord as pitch classes (root first): the progression `seed` draws."""
    _, mode = parse_key(key)
    rng = random.Random(f"{seed}:chords")
    progression = rng.choice(MAJOR_PROGRESSIONS if mode == "major" else MINOR_PROGRESSIONS)
    degrees = [progression[i % len(progression)] for i in range(bars)]
    if bars >= 2:
        degrees[-2] = DOMINANT
    degrees[-1] = 0
    return [_triad(key, d) for d in degrees]


def _rhythm(meter: Meter, rng: random.Random) -> list[tuple[float, float, int]]:
    """(onset, duration, beat index) in quarters for one bar."""
    out: list[tuple[float, float, int]] = []
    beat_q = meter.beat_quarters
    beat = 0
    while beat < meter.beats:
        onset = beat * beat_q
        two_beats = (
            beat_q == 1.0
            and meter.strong(beat)
            and beat + 1 < meter.beats
            and not meter.strong(beat + 1)
            and rng.random() < P_TWO_BEATS
        )
        if two_beats:
            pattern, span = rng.choice(TWO_BEAT_PATTERNS), 2
        else:
            pattern, span = rng.choice(BEAT_PATTERNS.get(beat_q, ((beat_q,),))), 1
        for dur in pattern:
            out.append((onset, dur, beat))
            onset += dur
        beat += span
    return out


def _nearest(candidates: list[int], target: int) -> int:
    return min(candidates, key=lambda p: (abs(p - target), p))


def _melody(
    key: str, meter: Meter, chords: list[tuple[int, ...]], rng: random.Random
) -> list[tuple[float, float, int, int]]:
    """(onset, duration, pitch, velocity) rows, times in quarters."""
    tonic, mode = parse_key(key)
    home = 60 + tonic
    lo, hi = home - RANGE_BELOW, home + RANGE_ABOVE
    scale = set(scale_pitch_classes(key))
    bars = len(chords)
    out: list[tuple[float, float, int, int]] = []
    prev = home
    for bar, chord in enumerate(chords):
        start = bar * meter.bar_quarters
        pcs = set(scale)
        if mode == "minor" and (tonic + LEADING_TONE) % 12 in chord:
            pcs = (pcs - {(tonic + 10) % 12}) | {(tonic + LEADING_TONE) % 12}
        steps = [p for p in range(lo, hi + 1) if p % 12 in pcs]
        chord_tones = [p for p in range(lo, hi + 1) if p % 12 in chord]
        if bar == bars - 1:  # the cadence: the tonic, held to the last barline
            final = _nearest([p for p in chord_tones if p % 12 == tonic], prev)
            out.append((start, meter.bar_quarters, final, VELOCITY_STRONG))
            break
        rhythm = _rhythm(meter, rng)
        for i, (onset, dur, beat) in enumerate(rhythm):
            first_of_beat = i == 0 or rhythm[i - 1][2] != beat
            if bar == bars - 2 and i == len(rhythm) - 1:
                # Approach the final tonic by step: the supertonic or the leading tone,
                # both tones of the V chord this bar holds (so fine on a strong beat too).
                final = _nearest([p for p in range(lo, hi + 1) if p % 12 == tonic], prev)
                pitch = _nearest([final + 2, final - 1], prev)
            elif first_of_beat and meter.strong(beat):
                near = [p for p in chord_tones if abs(p - prev) <= 7] or chord_tones
                pitch = (
                    _nearest(chord_tones, prev)
                    if rng.random() < P_NEAREST_CHORD_TONE
                    else rng.choice(near)
                )
            else:
                pitch = _move(steps, prev, home, rng)
            velocity = (
                VELOCITY_STRONG
                if first_of_beat and meter.strong(beat)
                else VELOCITY_BEAT
                if first_of_beat
                else VELOCITY_OFFBEAT
            )
            out.append((start + onset, dur, pitch, velocity + rng.randint(-4, 4)))
            prev = pitch
    return out


def _move(steps: list[int], prev: int, home: int, rng: random.Random) -> int:
    """A step, a repeat or a leap along the scale from `prev`, leaning back to the middle."""
    i = steps.index(_nearest(steps, prev))
    r = rng.random()
    if r < P_REPEAT and prev in steps:
        return prev
    size = 1 if r < P_REPEAT + P_STEP else rng.randint(2, 4)
    # Lean towards the middle of the range so the line does not drift to an edge.
    up = rng.random() < (0.5 - (prev - (home + 5)) / 30)
    j = i + size if up else i - size
    if not 0 <= j < len(steps):
        j = i - size if up else i + size
    return steps[max(0, min(len(steps) - 1, j))]


def generate_rules(
    key: str,
    bpm: float,
    bars: int,
    seed: int,
    *,
    time_signature: str = "4/4",
    program: int = 40,
) -> bytes:
    """MIDI bytes of a `bars`-bar melody in `key`; the same arguments give the same bytes."""
    import pretty_midi

    from midiforge import midi_io
    from midiforge.lm.grammar import set_end_time

    if bars < 1:
        raise ValueError(f"bars must be at least 1, got {bars}")
    if not bpm > 0:
        raise ValueError(f"bpm must be positive, got {bpm}")
    if not 0 <= program <= 127:
        raise ValueError(f"program must be a General MIDI program 0-127, got {program}")
    meter = Meter.parse(time_signature)
    tonic, mode = parse_key(key)
    rows = _melody(key, meter, chord_plan(key, bars, seed), random.Random(f"{seed}:melody"))

    seconds_per_quarter = 60.0 / float(bpm)
    pm = pretty_midi.PrettyMIDI(initial_tempo=float(bpm), resolution=480)
    pm.time_signature_changes.append(
        pretty_midi.TimeSignature(meter.numerator, meter.denominator, 0.0)
    )
    pm.key_signature_changes.append(
        pretty_midi.KeySignature(tonic + (12 if mode == "minor" else 0), 0.0)
    )
    inst = pretty_midi.Instrument(program=int(program), name="melody")
    for onset, dur, pitch, velocity in rows:
        inst.notes.append(
            pretty_midi.Note(
                velocity=int(velocity),
                pitch=int(pitch),
                start=onset * seconds_per_quarter,
                end=(onset + dur) * seconds_per_quarter,
            )
        )
    pm.instruments.append(inst)
    set_end_time(pm, bars * meter.bar_quarters * seconds_per_quarter)
    return midi_io.midi_bytes(pm)

"""REMI grammar for constrained sampling, and generated tokens back to MIDI.

What the dataset's token streams look like (MidiTok 3.1 REMI, `TokenizerSettings()`:
Program, Tempo and TimeSig tokens on, one stream for all instruments):

    Bar TimeSig_4/4 Position_0 Tempo_121.29 Program_40 Pitch_72 Velocity_91 Duration_0.6.8
        Position_6 Program_40 Pitch_74 Velocity_95 Duration_0.2.8 ...
    Bar TimeSig_4/4 Position_0 Program_40 Pitch_69 Velocity_91 Duration_0.2.8 ...

- Every Bar is followed by a TimeSig (repeated even when it does not change; changes only
  ever happen at a Bar, MidiTok moves them there).
- Then Positions, strictly increasing within the bar; `numerator * 8` of them for the
  bar's time signature (8 per beat of the signature's denominator: 32 in 4/4, 48 in 6/8).
- A Position is followed by an optional Tempo, then one or more notes, each exactly
  Program Pitch Velocity Duration (PitchDrum instead of Pitch after Program_-1).
  A Tempo may also stand alone (a tempo change where no note starts).
- The dataset has one Tempo, at Position_0 of the first bar; durations count beats of
  the time signature's denominator (Duration_1.0.8 is a quarter in 4/4, an eighth in 6/8).
- Empty bars are `Bar TimeSig` with nothing after them.

`RemiGrammar` turns those rules into a mask over the model's vocabulary, plus a budget
that makes every sequence that follows the mask end with EOS after exactly the requested
number of bars. It accepts every corpus sequence we tokenized (tests/test_lm_grammar.py
checks fiddle, chorale, folk and quartet excerpts); the restrictions it adds beyond the
data are commented where they are made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    import miditok
    import pretty_midi

# Token kinds. _START is the kind "before anything"; ids the grammar never allows have -1.
_START, _BAR, _TIMESIG, _POSITION, _TEMPO, _PROGRAM, _PITCH, _VELOCITY, _DURATION, _EOS = range(10)
_KIND_NAMES = ("start", "Bar", "TimeSig", "Position", "Tempo", "Program", "Pitch", "Velocity",
               "Duration", "EOS")  # fmt: skip
_TYPE_KIND = {"Bar": _BAR, "TimeSig": _TIMESIG, "Position": _POSITION, "Tempo": _TEMPO,
              "Program": _PROGRAM, "Pitch": _PITCH, "PitchDrum": _PITCH, "Velocity": _VELOCITY,
              "Duration": _DURATION, "EOS": _EOS}  # fmt: skip

# The most tokens a bar may take (its Bar and TimeSig included). The densest corpus bar
# we measured (a Mozart quartet excerpt) has 291; a model that keeps adding notes at one
# position is stopped here and the bar closed.
DEFAULT_MAX_TOKENS_PER_BAR = 512
# A smaller budget could not hold the longest forced opening plus the one note a piece
# must have: Bar TimeSig Position_0 Tempo Program Pitch Velocity Duration.
MIN_TOKENS_PER_BAR = 8
_DRUMS = -1
_DEFAULT_TIME_SIGNATURE = (4, 4)  # MidiTok's, when a tokenizer has no TimeSig tokens
_NONE = np.zeros(0, dtype=np.int64)
MIDI_RESOLUTION = 480  # ticks a quarter of the MIDI files decode_to_midi writes
# The end marker decode_to_midi and the rules generator put at the last barline.
END_MARKER = "end"

# The REMI features the grammar does not know; a tokenizer using any of them is refused
# rather than masked wrongly.
_UNSUPPORTED = ("use_rests", "use_chords", "use_sustain_pedals", "use_pitch_bends",
                "use_pitch_intervals", "use_key_signatures", "use_control_changes",
                "program_changes")  # fmt: skip


@dataclass(frozen=True)
class GrammarState:
    """Where a sequence is; made by `RemiGrammar.start`, moved on by `advance`."""

    bars: int  # bars requested
    bar: int = 0  # Bar tokens so far; the current bar is number `bar` (1-based)
    kind: int = _START  # kind of the last token
    position: int = -1  # last Position value in the current bar, -1 before the first
    bar_positions: int = 0  # Position count of the current bar's time signature
    used: int = 0  # tokens in the current bar so far, its Bar included
    total: int = 0  # tokens so far
    notes: int = 0  # complete notes so far
    program: int = 0  # value of the last Program token
    time_signature_id: int | None = None  # forced: every bar's TimeSig is this one
    tempo_id: int | None = None  # forced: the first bar opens Position_0 <this Tempo>
    tempo_done: bool = False
    max_tokens: int | None = None  # whole-sequence budget, EOS included
    program_ids: tuple[int, ...] | None = None  # allowed Program token ids; None: all
    fit_last_barline: bool = False  # only durations that end by the last barline

    @property
    def tempo_pending(self) -> bool:
        return self.tempo_id is not None and not self.tempo_done

    @property
    def last_kind(self) -> str:
        return _KIND_NAMES[self.kind]


def _time_signature(token: str) -> tuple[int, int]:
    num, den = token.removeprefix("TimeSig_").split("/")
    return int(num), int(den)


def _duration_positions(value: str, per_beat: int) -> int:
    """'1.4.8' (1 beat + 4/8 beat) -> positions at `per_beat` positions a beat."""
    beats, frac, res = (int(x) for x in value.split("."))
    return beats * per_beat + frac * per_beat // res


def _ticks_per_bar(time_sig: tuple[int, int], ticks_per_quarter: int) -> int:
    # As miditok.utils.compute_ticks_per_bar: ticks per beat of the denominator, times
    # the numerator.
    num, den = time_sig
    return int(ticks_per_quarter * 4 / den) * num


# Kinds that may follow each kind, before budgets and values are checked (MidiTok's REMI
# order; a tokenizer without TimeSig tokens lets a Bar be followed directly).
_NEXT = {
    _START: (_BAR,),
    _BAR: (_TIMESIG,),
    _TIMESIG: (_POSITION, _BAR, _EOS),
    _POSITION: (_TEMPO, _PROGRAM),
    _TEMPO: (_PROGRAM, _POSITION, _BAR, _EOS),
    _PROGRAM: (_PITCH,),
    _PITCH: (_VELOCITY,),
    _VELOCITY: (_DURATION,),
    _DURATION: (_PROGRAM, _POSITION, _BAR, _EOS),
}


def _check_supported(tokenizer: miditok.MusicTokenizer) -> None:
    config = tokenizer.config
    if not (config.use_programs and tokenizer.one_token_stream):
        raise ValueError("the grammar needs one token stream with Program tokens")
    unsupported = [name for name in _UNSUPPORTED if getattr(config, name, False)]
    if not (config.use_velocities and config.using_note_duration_tokens):
        unsupported.append("notes without Velocity and Duration tokens")
    if set(config.programs) - set(config.use_note_duration_programs):
        unsupported.append("programs without Duration tokens")
    params = config.additional_params
    if params.get("use_bar_end_tokens") or params.get("max_bar_embedding") is not None:
        unsupported.append("Bar_End / numbered Bar tokens")
    if unsupported:
        raise ValueError(f"the REMI grammar does not support: {', '.join(unsupported)}")


def _vocab_groups(
    vocab: dict[str, int], per_beat: int, pitch_drum: bool
) -> dict[str, list[tuple[float, int]]]:
    """Token type -> (sort key, id): the value for Pitch/Position/Program/Tempo, length
    in positions for Duration, positions a bar for TimeSig. Types the grammar never
    allows (PAD, BOS, MASK) are left out."""
    groups: dict[str, list[tuple[float, int]]] = {}
    for token, i in vocab.items():
        typ, _, value = token.partition("_")
        if typ in ("Pitch", "Position", "Program") or (typ == "PitchDrum" and pitch_drum):
            key: float = int(value)
        elif typ == "Tempo":
            key = float(value)
        elif typ == "Duration":
            key = _duration_positions(value, per_beat)
        elif typ == "TimeSig":
            key = _time_signature(value)[0] * per_beat
        elif typ in ("Velocity", "Bar", "EOS"):
            key = 0
        else:
            continue
        groups.setdefault(typ, []).append((key, i))
    return groups


def nearest_tempo_token(tokenizer: miditok.MusicTokenizer, bpm: float) -> str:
    """The tokenizer's Tempo token closest to `bpm`, e.g. 140 -> 'Tempo_141.61'."""
    tempos = [t for t in tokenizer.vocab if t.startswith("Tempo_")]
    if not tempos:
        raise ValueError("the tokenizer has no Tempo tokens (use_tempos is off)")
    return min(tempos, key=lambda t: (abs(float(t.removeprefix("Tempo_")) - bpm), t))


class RemiGrammar:
    """Allowed next tokens for a REMI stream of exactly N bars.

    `vocab_size` is the model's: ids from `len(tokenizer.vocab)` on are conditioning
    tokens and are never allowed, nor are PAD, BOS and MASK (feed the prompt to the model,
    not to the grammar). Use:

        state = grammar.start(bars=8, time_signature="4/4",
                              tempo_token=nearest_tempo_token(tokenizer, 140))
        while not grammar.finished(state):
            logits[~grammar.mask(state)] = -inf
            token = sample(logits)
            state = grammar.advance(state, token)
    """

    def __init__(
        self,
        tokenizer: miditok.MusicTokenizer,
        vocab_size: int | None = None,
        max_tokens_per_bar: int = DEFAULT_MAX_TOKENS_PER_BAR,
    ) -> None:
        _check_supported(tokenizer)
        if max_tokens_per_bar < MIN_TOKENS_PER_BAR:
            raise ValueError(f"max_tokens_per_bar must be at least {MIN_TOKENS_PER_BAR}")
        vocab: dict[str, int] = tokenizer.vocab
        self.base_vocab_size = len(vocab)
        self.vocab_size = self.base_vocab_size if vocab_size is None else int(vocab_size)
        if self.vocab_size < self.base_vocab_size:
            raise ValueError(
                f"vocab_size {self.vocab_size} is smaller than the tokenizer's "
                f"{self.base_vocab_size}"
            )
        self.max_tokens_per_bar = int(max_tokens_per_bar)
        per_beat = int(tokenizer.config.max_num_pos_per_beat)
        self._ids = dict(vocab)
        self._names = [""] * self.base_vocab_size
        for token, i in vocab.items():
            self._names[i] = token
        groups = _vocab_groups(vocab, per_beat, tokenizer.config.use_pitchdrum_tokens)
        # Kind of every id, -1 for those never allowed (PAD, BOS, MASK, conditioning).
        self._kind = np.full(self.vocab_size, -1, dtype=np.int8)
        for typ, members in groups.items():
            self._kind[[i for _, i in members]] = _TYPE_KIND[typ]
        self._value = {i: int(k) for typ in ("Position", "Program") for k, i in groups[typ]}

        def ids(typ: str) -> np.ndarray:
            return np.asarray([i for _, i in sorted(groups.get(typ, []))], dtype=np.int64)

        self._bar_id = int(vocab["Bar_None"])
        self._eos_id = int(vocab["EOS_None"])
        self._ts_ids = ids("TimeSig")
        # Positions a bar of each TimeSig has: 8 a beat of its denominator.
        self._ts_positions = {i: int(n) for n, i in groups.get("TimeSig", [])}
        self._pos_ids = ids("Position")  # index = Position value
        self._tempo_ids = ids("Tempo")
        self._program_ids = ids("Program")
        self._pitch_ids = ids("Pitch")
        self._drum_pitch_ids = ids("PitchDrum") if "PitchDrum" in groups else self._pitch_ids
        self._velocity_ids = ids("Velocity")
        self._dur_ids = ids("Duration")
        self._dur_positions = np.asarray(sorted(p for p, _ in groups["Duration"]), dtype=np.int64)
        self._has_ts = len(self._ts_ids) > 0
        self._default_positions = _DEFAULT_TIME_SIGNATURE[0] * per_beat
        # Longest bar any TimeSig allows: the duration cap's assumption for later bars
        # when the time signature is free to change (see _durations).
        self._longest_bar = max(self._ts_positions.values(), default=self._default_positions)
        # Tokens every bar needs at the least: Bar, and TimeSig where the tokenizer has them.
        self._bar_cost = 2 if self._has_ts else 1
        self._next = dict(_NEXT)
        if not self._has_ts:
            self._next[_BAR] = (_POSITION, _BAR, _EOS)
        self._choices = {
            _BAR: lambda s: self._bar_id,
            _EOS: lambda s: self._eos_id,
            _TIMESIG: lambda s: (
                self._ts_ids if s.time_signature_id is None else s.time_signature_id
            ),
            _POSITION: self._positions,
            _TEMPO: self._tempos,
            _PROGRAM: lambda s: (
                self._program_ids if s.program_ids is None else np.asarray(s.program_ids)
            ),
            _PITCH: lambda s: self._drum_pitch_ids if s.program == _DRUMS else self._pitch_ids,
            _VELOCITY: lambda s: self._velocity_ids,
            _DURATION: self._durations,
        }

    # --- public API -------------------------------------------------------------------

    def start(
        self,
        bars: int,
        time_signature: str | None = None,
        tempo_token: str | None = None,
        *,
        max_tokens: int | None = None,
        programs: Iterable[int] | None = None,
        fit_last_barline: bool = False,
    ) -> GrammarState:
        """The state before the first token of a `bars`-bar piece.

        time_signature: '4/4' (or 'TimeSig_4/4') forces every bar's TimeSig to it;
            without it the first is free and later bars may change it, as the data does.
        tempo_token: e.g. `nearest_tempo_token(tokenizer, 140)`; forces the piece to open
            `Bar TimeSig Position_0 <tempo>`, as every corpus sequence does, and allows no
            other Tempo token after it, so the piece keeps the asked-for tempo.
        max_tokens: whole-sequence budget (EOS included); bars close early to respect it.
        programs: allowed Program values (e.g. [40] for a violin line); all by default.
        fit_last_barline: allow only durations that end by the last barline. Off by
            default: corpus sequences have notes that ring past it (decode_to_midi cuts
            them), and the grammar must accept whatever the dataset holds.
        """
        if bars < 1:
            raise ValueError(f"bars must be at least 1, got {bars}")
        ts_id = tempo_id = None
        if time_signature is not None:
            ts_id = self._id_of(f"TimeSig_{time_signature.removeprefix('TimeSig_')}", _TIMESIG)
        if tempo_token is not None:
            tempo_id = self._id_of(f"Tempo_{tempo_token.removeprefix('Tempo_')}", _TEMPO)
        program_ids = None
        if programs is not None:
            program_ids = tuple(
                sorted(self._id_of(f"Program_{int(p)}", _PROGRAM) for p in set(programs))
            )
            if not program_ids:
                raise ValueError("programs is empty")
        state = GrammarState(
            bars=int(bars),
            time_signature_id=ts_id,
            tempo_id=tempo_id,
            max_tokens=None if max_tokens is None else int(max_tokens),
            program_ids=program_ids,
            fit_last_barline=fit_last_barline,
        )
        if not self.mask(state).any():
            raise ValueError(f"max_tokens={max_tokens} cannot hold {bars} bars")
        return state

    def mask(self, state: GrammarState) -> np.ndarray:
        """Bool array of the model's vocabulary size: True where the next token may go."""
        m = np.zeros(self.vocab_size, dtype=bool)
        for kind in self._next.get(state.kind, ()):
            if self._fits(state, kind):
                m[self._choices[kind](state)] = True
        return m

    def advance(self, state: GrammarState, token_id: int) -> GrammarState:
        """The state after `token_id`; ValueError if the mask does not allow it."""
        token_id = int(token_id)
        if not (0 <= token_id < self.vocab_size and self.mask(state)[token_id]):
            raise ValueError(
                f"token {token_id} ({self._name(token_id)}) is not allowed after "
                f"{state.last_kind} (bar {state.bar} of {state.bars}, position "
                f"{state.position})"
            )
        kind = int(self._kind[token_id])
        changes: dict[str, object] = {"kind": kind, "total": state.total + 1,
                                      "used": state.used + 1}  # fmt: skip
        if kind == _BAR:
            changes.update(bar=state.bar + 1, position=-1, used=1)
            if not self._has_ts:
                changes["bar_positions"] = self._default_positions
        elif kind == _TIMESIG:
            changes["bar_positions"] = self._ts_positions[token_id]
        elif kind == _POSITION:
            changes["position"] = self._value[token_id]
        elif kind == _TEMPO:
            changes["tempo_done"] = True
        elif kind == _PROGRAM:
            changes["program"] = self._value[token_id]
        elif kind == _DURATION:
            changes["notes"] = state.notes + 1
        return replace(state, **changes)

    def finished(self, state: GrammarState) -> bool:
        return state.kind == _EOS

    def bars_in(self, token_ids: Iterable[int]) -> int:
        """How many Bar tokens a token-id list holds."""
        return sum(1 for t in token_ids if int(t) == self._bar_id)

    def accepts(self, token_ids: Sequence[int], bars: int | None = None, **start_kw) -> bool:
        """Whether a whole sequence (without EOS) passes the grammar and can end there."""
        ids = [int(t) for t in token_ids]
        state = self.start(self.bars_in(ids) if bars is None else bars, **start_kw)
        try:
            for t in [*ids, self._eos_id]:
                state = self.advance(state, t)
        except ValueError:
            return False
        return True

    # --- rules ------------------------------------------------------------------------

    def _positions(self, s: GrammarState) -> np.ndarray:
        if s.tempo_pending:
            # A forced tempo goes at the very start; anywhere later, pretty_midi would
            # play what comes before it at 120 bpm.
            return self._pos_ids[:1]
        return self._pos_ids[s.position + 1 : s.bar_positions]

    def _tempos(self, s: GrammarState) -> np.ndarray | int:
        if s.tempo_id is None:
            return self._tempo_ids
        # Restriction beyond the data's grammar (its one Tempo is at the start anyway):
        # after a forced tempo no other, so the piece keeps the tempo asked for.
        return s.tempo_id if s.tempo_pending else _NONE

    def _durations(self, s: GrammarState) -> np.ndarray:
        if not s.fit_last_barline:
            # Notes may ring past the last barline, as the data's do: pieces shorter than
            # the excerpt end on a long held note (Duration_8.0.4 in a 4/4 last bar), and
            # excerpts cut mid-bar keep notes that run past their last Bar's end.
            # decode_to_midi cuts such notes at the barline.
            return self._dur_ids
        # Opt-in restriction beyond the data: only durations that end by the last
        # barline. Later bars are assumed to keep the current time signature when it is
        # forced, else to be as long as any signature allows (never too strict).
        return self._dur_ids[self._dur_positions <= self._max_duration(s)]

    def _max_duration(self, s: GrammarState) -> int:
        later = s.bars - s.bar
        per_bar = s.bar_positions if s.time_signature_id is not None else self._longest_bar
        return s.bar_positions - s.position + later * per_bar

    def _fits(self, s: GrammarState, kind: int) -> bool:
        """Whether taking a `kind` token leaves room, in the bar and in the whole budget,
        for the shortest way to the end; this is what makes every masked walk finish."""
        if kind == _BAR and (s.bar >= s.bars or (s.tempo_pending and s.bar > 0)):
            return False
        if kind == _PROGRAM and s.tempo_pending:
            return False
        if kind == _EOS:
            # EOS is the Bar that would open bar N+1. A piece must hold at least one
            # note: MidiTok decodes an empty one to nothing (the data has none).
            return s.bar == s.bars and s.notes > 0 and not s.tempo_pending
        bar = s.bar + 1 if kind == _BAR else s.bar
        used = 1 if kind == _BAR else s.used + 1
        notes = s.notes + (kind == _DURATION)
        tempo_pending = s.tempo_pending and kind != _TEMPO
        want_note = notes == 0
        # In the bar: only the last bar must hold the note a piece still lacks.
        bar_need = self._need(kind, tempo_pending, want_note and bar == s.bars)
        if used + bar_need > self.max_tokens_per_bar:
            return False
        if s.max_tokens is None:
            return True
        need = self._need(kind, tempo_pending, want_note)
        return s.total + 1 + need + self._bar_cost * (s.bars - bar) + 1 <= s.max_tokens

    def _need(self, kind: int, tempo_pending: bool, want_note: bool) -> int:
        """Fewest tokens after one of `kind` until the bar may close (Bar or EOS next).

        Counts a forced opening `Position_0 Tempo` while it is pending, and a whole note
        when one is wanted. After a Position it always counts a note, so a Position is
        taken only where a note still fits behind it.
        """
        note = 4 if want_note else 0  # Program Pitch Velocity Duration
        if kind == _BAR:
            return (1 if self._has_ts else 0) + self._need(_TIMESIG, tempo_pending, want_note)
        if kind == _TIMESIG:
            return 2 + note if tempo_pending else (1 + note if want_note else 0)
        if kind == _POSITION:
            return 1 + note if tempo_pending else 4
        if kind == _TEMPO:
            return note
        return {_PROGRAM: 3, _PITCH: 2, _VELOCITY: 1}.get(kind, 0)

    def _id_of(self, name: str, kind: int) -> int:
        token_id = self._ids.get(name)
        if token_id is None or self._kind[token_id] != kind:
            raise ValueError(f"the tokenizer has no {name} token")
        return token_id

    def _name(self, token_id: int) -> str:
        if 0 <= token_id < self.base_vocab_size:
            return self._names[token_id]
        return "conditioning" if self.base_vocab_size <= token_id < self.vocab_size else "?"


# --- tokens -> MIDI -------------------------------------------------------------------


def set_end_time(pm: pretty_midi.PrettyMIDI, seconds: float) -> None:
    """Make `pm.get_end_time()` equal `seconds`: drop what lies beyond, cut notes that
    cross it, and put a text event there (so the renderer plays the final rest too)."""
    import pretty_midi

    from midiforge import midi_io

    # Keep every note that starts before the end, however short the cut leaves it.
    midi_io.truncate(pm, seconds, min_note_s=0.0)
    pm.text_events.append(pretty_midi.Text(END_MARKER, seconds))


def _content_ids(tokenizer: miditok.MusicTokenizer, token_ids: Iterable[int]) -> list[int]:
    """Tokenizer ids only: conditioning ids and PAD/BOS/MASK dropped, cut at EOS."""
    vocab = tokenizer.vocab
    base = len(vocab)
    skip = {vocab.get(t) for t in ("PAD_None", "BOS_None", "MASK_None")}
    eos = vocab.get("EOS_None")
    out: list[int] = []
    for t in (int(x) for x in token_ids):
        if t == eos and out:
            break
        if 0 <= t < base and t not in skip and t != eos:
            out.append(t)
    return out


def bar_ticks(
    tokenizer: miditok.MusicTokenizer, token_ids: Sequence[int], bars: int | None = None
) -> list[int]:
    """Tick length of each bar, as MidiTok's decoder lays them out (its ticks per
    quarter). Bars past the sequence's own keep its last time signature."""
    names = {i: t for t, i in tokenizer.vocab.items()}
    tpq = int(tokenizer.time_division)
    toks = [names[i] for i in token_ids]
    # MidiTok's decoder takes the first TimeSig met before any note as the initial one.
    time_sig = _DEFAULT_TIME_SIGNATURE
    for tok in toks:
        if tok.startswith("TimeSig_"):
            time_sig = _time_signature(tok)
            break
        if tok.split("_")[0] in ("Pitch", "PitchDrum", "Velocity", "Duration"):
            break
    lengths: list[int] = []
    for tok in toks:
        if tok == "Bar_None":
            lengths.append(_ticks_per_bar(time_sig, tpq))
        elif tok.startswith("TimeSig_"):
            time_sig = _time_signature(tok)
            if lengths:
                lengths[-1] = _ticks_per_bar(time_sig, tpq)
        elif not lengths and tok.startswith("Position_"):
            lengths.append(_ticks_per_bar(time_sig, tpq))  # decoder: content before a Bar
    n = len(lengths) if bars is None else int(bars)
    lengths = lengths[:n]
    lengths += [_ticks_per_bar(time_sig, tpq)] * (n - len(lengths))
    return lengths


def decode_to_midi(
    tokenizer: miditok.MusicTokenizer, token_ids: Iterable[int], bars: int | None = None
) -> bytes:
    """MIDI bytes of a generated sequence, spanning exactly its bars.

    Leading conditioning ids, BOS/PAD/MASK and everything from EOS on are stripped. The
    file ends at the last barline (`bars`, default the sequence's Bar count): notes that
    cross it are cut there, and a text event marks it, so pretty_midi's end time is the
    bars' total length even when the last notes end earlier.
    """
    from midiforge import midi_io

    ids = _content_ids(tokenizer, token_ids)
    if not ids:
        raise ValueError("no music tokens to decode (only conditioning/special ids)")
    lengths = bar_ticks(tokenizer, ids, bars)
    score = tokenizer.decode(list(ids))
    # MidiTok decodes at its own ticks a quarter (16 by default); write the library's
    # usual 480 where that is an exact multiple, so nothing moves.
    tpq = score.ticks_per_quarter
    resolution = MIDI_RESOLUTION if MIDI_RESOLUTION % tpq == 0 else tpq
    pm = midi_io.load_midi(score.resample(resolution).dumps_midi())
    set_end_time(pm, float(pm.tick_to_time(sum(lengths) * resolution // tpq)))
    return midi_io.midi_bytes(pm)

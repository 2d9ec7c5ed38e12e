"""REMI tokenization (MidiTok 3) with a per-piece round-trip check.

A piece is only worth training on if its tokens decode back to the music the tokenizer
meant to encode. "Meant to" is the tokenizer's own preprocessed score (notes quantized
to its grid, velocities binned, out-of-range pitches dropped), so that is what the
decoded notes are compared with.
"""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import miditok
    import symusic


def _miditok():
    """`import miditok`, without its PyTorch datasets when torch is not loaded yet.

    miditok imports `miditok.pytorch_data` (and so torch, ~1.5 s and ~300 MB) whenever
    torch is installed, although its tokenizers never use it; every dataset-job actor
    would pay that at start-up. Its `__init__` skips the submodule on ImportError, which
    a None entry in sys.modules raises; the entry is removed afterwards, so an explicit
    `import miditok.pytorch_data` later still works."""
    if "miditok" in sys.modules:
        return sys.modules["miditok"]
    block = "torch" not in sys.modules and "miditok.pytorch_data" not in sys.modules
    if block:
        sys.modules["miditok.pytorch_data"] = None  # type: ignore[assignment]
    try:
        import miditok
    finally:
        if block:
            del sys.modules["miditok.pytorch_data"]
    return miditok


def _default_beat_res() -> dict[str, int]:
    return {"0_4": 8, "4_12": 4}


def _default_time_signatures() -> dict[int, list[int]]:
    # denominator -> numerators. MidiTok's own default holds only 1-6/4, 3/8, 6/8, 12/8
    # and writes any other meter as 4/4 without a word: the corpus's 2/2 reels, 9/8 slip
    # jigs and 3/2, 4/2, 3/1 folk songs got 4/4 bar lines.
    return {1: [2, 3, 4], 2: [1, 2, 3, 4, 6], 4: [1, 2, 3, 4, 5, 6, 7], 8: [3, 5, 6, 7, 9, 12]}


@dataclass
class TokenizerSettings:
    # MidiTok's pitch range is inclusive at both ends in 3.1: (21, 109) has Pitch_109.
    pitch_range: tuple[int, int] = (21, 109)
    # "start_end" beats -> positions per beat; string keys so the config round-trips
    # through YAML. 8 per beat up to 4 beats, 4 per beat up to 12 beats.
    beat_res: dict[str, int] = field(default_factory=_default_beat_res)
    num_velocities: int = 32
    # Multi-track pieces (quartets, chorales) become one stream with Program tokens.
    use_programs: bool = True
    # Tempo tokens make tempo augmentation visible to the model.
    use_tempos: bool = True
    use_time_signatures: bool = True
    num_tempos: int = 32
    tempo_range: tuple[int, int] = (40, 250)
    time_signature_range: dict[int, list[int]] = field(default_factory=_default_time_signatures)

    def miditok_beat_res(self) -> dict[tuple[int, int], int]:
        """{"0_4": 8} -> {(0, 4): 8}, the form MidiTok's TokenizerConfig takes."""
        out = {}
        for key, res in self.beat_res.items():
            start, sep, end = str(key).partition("_")
            if not (sep and start.isdigit() and end.isdigit() and int(start) < int(end)):
                from midiforge.config import ConfigError

                raise ConfigError(f"tokenizer.beat_res key {key!r} is not 'start_end' beats")
            out[(int(start), int(end))] = int(res)
        return out

    def validate_config(self) -> None:
        from midiforge.config import ConfigError

        self.miditok_beat_res()
        for den, nums in self.time_signature_range.items():
            d = int(den)
            if d < 1 or d & (d - 1) or not nums or min(int(n) for n in nums) < 1:
                raise ConfigError(
                    f"tokenizer.time_signature_range {den}: {nums}: denominators are powers "
                    "of 2, each with a list of numerators >= 1"
                )


def make_tokenizer(settings: TokenizerSettings) -> miditok.REMI:
    miditok = _miditok()
    config = miditok.TokenizerConfig(
        pitch_range=tuple(settings.pitch_range),
        beat_res=settings.miditok_beat_res(),
        num_velocities=settings.num_velocities,
        use_programs=settings.use_programs,
        use_tempos=settings.use_tempos,
        use_time_signatures=settings.use_time_signatures,
        num_tempos=settings.num_tempos,
        tempo_range=tuple(settings.tempo_range),
        time_signature_range={
            int(den): [int(n) for n in nums] for den, nums in settings.time_signature_range.items()
        },
    )
    return miditok.REMI(config)


def save_tokenizer(tokenizer: miditok.MusicTokenizer, path: str | Path) -> None:
    """Write MidiTok's own JSON (config + vocabulary) to `path` (a file name)."""
    path = Path(path)
    # MidiTok treats a name without a dot as a folder and appends tokenizer.json.
    if "." not in path.name:
        raise ValueError(f"{path}: give a file name such as tokenizer.json")
    tokenizer.save(path)


def load_tokenizer(path: str | Path) -> miditok.REMI:
    miditok = _miditok()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer file at {path}")
    return miditok.REMI(params=path)


def _note_rows(score: symusic.Score) -> Counter[tuple[int, int, int, int, int]]:
    """(program, pitch, start, duration, velocity) of every note; drums as program -1."""
    rows: Counter[tuple[int, int, int, int, int]] = Counter()
    for track in score.tracks:
        program = -1 if track.is_drum else int(track.program)
        soa = track.notes.numpy()
        for start, dur, pitch, vel in zip(
            soa["time"].tolist(),
            soa["duration"].tolist(),
            soa["pitch"].tolist(),
            soa["velocity"].tolist(),
            strict=True,
        ):
            rows[(program, pitch, start, dur, vel)] += 1
    return rows


def _rescale(rows: Counter, factor: int) -> Counter:
    return Counter({(p, q, s * factor, d * factor, v): n for (p, q, s, d, v), n in rows.items()})


def roundtrip_difference(preprocessed: symusic.Score, decoded: symusic.Score) -> int:
    """How many notes differ between two scores, compared at a common tick grid."""
    # The decoded score comes back at tokenizer.time_division ticks per quarter (16 for
    # the default settings) while the preprocessed one is at 8 for 4/4 pieces; scale
    # both to their product rather than dividing, so no tick is rounded.
    a = _rescale(_note_rows(preprocessed), decoded.ticks_per_quarter)
    b = _rescale(_note_rows(decoded), preprocessed.ticks_per_quarter)
    return max(sum((a - b).values()), sum((b - a).values()))


def _ids_of(tokens: object) -> list[int]:
    """One id list from `encode`'s output, a TokSequence or (per-track) a list of them."""
    if isinstance(tokens, list):
        if len(tokens) != 1:
            raise ValueError(
                f"tokenizer gives one sequence per track (use_programs=False) and the piece "
                f"has {len(tokens)} tracks; enable use_programs for multi-track pieces"
            )
        tokens = tokens[0]
    return list(tokens.ids)


def _silent_changes(tokenizer: miditok.MusicTokenizer, score) -> tuple[str, str] | None:
    """(reason, detail) for what preprocessing would drop or rewrite unannounced."""
    lo, hi = tokenizer.config.pitch_range  # inclusive at both ends
    pitches = [n.pitch for t in score.tracks if not t.is_drum for n in t.notes]
    out = sum(1 for p in pitches if not lo <= p <= hi)
    if out:
        return "pitch_out_of_range", f"{out} of {len(pitches)} notes outside pitches {lo}-{hi}"
    if tokenizer.config.use_time_signatures:
        allowed = tokenizer.config.time_signature_range
        meters = {(ts.numerator, ts.denominator) for ts in score.time_signatures}
        bad = sorted(f"{n}/{d}" for n, d in meters if n not in allowed.get(d, ()))
        if bad:
            return "unsupported_time_signature", (
                f"{', '.join(bad)} not in the tokenizer's time signatures "
                "(tokenizer.time_signature_range)"
            )
    return None


def encode(
    tokenizer: miditok.MusicTokenizer, midi: bytes
) -> tuple[np.ndarray | None, str | None, str]:
    """(ids, None, '') with ids a 1-D int32 array, or (None, reason, detail).

    Reasons: 'pitch_out_of_range' (notes the tokenizer's pitch range would drop),
    'unsupported_time_signature' (a meter outside its time-signature range, which MidiTok
    would write as 4/4), 'no_notes' (nothing left after preprocessing),
    'token_roundtrip_mismatch' (decoded notes differ from the preprocessed ones),
    'tokenize_failed' (MidiTok or symusic raised; detail is the error). The first two
    are changes MidiTok's preprocessing makes without a word, and the round trip, which
    starts from the preprocessed score, cannot see them.
    """
    from symusic import Score

    try:
        score = Score.from_midi(midi)
        # Preprocess once and encode that, so the reference for the round trip is
        # exactly what the tokens were made from.
        changed = _silent_changes(tokenizer, score)
        if changed:
            return None, *changed
        preprocessed = tokenizer.preprocess_score(score)
        if preprocessed.note_num() == 0:
            return None, "no_notes", "no notes left after the tokenizer's preprocessing"
        ids = _ids_of(tokenizer.encode(preprocessed, no_preprocess_score=True))
        if not ids:
            return None, "no_notes", "empty token sequence"
        # decode() may rewrite the sequence it is handed: give it a copy.
        if tokenizer.one_token_stream:
            decoded = tokenizer.decode(list(ids))
        else:
            # Without Program tokens the program is not in the tokens; decode would
            # call the track a piano, so tell it what the track was.
            track = preprocessed.tracks[0]
            decoded = tokenizer.decode([list(ids)], programs=[(track.program, track.is_drum)])
        n_diff = roundtrip_difference(preprocessed, decoded)
    except Exception as e:  # MidiTok and symusic raise many types on odd files
        return None, "tokenize_failed", f"{type(e).__name__}: {e}"
    if n_diff:
        n = preprocessed.note_num()
        return (
            None,
            "token_roundtrip_mismatch",
            f"{n_diff} of {n} notes differ after decode (decoded {decoded.note_num()})",
        )
    return np.asarray(ids, dtype=np.int32), None, ""

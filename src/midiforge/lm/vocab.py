"""The language model's vocabulary: the dataset's MidiTok REMI tokens, then conditioning tokens.

A training sequence is [BOS, Style_<s>, Key_<k>, REMI tokens ..., (EOS at a piece's end)].
Conditioning ids come after the tokenizer's, so a REMI id means the same in the model as in
the dataset. Style tokens are slots bound to names as styles appear: a base model keeps
free slots, so fine-tuning on a style it never saw gives that style its own token (whose
embedding row the LoRA run trains) instead of reusing another style's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from midiforge.errors import MidiforgeError

STYLE_SLOTS = 32
PITCH_CLASSES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "A-", "A", "B-", "B")
_TONICS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
# Modal names count by their third, as a melody's pitch classes do.
_MODES = {
    "": "major", "maj": "major", "major": "major", "ionian": "major", "lydian": "major",
    "mixolydian": "major", "m": "minor", "min": "minor", "minor": "minor", "dorian": "minor",
    "phrygian": "minor", "aeolian": "minor", "locrian": "minor",
}  # fmt: skip
_KEY_RE = re.compile(r"^\s*([A-Ga-g])([#b\-♯♭]*)\s*([A-Za-z]*)\s*$")


class KeyNameError(MidiforgeError, ValueError):
    """A key name that cannot be parsed."""


def parse_key(name: str) -> tuple[int, str]:
    """(tonic pitch class, 'major' | 'minor') for 'A minor', 'B- major', 'Am', 'D', 'f#m',
    'D dorian'; a lone lower-case tonic ('a') is minor, as in music21."""
    m = _KEY_RE.match(name or "")
    word = m.group(3) if m else ""
    if not m or (word.lower() not in _MODES and word != "M"):
        raise KeyNameError(f"not a key: {name!r} (write e.g. 'Am', 'A minor', 'D', 'E- major')")
    letter, accidentals = m.group(1), m.group(2)
    tonic = _TONICS[letter.lower()] + sum(1 if a in "#♯" else -1 for a in accidentals)
    if word == "M":
        mode = "major"
    elif word:
        mode = _MODES[word.lower()]
    else:
        mode = "minor" if letter.islower() else "major"
    return tonic % 12, mode


def key_token(name: str, transpose: int = 0) -> str:
    pc, mode = parse_key(name)
    return f"Key_{PITCH_CLASSES[(pc + transpose) % 12]}{'m' if mode == 'minor' else ''}"


def key_name(token: str) -> str:
    """'Key_Am' -> 'A minor' (music21's spelling, as the dataset's key column has it)."""
    body = token.removeprefix("Key_")
    minor = body.endswith("m")
    return f"{body.removesuffix('m') if minor else body} {'minor' if minor else 'major'}"


KEY_TOKENS = tuple(f"Key_{p}{m}" for m in ("", "m") for p in PITCH_CLASSES)


@dataclass
class LMVocab:
    """Ids: [0, base_size) are the tokenizer's; then style slots; then the 24 keys."""

    base_size: int
    styles: list[str] = field(default_factory=list)  # slot i is bound to styles[i]
    # GM programs each style was trained on: generation plays a style on its instruments
    # unless asked otherwise (a program the model never saw with a style has no music).
    programs: dict[str, list[int]] = field(default_factory=dict)
    bos: int = 1
    eos: int = 2
    pad: int = 0

    @classmethod
    def for_tokenizer(cls, tokenizer, styles: list[str] = ()) -> LMVocab:
        v = tokenizer.vocab
        return cls(
            base_size=len(v),
            styles=sorted(set(styles)),
            bos=v["BOS_None"],
            eos=v["EOS_None"],
            pad=v["PAD_None"],
        )

    @property
    def size(self) -> int:
        return self.base_size + STYLE_SLOTS + len(KEY_TOKENS)

    def style_id(self, style: str) -> int:
        if style not in self.styles:
            raise ValueError(f"style {style!r} has no token; known: {', '.join(self.styles)}")
        return self.base_size + self.styles.index(style)

    def add_style(self, style: str) -> int:
        """Bind a free slot to a new style (fine-tuning); returns its id."""
        if style not in self.styles:
            if len(self.styles) >= STYLE_SLOTS:
                raise ValueError(f"all {STYLE_SLOTS} style slots are taken")
            self.styles.append(style)
        return self.style_id(style)

    def key_id(self, key: str) -> int:
        return self.base_size + STYLE_SLOTS + KEY_TOKENS.index(key_token(key))

    def prefix(self, style: str, key: str) -> list[int]:
        """`key` is the key the music is in: for an augmented copy the dataset's key column
        already has the transposition applied, so nothing is added here."""
        return [self.bos, self.style_id(style), self.key_id(key)]

    def is_conditioning(self, token_id: int) -> bool:
        return token_id >= self.base_size

    def save(self, path: str | Path) -> None:
        data = {"base_size": self.base_size, "styles": self.styles, "programs": self.programs,
                "bos": self.bos,
                "eos": self.eos, "pad": self.pad, "style_slots": STYLE_SLOTS,
                "keys": list(KEY_TOKENS)}  # fmt: skip
        Path(path).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> LMVocab:
        d = json.loads(Path(path).read_text())
        if d.get("style_slots") != STYLE_SLOTS or d.get("keys") != list(KEY_TOKENS):
            raise ValueError(f"{path}: conditioning layout differs from this midiforge version")
        programs = {k: [int(p) for p in v] for k, v in (d.get("programs") or {}).items()}
        return cls(d["base_size"], list(d["styles"]), programs, d["bos"], d["eos"], d["pad"])

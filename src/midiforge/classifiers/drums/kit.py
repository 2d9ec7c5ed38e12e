"""The stems a drum filter knows and their General MIDI percussion notes.

One place for the stem names, so a typo in `--stem` fails with the list of valid names
before any audio is read.
"""

from __future__ import annotations

from midiforge.errors import MidiforgeError

STEMS = ("kick", "snare", "toms", "hihat", "cymbals")

# GM percussion keys (channel 10) that make up each stem: the target piece of a stem
# track, and in synthetic songs the bleed source for every other stem.
GM_NOTES: dict[str, tuple[int, ...]] = {
    "kick": (35, 36),
    "snare": (38, 40),  # 37 (side stick) and 39 (clap) left out: not the snare's sound
    "toms": (41, 43, 45, 47, 48, 50),
    "hihat": (42, 44, 46),
    "cymbals": (49, 51, 52, 55, 57, 59),
}

# The one note written per kept hit: a filter decides keep/remove, not which tom or
# which cymbal was struck.
OUTPUT_NOTE = {"kick": 36, "snare": 38, "toms": 45, "hihat": 42, "cymbals": 49}


class UnknownStemError(MidiforgeError, ValueError):
    """A stem name outside STEMS."""


def check_stem(stem: str) -> str:
    if stem not in STEMS:
        raise UnknownStemError(f"unknown drum stem {stem!r}: choose from {', '.join(STEMS)}")
    return stem

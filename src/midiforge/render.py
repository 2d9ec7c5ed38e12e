"""MIDI -> audio through FluidSynth with a General MIDI soundfont.

FluidSynth is the reference SoundFont 2 synthesizer (full SF2 modulators, maintained,
in Debian as libfluidsynth3); we drive it from Python through pyfluidsynth and schedule
the MIDI events ourselves, so the audio is sample-aligned with the notes we write as
ground truth. Reverb and chorus are off by default: they smear onsets and offsets that
the transcription metrics are measured against. Training renders may switch them on
(`FluidEffects`) so a model learns that a reverberant tail is not a held note.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi

from midiforge.errors import MidiforgeError

DEFAULT_SAMPLE_RATE = 22_050
DRUM_CHANNEL = 9
_PEAK = 0.891  # -1 dBFS: loud enough to be a normal recording, never clipped


class RenderError(MidiforgeError, RuntimeError):
    """The synthesizer could not be started or a soundfont could not be loaded."""


@dataclass(frozen=True)
class FluidEffects:
    """FluidSynth's built-in reverb and chorus, for training renders only.

    Ranges are FluidSynth's own (reverb room size, damping and level 0-1, width 0-100;
    chorus 0-99 voices, level 0-10, speed 0.1-5 Hz, depth in ms). A level of 0 (reverb)
    or 0 voices (chorus) leaves that effect off. The sends are the per-channel MIDI
    controllers 91 and 93; GM starts chorus at 0, which would leave the chorus silent.
    """

    reverb_room_size: float = 0.6
    reverb_damping: float = 0.3
    reverb_width: float = 10.0
    reverb_level: float = 0.5
    chorus_nr: int = 0
    chorus_level: float = 2.0
    chorus_speed: float = 0.3
    chorus_depth: float = 8.0
    reverb_send: int = 40  # CC91, GM's power-on value
    chorus_send: int = 64  # CC93

    def settings(self) -> dict[str, int | float]:
        """FluidSynth settings; ints and floats typed as FluidSynth declares them."""
        return {
            "synth.reverb.active": int(self.reverb_level > 0),
            "synth.reverb.room-size": float(self.reverb_room_size),
            "synth.reverb.damp": float(self.reverb_damping),
            "synth.reverb.width": float(self.reverb_width),
            "synth.reverb.level": float(self.reverb_level),
            "synth.chorus.active": int(self.chorus_nr > 0),
            "synth.chorus.nr": int(self.chorus_nr),
            "synth.chorus.level": float(self.chorus_level),
            "synth.chorus.speed": float(self.chorus_speed),
            "synth.chorus.depth": float(self.chorus_depth),
        }

    def sends(self) -> tuple[tuple[int, int], ...]:
        """(controller, value) pairs sent on every channel before the first note."""
        return ((91, int(self.reverb_send)), (93, int(self.chorus_send)))


_DRY = {"synth.reverb.active": 0, "synth.chorus.active": 0}


def default_soundfont() -> Path:
    """The small GM soundfont (TimGM6mb) that pretty_midi ships in its package."""
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise RenderError(f"pretty_midi's bundled soundfont is missing at {path}")
    return path


def _fluidsynth():
    try:
        import fluidsynth
    except ImportError as e:  # the binding raises ImportError when libfluidsynth is absent
        raise RenderError(
            f"FluidSynth is unavailable ({e}); install Debian's libfluidsynth3 "
            "(make install does this when run as root)"
        ) from None
    return fluidsynth


def _assign_channels(pm: pretty_midi.PrettyMIDI) -> list[int]:
    """One MIDI channel per instrument, skipping the drum channel for pitched parts.

    More than 15 pitched parts share channels round-robin; parts sharing a channel
    then share a program, which no corpus piece here needs.
    """
    melodic = [c for c in range(16) if c != DRUM_CHANNEL]
    channels, k = [], 0
    for inst in pm.instruments:
        if inst.is_drum:
            channels.append(DRUM_CHANNEL)
        else:
            channels.append(melodic[k % len(melodic)])
            k += 1
    return channels


def _events(pm: pretty_midi.PrettyMIDI, channels: list[int]) -> list[tuple]:
    # (time, order, kind, channel, a, b): note-offs sort before note-ons at the same
    # instant so a repeated note is re-struck rather than cut.
    ev: list[tuple] = []
    for inst, ch in zip(pm.instruments, channels, strict=True):
        for n in inst.notes:
            ev.append((n.start, 1, "on", ch, n.pitch, n.velocity))
            ev.append((n.end, 0, "off", ch, n.pitch, 0))
        for c in inst.control_changes:
            ev.append((c.time, 0, "cc", ch, c.number, c.value))
        for b in inst.pitch_bends:
            ev.append((b.time, 0, "bend", ch, b.pitch, 0))
    ev.sort(key=lambda e: (e[0], e[1]))
    return ev


def _set_up_channels(synth, sfid: int, pm, channels: list[int], effects) -> None:
    """Programs (drums on bank 128) and, with effects on, their per-channel sends."""
    for inst, ch in zip(pm.instruments, channels, strict=True):
        synth.program_select(
            ch, sfid, 128 if inst.is_drum else 0, 0 if inst.is_drum else inst.program
        )
        for number, value in effects.sends() if effects else ():
            synth.cc(ch, number, value)


def render_midi(
    pm: pretty_midi.PrettyMIDI,
    soundfont: str | Path | None = None,
    sample_rate: int = DEFAULT_SAMPLE_RATE,
    tail_s: float = 0.25,
    normalize: bool = True,
    *,
    effects: FluidEffects | None = None,
) -> np.ndarray:
    """Render a PrettyMIDI to float32 mono at `sample_rate`.

    The audio lasts until the last note-off plus `tail_s` of release. Event times land
    on FluidSynth's 64-sample blocks (2.9 ms at 22,050 Hz), far inside the 50 ms onset
    tolerance of the evaluation. `effects` None renders dry (reverb and chorus off).
    """
    fluidsynth = _fluidsynth()
    sf_path = Path(soundfont) if soundfont else default_soundfont()
    if not sf_path.is_file():
        raise RenderError(f"soundfont not found: {sf_path}")
    settings = {**(effects.settings() if effects else _DRY), "synth.cpu-cores": 1}
    synth = fluidsynth.Synth(gain=0.5, samplerate=float(sample_rate), **settings)
    try:
        sfid = synth.sfload(str(sf_path))
        if sfid < 0:
            raise RenderError(f"FluidSynth could not load soundfont {sf_path}")
        channels = _assign_channels(pm)
        _set_up_channels(synth, sfid, pm, channels, effects)
        total = round((pm.get_end_time() + tail_s) * sample_rate)
        left = np.zeros(total, dtype=np.float32)
        right = np.zeros(total, dtype=np.float32)
        write = synth_write_float(fluidsynth)
        pos = 0
        for t, _, kind, ch, a, b in _events(pm, channels):
            target = min(total, round(t * sample_rate))
            if target > pos:
                write(synth.synth, target - pos, left[pos:], right[pos:])
                pos = target
            if kind == "on":
                synth.noteon(ch, a, b)
            elif kind == "off":
                synth.noteoff(ch, a)
            elif kind == "cc":
                synth.cc(ch, a, b)
            else:
                synth.pitch_bend(ch, a)
        if total > pos:
            write(synth.synth, total - pos, left[pos:], right[pos:])
    finally:
        synth.delete()
    mono = 0.5 * (left + right)
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if normalize and peak > 0:
        mono *= _PEAK / peak
    return mono


def synth_write_float(fluidsynth):
    """fluid_synth_write_float, which pyfluidsynth does not wrap (it offers int16 only)."""
    fn = fluidsynth._fl.fluid_synth_write_float  # the binding's own ctypes handle
    fn.restype = ctypes.c_int
    fn.argtypes = [
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_int,
        ctypes.c_int,
    ]

    def write(synth_ptr, n: int, left: np.ndarray, right: np.ndarray) -> None:
        if fn(synth_ptr, n, left.ctypes.data, 0, 1, right.ctypes.data, 0, 1) != 0:
            raise RenderError("FluidSynth failed while rendering")

    return write

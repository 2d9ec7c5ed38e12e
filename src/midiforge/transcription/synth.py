"""Signal generation and processing for varied training renders (used by `variety`).

- an additive bowed-string synthesizer (`synth_render`): wavetable voices with vibrato,
  detune and an ADSR whose release rings past the note-off, bow noise, body formants;
- the recording chain after the instrument (`augment_audio`): EQ, room reverb, noise at
  a drawn SNR, gain.

`sample_synth_params` and `sample_augment` draw their parameters. Every random draw comes
from the numpy Generator passed in, so a seeded render is reproducible. `Vibrato` lives
here because the synthesizer plays it; `variety` also turns it into soundfont pitch bends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import pretty_midi
from scipy import signal

TAIL_S = 1.0  # audio kept after the last note-off: longest release plus most reverb
PEAK = 0.891  # -1 dBFS, as render.py normalizes
VIBRATO_RAMP_S = 0.15  # vibrato depth fades in over this after its delay


@dataclass(frozen=True)
class Vibrato:
    rate_hz: float  # players: 4.5-7 Hz
    depth_cents: float  # peak deviation
    delay_s: float  # after the onset, before vibrato fades in


@dataclass(frozen=True)
class SynthParams:
    """One additive bowed-string voice; `formants` are the body's (Hz, dB, Q) peaks."""

    rolloff: float  # harmonic k has amplitude k**-rolloff (1 = sawtooth, like a bowed string)
    even_gain: float  # even harmonics relative to odd (bowing position, hollowness)
    formants: tuple[tuple[float, float, float], ...]
    attack_s: float
    decay_s: float
    sustain: float  # level after the decay, relative to the attack peak
    release_s: float  # to -60 dB after note-off
    bow_noise: float  # noise amplitude relative to the harmonic part
    noise_hz: float  # centre of the bow-noise band
    detune_cents: float  # each note is off by up to this much
    velocity_gamma: float  # amplitude = (velocity / 127) ** gamma
    vibrato: Vibrato | None = None


@dataclass(frozen=True)
class AugmentParams:
    """The recording chain after the instrument: EQ, room, noise, gain."""

    low_shelf: tuple[float, float]  # (Hz, dB)
    high_shelf: tuple[float, float]
    peak: tuple[float, float, float]  # (Hz, dB, Q)
    reverb_rt60_s: float | None  # None: no room
    reverb_wet: float
    snr_db: float | None  # None: no noise
    noise: Literal["white", "pink"]
    gain_db: float


# --- drawing parameters ---------------------------------------------------------------


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_vibrato(rng: np.random.Generator) -> Vibrato | None:
    """Most string and wind playing has vibrato; a fifth of variants play straight."""
    if rng.random() < 0.2:
        return None
    return Vibrato(
        rate_hz=float(rng.uniform(4.5, 7.0)),
        depth_cents=float(rng.uniform(5.0, 40.0)),
        delay_s=float(rng.uniform(0.05, 0.4)),
    )


def sample_synth_params(rng: np.random.Generator) -> SynthParams:
    n_formants = int(rng.integers(2, 5))
    formants = tuple(
        (_loguniform(rng, 250.0, 4000.0), float(rng.uniform(3.0, 12.0)), float(rng.uniform(1, 6)))
        for _ in range(n_formants)
    )
    return SynthParams(
        rolloff=float(rng.uniform(0.7, 2.0)),
        even_gain=float(rng.uniform(0.2, 1.0)),
        formants=formants,
        attack_s=_loguniform(rng, 0.01, 0.3),  # bowed attacks swell for up to ~0.3 s
        decay_s=float(rng.uniform(0.05, 0.3)),
        sustain=float(rng.uniform(0.5, 1.0)),
        release_s=_loguniform(rng, 0.05, 0.9),  # tails ring well past the note-off
        bow_noise=_loguniform(rng, 0.003, 0.05),
        noise_hz=_loguniform(rng, 1000.0, 5000.0),
        detune_cents=float(rng.uniform(0.0, 10.0)),
        velocity_gamma=float(rng.uniform(1.0, 2.5)),
        vibrato=sample_vibrato(rng),
    )


def sample_augment(rng: np.random.Generator) -> AugmentParams:
    return AugmentParams(
        low_shelf=(_loguniform(rng, 80.0, 400.0), float(rng.uniform(-6.0, 6.0))),
        high_shelf=(_loguniform(rng, 2000.0, 8000.0), float(rng.uniform(-9.0, 6.0))),
        peak=(
            _loguniform(rng, 300.0, 5000.0),
            float(rng.uniform(-8, 8)),
            float(rng.uniform(0.7, 3)),
        ),
        reverb_rt60_s=float(rng.uniform(0.2, 1.2)) if rng.random() < 0.5 else None,
        reverb_wet=float(rng.uniform(0.1, 0.5)),
        snr_db=float(rng.uniform(20.0, 45.0)) if rng.random() < 0.7 else None,
        noise="pink" if rng.random() < 0.5 else "white",
        gain_db=float(rng.uniform(-12.0, 0.0)),
    )


# --- the additive bowed-string synthesizer ---------------------------------------------

_TABLE = 4096  # samples per wavetable cycle; linear interpolation is clean at this size
_CROSSFADE_S = 0.02  # a re-struck note fades its predecessor out over this, without a click
_MAX_HARMONICS = 80  # a cello's C2 reaches 5 kHz; the rolloff makes the rest inaudible


def _wavetable(n_harmonics: int, params: SynthParams) -> np.ndarray:
    """One band-limited cycle (plus a wrap sample) of the voice's harmonic spectrum."""
    k = np.arange(1, n_harmonics + 1, dtype=np.float64)
    amps = k**-params.rolloff * np.where(k % 2 == 0, params.even_gain, 1.0)
    spectrum = np.zeros(_TABLE // 2 + 1, dtype=np.complex128)
    spectrum[1 : n_harmonics + 1] = -1j * amps  # sines, so every cycle starts at zero
    table = np.fft.irfft(spectrum, n=_TABLE)
    table /= np.max(np.abs(table))
    return np.r_[table, table[0]].astype(np.float32)


def _attack_decay(t: np.ndarray, p: SynthParams) -> np.ndarray:
    """Linear attack to 1, then exponential decay (5 time constants in `decay_s`)."""
    decay = np.exp(-np.maximum(t - p.attack_s, 0.0) * 5 / p.decay_s)
    return np.minimum(t / p.attack_s, 1.0) * (p.sustain + (1 - p.sustain) * decay)


def _envelope(t: np.ndarray, held_s: float, p: SynthParams) -> np.ndarray:
    """ADSR whose release starts from wherever the note got to and reaches -60 dB at
    `release_s` after note-off: a tail that decays, never a held level."""
    at_off = float(_attack_decay(np.array(held_s), p))
    # Clamped at note-off: before it the branch is unused, and unclamped it overflows.
    release = at_off * np.exp(-np.maximum(t - held_s, 0.0) * np.log(1000) / p.release_s)
    return np.where(t < held_s, _attack_decay(t, p), release)


def _note_frequency(
    t: np.ndarray, f0: float, vib: Vibrato | None, rng: np.random.Generator
) -> np.ndarray:
    if vib is None:
        return np.full_like(t, f0)
    ramp = np.clip((t - vib.delay_s) / VIBRATO_RAMP_S, 0.0, 1.0)
    phase = rng.uniform(0, 2 * np.pi)
    cents = vib.depth_cents * ramp * np.sin(2 * np.pi * vib.rate_hz * t + phase)
    return f0 * 2.0 ** (cents / 1200)


def _tail_limits(notes: np.ndarray) -> np.ndarray:
    """Seconds each note may ring after its note-off: until the next onset of the same
    pitch in the same part (plus a crossfade), as a re-bowed string stops its own
    previous vibration."""
    limits = np.full(len(notes), np.inf)
    for pitch in np.unique(notes[:, 2]):
        idx = np.flatnonzero(notes[:, 2] == pitch)
        order = idx[np.argsort(notes[idx, 0])]
        gap = np.maximum(notes[order[1:], 0] - notes[order[:-1], 1], 0.0)
        limits[order[:-1]] = gap + _CROSSFADE_S
    return limits


def _biquad(kind: str, hz: float, db: float, q: float, sr: int) -> np.ndarray:
    """One RBJ-cookbook biquad ('peak', 'low', 'high' shelf) as a scipy sos row."""
    w0 = 2 * np.pi * min(hz, 0.45 * sr) / sr
    a = 10 ** (db / 40)
    alpha = np.sin(w0) / (2 * q)
    cos = np.cos(w0)
    if kind == "peak":
        b = [1 + alpha * a, -2 * cos, 1 - alpha * a]
        den = [1 + alpha / a, -2 * cos, 1 - alpha / a]
    else:
        sq = 2 * np.sqrt(a) * alpha
        s = 1 if kind == "low" else -1
        b = [a * ((a + 1) - s * (a - 1) * cos + sq), s * 2 * a * ((a - 1) - s * (a + 1) * cos),
             a * ((a + 1) - s * (a - 1) * cos - sq)]  # fmt: skip
        den = [(a + 1) + s * (a - 1) * cos + sq, -s * 2 * ((a - 1) + s * (a + 1) * cos),
               (a + 1) + s * (a - 1) * cos - sq]  # fmt: skip
    return np.r_[b, den] / den[0]


class _Note(NamedTuple):
    start: float
    held: float  # note-on to note-off, seconds
    pitch: int
    velocity: int
    tail: float  # seconds it rings after note-off


def _voice(
    note: _Note, n: int, sr: int, p: SynthParams, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(tone, noise envelope) of one note over `n` samples from its onset."""
    t = np.arange(n) / sr
    detune = rng.uniform(-p.detune_cents, p.detune_cents)
    f0 = float(pretty_midi.note_number_to_hz(note.pitch + detune / 100))
    # Harmonics stop below Nyquist even at the top of the vibrato: no aliasing.
    max_cents = (p.vibrato.depth_cents if p.vibrato else 0.0) + p.detune_cents
    k = int(np.clip(0.45 * sr / (f0 * 2 ** (max_cents / 1200)), 1, _MAX_HARMONICS))
    table = _wavetable(k, p)
    pos = (np.cumsum(_note_frequency(t, f0, p.vibrato, rng)) / sr % 1.0) * _TABLE
    j = pos.astype(np.int64)
    wave = table[j] + (pos - j) * (table[j + 1] - table[j])
    env = _envelope(t, note.held, p) * (note.velocity / 127) ** p.velocity_gamma
    if note.tail < p.release_s:  # cut by a re-struck same pitch: fade under its attack
        env *= np.clip((note.held + note.tail - t) / _CROSSFADE_S, 0.0, 1.0)
    scrape = 1 + 4 * np.exp(-t / 0.03)  # the bow's bite at the attack
    return env * wave, env * scrape


def _notes(inst: pretty_midi.Instrument) -> list[_Note]:
    rows = np.array([(n.start, n.end, n.pitch, n.velocity) for n in inst.notes]).reshape(-1, 4)
    return [
        _Note(float(s), float(e - s), int(p), int(v), float(lim))
        for (s, e, p, v), lim in zip(rows, _tail_limits(rows), strict=True)
    ]


def synth_render(
    pm: pretty_midi.PrettyMIDI,
    sample_rate: int,
    params: SynthParams,
    rng: np.random.Generator,
    tail_s: float = TAIL_S,
) -> np.ndarray:
    """Render `pm` with the additive bowed-string voice; float32 mono, -1 dBFS peak.

    Each note is a wavetable oscillator (its harmonic count kept under Nyquist) with
    vibrato, random detune and an ADSR whose release rings past the note-off; bow noise
    follows the envelope with a scrape at the attack. The mix goes through the body's
    formant filters. Work is O(samples) per note, whatever the harmonic count.
    """
    total = round((pm.get_end_time() + tail_s) * sample_rate)
    tone = np.zeros(total)
    noise_env = np.zeros(total)
    for inst in pm.instruments:
        for note in _notes(inst):
            i0 = round(note.start * sample_rate)
            n = min(round((note.held + min(params.release_s, note.tail)) * sample_rate), total - i0)
            if n > 0:
                wave, env = _voice(note, n, sample_rate, params, rng)
                tone[i0 : i0 + n] += wave
                noise_env[i0 : i0 + n] += env
    mix = tone + params.bow_noise * _bow_noise(total, params.noise_hz, sample_rate, rng) * noise_env
    body = np.stack([_biquad("peak", hz, db, q, sample_rate) for hz, db, q in params.formants])
    return _normalized(signal.sosfilt(body, mix))


def _bow_noise(n: int, hz: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise in the two octaves around `hz`: the rosin hiss of a bow."""
    band = signal.butter(2, [hz / 2, min(hz * 2, 0.45 * sr)], "bandpass", fs=sr, output="sos")
    noise = signal.sosfilt(band, rng.standard_normal(n))
    return noise / (np.std(noise) or 1.0)


def _normalized(x: np.ndarray, peak: float = PEAK) -> np.ndarray:
    top = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (peak / top) if top > 0 else x).astype(np.float32)


# --- the recording chain ---------------------------------------------------------------


def _room_ir(rt60_s: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Exponentially decaying noise (-60 dB at rt60), lowpassed at a random cutoff to
    stand in for the absorption of highs by air and walls; unit energy."""
    t = np.arange(round(rt60_s * sr)) / sr
    ir = rng.standard_normal(t.size) * np.exp(-np.log(1000) * t / rt60_s)
    lowpass = signal.butter(1, float(rng.uniform(2000, 8000)), fs=sr, output="sos")
    ir = signal.sosfilt(lowpass, ir)
    return ir / np.sqrt(np.sum(ir**2))


def _noise(n: int, color: str, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.arange(spectrum.size, dtype=np.float64)
    spectrum /= np.sqrt(np.maximum(f, 1.0))  # 1/f power: pink
    pink = np.fft.irfft(spectrum, n=n)
    return pink / (np.std(pink) or 1.0)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def augment_audio(
    audio: np.ndarray,
    sr: int,
    rng: np.random.Generator,
    params: AugmentParams | None = None,
) -> np.ndarray:
    """EQ, room reverb, noise at a given SNR and gain; same length, peak <= -1 dBFS.

    `params` None draws them from `rng`. The room's tail is cut at the clip's end rather
    than lengthening it, so audio and MIDI keep the same timeline.
    """
    p = params if params is not None else sample_augment(rng)
    x = np.asarray(audio, dtype=np.float64)
    eq = np.stack([
        _biquad("low", *p.low_shelf, 0.707, sr),
        _biquad("high", *p.high_shelf, 0.707, sr),
        _biquad("peak", *p.peak, sr),
    ])  # fmt: skip
    x = signal.sosfilt(eq, x)
    if p.reverb_rt60_s is not None and x.size:
        wet = signal.fftconvolve(x, _room_ir(p.reverb_rt60_s, sr, rng))[: x.size]
        wet *= _rms(x) / (_rms(wet) or 1.0)
        x = (1 - p.reverb_wet) * x + p.reverb_wet * wet
    if p.snr_db is not None and x.size:
        x = x + _noise(x.size, p.noise, rng) * _rms(x) / 10 ** (p.snr_db / 20)
    x = x * 10 ** (p.gain_db / 20)
    top = float(np.max(np.abs(x))) if x.size else 0.0
    return (x * (PEAK / top) if top > PEAK else x).astype(np.float32)

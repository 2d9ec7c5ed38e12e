"""Drum stems with known answers, made here without downloads.

A song is a seeded random groove (tempo 80-160 BPM, 16th grid, accents, ghost notes,
fills, crashes) played on General MIDI percussion through a real soundfont
(`midiforge.render`). A stem track is the target kit piece at full level plus what makes
real stems hard to filter:

- bleed: every other kit piece, each at its own gain -12 to -24 dB below the target's
  peak, as close mics pick up the rest of the kit;
- a room: the mix convolved with an exponentially decaying noise response (RT60
  0.3-1.2 s) at -10 to -20 dB, so hits have long tails;
- re-triggers: after some target hits a low-passed noise burst 40-90 ms later (a
  rattle, a snare buzz, a cymbal swell), which onset detection proposes as a second hit;
- noise at -45 to -60 dB.

The target piece's notes are the ground truth, standing in for the producer's edited
MIDI; onset detection on the stem (exactly as `extract` runs it) gives the raw MIDI.
Per song the folder gets `audio/SONG.wav`, `raw/SONG.mid` and `edited/SONG.mid`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from midiforge.classifiers.drums import hitmidi
from midiforge.classifiers.drums.detect import DrumDefaults, detect_hits, load_defaults, load_stem
from midiforge.classifiers.drums.features import FeatureConfig, hit_features
from midiforge.classifiers.drums.kit import GM_NOTES, STEMS, check_stem
from midiforge.config import ConfigError

log = logging.getLogger(__name__)

FLUID_R3 = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
Event = tuple[float, int, int]  # (time_s, GM note, velocity)


@dataclass
class RenderConfig:
    """Which synthetic songs: song i of a seed is the same whatever `songs` is."""

    stem: str = "snare"
    songs: int = 12
    seconds: float = 20.0  # ~40 hits of the target piece per song at 120 BPM
    seed: int = 0  # training and test sets need different seeds: seeds share no songs

    def validate_config(self) -> None:
        check_stem(self.stem)
        if self.songs < 1:
            raise ConfigError("render.songs must be >= 1")
        if self.seconds < 2.0:
            raise ConfigError("render.seconds must be >= 2 (a song needs a bar of groove)")


def soundfonts() -> list[Path]:
    """pretty_midi's TimGM6mb, plus FluidR3 where Debian installed it: two kits, so a
    model does not learn one sample set."""
    from midiforge.render import default_soundfont

    return [default_soundfont(), *([FLUID_R3] if FLUID_R3.is_file() else [])]


def _vel(rng: np.random.Generator, lo: int, hi: int) -> int:
    return int(rng.integers(lo, hi + 1))


def _timekeeping(
    rng: np.random.Generator,
    ev: dict[str, list[Event]],
    t: float,
    pos: int,
    *,
    ride: bool,
    sixteenths: bool,
) -> None:
    """Ride (with the hihat's foot on 2 and 4) or hihat, at 16th position `pos`."""
    if ride and pos % 2 == 0:
        note = 59 if rng.random() < 0.1 else 51
        ev["cymbals"].append((t, note, _vel(rng, 55, 105) if pos % 4 else _vel(rng, 80, 115)))
        if pos % 8 == 4:
            ev["hihat"].append((t, 44, _vel(rng, 40, 80)))
    elif not ride and (sixteenths or pos % 2 == 0):
        accent = pos % 4 == 0
        note = 46 if pos % 4 == 2 and rng.random() < 0.1 else 42
        ev["hihat"].append((t, note, _vel(rng, 80, 115) if accent else _vel(rng, 35, 85)))


def groove(rng: np.random.Generator, seconds: float) -> tuple[float, dict[str, list[Event]]]:
    """(tempo, events per stem) for `seconds` of music; every stem gets some hits."""
    tempo = float(rng.uniform(80, 160))
    step = 60.0 / tempo / 4  # a 16th note
    sixteenths = rng.random() < 0.4
    ride = rng.random() < 0.5
    ev: dict[str, list[Event]] = {s: [] for s in STEMS}
    n_bars = int(np.ceil(seconds / (16 * step)))
    for bar in range(n_bars):
        t0 = bar * 16 * step
        fill = bar % 4 == 3 and rng.random() < 0.7
        if bar % 4 == 0 or rng.random() < 0.1:
            ev["cymbals"].append((t0, int(rng.choice([49, 57, 55, 52])), _vel(rng, 90, 127)))
        for pos in range(16):
            t = t0 + pos * step
            in_fill = fill and pos >= 12
            if pos in (0, 8) or (pos % 2 == 1 and rng.random() < 0.12) or rng.random() < 0.08:
                ev["kick"].append((t, int(rng.choice(GM_NOTES["kick"])), _vel(rng, 80, 127)))
            if in_fill:
                drum = "toms" if rng.random() < 0.7 else "snare"
                ev[drum].append((t, int(rng.choice(GM_NOTES[drum])), _vel(rng, 60, 120)))
                continue
            if pos in (4, 12):
                ev["snare"].append((t, 38, _vel(rng, 95, 127)))
            elif rng.random() < 0.15:  # ghost notes: the target's own quiet hits
                ev["snare"].append((t, 38, _vel(rng, 20, 50)))
            if rng.random() < 0.03:
                ev["toms"].append((t, int(rng.choice(GM_NOTES["toms"])), _vel(rng, 50, 110)))
            _timekeeping(rng, ev, t, pos, ride=ride, sixteenths=sixteenths)
    for stem in STEMS:  # humanize by a few ms, and keep clear of the end of the song
        jitter = rng.normal(0, 0.004, len(ev[stem]))
        ev[stem] = [
            (max(0.0, t + j), n, v)
            for (t, n, v), j in zip(ev[stem], jitter, strict=True)
            if t < seconds - 0.3
        ]
        if not ev[stem]:
            ev[stem] = [(0.0, GM_NOTES[stem][0], 100)]
    return tempo, ev


def _render(events: list[Event], soundfont: Path, sr: int, total: int) -> np.ndarray:
    import pretty_midi

    from midiforge.render import render_midi

    pm = pretty_midi.PrettyMIDI()
    inst = pretty_midi.Instrument(program=0, is_drum=True)
    inst.notes = [pretty_midi.Note(v, n, t, t + 0.1) for t, n, v in events]
    pm.instruments.append(inst)
    y = render_midi(pm, soundfont, sample_rate=sr, tail_s=2.0, normalize=False)
    out = np.zeros(total, np.float32)
    out[: min(total, len(y))] = y[:total]
    return out


def _peak(x: np.ndarray) -> float:
    return max(float(np.max(np.abs(x))), 1e-9)


def _lowpassed_noise(rng: np.random.Generator, n: int, sr: int, cutoff_hz: float) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    sos = butter(2, cutoff_hz, btype="low", fs=sr, output="sos")
    return sosfilt(sos, rng.standard_normal(n)).astype(np.float32)


def stem_audio(
    rng: np.random.Generator, ev: dict[str, list[Event]], stem: str, seconds: float, sr: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """The stem track (before normalization) and how it was made."""
    from scipy.signal import fftconvolve

    total = round(seconds * sr)
    font = soundfonts()[int(rng.integers(len(soundfonts())))]
    target = _render(ev[stem], font, sr, total)
    ref = _peak(target)
    mix = target.copy()
    bleed_db = {}
    for other in (s for s in STEMS if s != stem):
        part = _render(ev[other], font, sr, total)
        bleed_db[other] = float(rng.uniform(-24, -12))
        mix += part * (ref / _peak(part)) * 10 ** (bleed_db[other] / 20)
    # Re-triggers: a low-passed burst some 40-90 ms after a target hit.
    retriggers = 0
    for t, _, v in ev[stem]:
        if rng.random() >= 0.2:
            continue
        n = round(0.25 * sr)
        start = round((t + rng.uniform(0.04, 0.09)) * sr)
        if start + n > total:
            continue
        decay = np.exp(-np.arange(n) / (rng.uniform(0.03, 0.08) * sr))
        burst = _lowpassed_noise(rng, n, sr, float(rng.uniform(800, 4000))) * decay
        level = ref * (v / 127) * 10 ** (rng.uniform(-16, -6) / 20)
        mix[start : start + n] += (burst * level / _peak(burst)).astype(np.float32)
        retriggers += 1
    # A room: exponentially decaying noise as impulse response.
    rt60 = float(rng.uniform(0.3, 1.2))
    ir_t = np.arange(round(rt60 * sr)) / sr
    ir = rng.standard_normal(len(ir_t)) * 10 ** (-3 * ir_t / rt60)
    wet = fftconvolve(mix, ir)[:total].astype(np.float32)
    room_db = float(rng.uniform(-20, -10))
    mix += wet * (_peak(mix) / _peak(wet)) * 10 ** (room_db / 20)
    noise_db = float(rng.uniform(-60, -45))
    mix += _lowpassed_noise(rng, total, sr, 8000.0) * _peak(mix) * 10 ** (noise_db / 20) / 0.3
    info = {
        "soundfont": font.name,
        "bleed_db": bleed_db,
        "room_rt60_s": rt60,
        "room_db": room_db,
        "noise_db": noise_db,
        "retriggers": retriggers,
    }
    return mix, info


def render_songs(
    stem: str,
    n_songs: int,
    seconds: float,
    out_dir: str | Path,
    seed: int,
    *,
    defaults: DrumDefaults | None = None,
) -> list[dict[str, Any]]:
    """Write `n_songs` songs for `stem` under out_dir/{audio,raw,edited}; one summary per
    song (also saved as out_dir/songs.json). Song i of a seed is the same whatever
    n_songs is, and seeds share no songs."""
    import soundfile as sf

    check_stem(stem)
    defaults = defaults or load_defaults()
    sr = defaults.sample_rate
    out = Path(out_dir)
    for sub in ("audio", "raw", "edited"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    songs = []
    for i in range(n_songs):
        rng = np.random.default_rng([seed, i])
        name = f"{stem}-s{seed}-{i:03d}"
        tempo, ev = groove(rng, seconds)
        mix, info = stem_audio(rng, ev, stem, seconds, sr)
        wav = out / "audio" / f"{name}.wav"
        sf.write(wav, 0.891 * mix / _peak(mix), sr, subtype="PCM_16")
        hits = np.array(sorted(t for t, _, _ in ev[stem]))
        hitmidi.write_hits(
            out / "edited" / f"{name}.mid",
            hits,
            [v for _, _, v in sorted(ev[stem])],
            stem,
        )
        # The raw MIDI is what `extract` would propose on this file.
        audio = load_stem(wav, sr)
        detected = detect_hits(
            audio, sr, defaults.for_stem(stem), defaults.hop_length, defaults.n_fft
        )
        amp = hit_features(audio, sr, detected, stem, FeatureConfig())[:, 1]
        hitmidi.write_hits(
            out / "raw" / f"{name}.mid", detected, hitmidi.amp_to_velocity(amp), stem
        )
        songs.append(
            {"song": name, "stem": stem, "tempo_bpm": tempo, "seconds": seconds,
             "hits": len(hits), "detections": len(detected), **info}
        )  # fmt: skip
        log.info("%s: %d hits, %d detections", name, len(hits), len(detected))
    (out / "songs.json").write_text(json.dumps(songs, indent=2) + "\n")
    return songs

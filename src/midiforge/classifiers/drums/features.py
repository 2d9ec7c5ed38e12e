"""Seven numbers per proposed drum hit, the only thing the keep/remove filter sees.

Every feature is measured on the stem as the filter is given it: mono float audio,
peak-normalized to 1.0 per file by `detect.load_stem`, so levels read as dB below the
stem's loudest sample whatever the export gain was. With `t` the hit's onset time:

- **Str**: onset strength at the hit: the largest value of
  `librosa.onset.onset_strength(y, sr, hop_length=hop_length, n_fft=n_fft)` (log-mel
  spectral flux, librosa's defaults otherwise; 23 ms frames every 5.8 ms by default)
  within one frame either side of `t`, so an onset written one frame early or late
  reads the same peak. Unitless, >= 0.
- **Amp**: the peak absolute sample value in the analysis window `[t - pre_ms,
  t + window_ms)`. Linear, 0..1 (1 = the stem's loudest sample).
- **BodyE**: energy in the stem's low "body" band, in dB: the analysis window is
  Hann-weighted, zero-padded to the next power of two and transformed by an FFT; the
  band's share of the window's mean-square value (Parseval, so a full-scale sine in the
  band reads -3 dB and silence reads -120 dB, the floor) is taken as 10·log10.
- **BrillE**: the same for the stem's high "brilliance" band (beater click, snare wires,
  stick attack, cymbal sizzle).
- **Total**: the same over the whole spectrum (0 Hz to sr/2), in dB.
- **GeoMean**: the geometric mean sqrt(BodyE·BrillE) of the two linear band energies,
  written in dB, which makes it the mean of the two dB values: a real hit of the stem's
  own piece excites both bands, bleed from another piece mostly one.
- **SustainMs**: how long the hit stands out above what sounded before it, in ms: from
  `t` until the RMS envelope (`env_frame_ms` frames every `env_hop_ms`) first falls to
  `base + (peak - base)·10^(-floor_db/20)`, where `peak` is the envelope's maximum in the
  analysis window and `base` its minimum in the `base_ms` before the window; or until
  the envelope climbs above `peak` again (a louder event has begun), if that comes
  first; capped at `max_sustain_ms`. In silence (base 0) with the default 20 dB floor an
  exponential decay of time constant tau from an instant attack measures
  tau·ln 10 + env_frame_ms/2 (≈ 2.3·tau + 5 ms): a centred frame peaks half a frame
  after the attack, where the decay has already begun. Measuring from the
  base matters on real stems: a weak bleed hit over a cymbal's tail never falls 20 dB
  below its own peak, but it sinks back into the tail within milliseconds.

Band edges in Hz (body; brilliance), clipped to sr/2:

| stem    | body        | brilliance    |
|---------|-------------|---------------|
| kick    | 40-150      | 1,500-5,000   |
| snare   | 150-400     | 3,000-9,000   |
| toms    | 60-400      | 1,500-5,000   |
| hihat   | 300-2,000   | 6,000-10,000  |
| cymbals | 300-3,000   | 5,000-10,000  |

The window parameters live in `FeatureConfig`, which a trained model saves in its
`config.yaml`: features at inference must be computed as they were at training.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from midiforge.classifiers.drums.kit import check_stem
from midiforge.config import ConfigError

FEATURES = ("Str", "Amp", "BodyE", "BrillE", "Total", "GeoMean", "SustainMs")

BANDS_HZ: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "kick": ((40.0, 150.0), (1500.0, 5000.0)),
    "snare": ((150.0, 400.0), (3000.0, 9000.0)),
    "toms": ((60.0, 400.0), (1500.0, 5000.0)),
    "hihat": ((300.0, 2000.0), (6000.0, 10000.0)),
    "cymbals": ((300.0, 3000.0), (5000.0, 10000.0)),
}

SILENCE_DB = -120.0  # energies are floored here so silence is a number, not -inf


@dataclass
class FeatureConfig:
    # 10 ms before the onset: a detected onset can sit a frame after the attack starts.
    pre_ms: float = 10.0
    window_ms: float = 60.0  # the attack and early body of a hit, short of the next 16th
    # Onset strength as detection computes it: 512-sample frames place a drum attack
    # within ~8 ms, librosa's 2048 ~20 ms late (measured on rendered snare stems).
    hop_length: int = 128
    n_fft: int = 512
    env_frame_ms: float = 10.0  # RMS envelope frame: two periods of an 200 Hz body
    env_hop_ms: float = 1.0
    floor_db: float = 20.0  # SustainMs ends where the hit's rise has decayed this far
    base_ms: float = 30.0  # the level before the hit is the envelope minimum over this
    max_sustain_ms: float = 1000.0

    def validate_config(self) -> None:
        if self.pre_ms < 0 or self.window_ms <= 0:
            raise ConfigError("features.pre_ms must be >= 0 and window_ms > 0")
        if self.hop_length < 1 or self.n_fft < self.hop_length:
            raise ConfigError("features.hop_length must be >= 1 and n_fft >= hop_length")
        if self.env_frame_ms <= 0 or self.env_hop_ms <= 0:
            raise ConfigError("features.env_frame_ms and env_hop_ms must be > 0")
        if self.floor_db <= 0 or self.max_sustain_ms <= 0 or self.base_ms <= 0:
            raise ConfigError("features.floor_db, base_ms and max_sustain_ms must be > 0")


def _db(power: np.ndarray | float) -> np.ndarray:
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), SILENCE_DB)


def _rms_envelope(audio: np.ndarray, frame: int, hop: int) -> np.ndarray:
    """RMS of `frame` samples centred on every `hop`-th sample (zero outside the audio)."""
    sq = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    centres = np.arange(0, len(audio), hop)
    lo = np.clip(centres - frame // 2, 0, len(audio))
    hi = np.clip(centres - frame // 2 + frame, 0, len(audio))
    return np.sqrt(np.maximum(sq[hi] - sq[lo], 0.0) / frame)


def onset_strength(audio: np.ndarray, sr: int, hop_length: int, n_fft: int) -> np.ndarray:
    """librosa's onset-strength envelope, one value per `hop_length` samples."""
    import librosa

    return librosa.onset.onset_strength(y=audio, sr=sr, hop_length=hop_length, n_fft=n_fft)


def _band_energies(
    window: np.ndarray, sr: int, bands: tuple[tuple[float, float], ...]
) -> list[float]:
    """Mean-square value of the Hann-weighted window inside each band, then the whole."""
    w = np.hanning(len(window))
    n_fft = 1 << max(1, int(np.ceil(np.log2(len(window)))))
    power = np.abs(np.fft.rfft(window * w, n_fft)) ** 2
    # Parseval: sum over the one-sided spectrum (inner bins twice) / n_fft = sum of
    # squares; dividing by sum(w^2) makes that the window-weighted mean square.
    power[1:-1] *= 2.0
    power /= n_fft * max(float(np.sum(w**2)), 1e-12)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    out = [float(power[(freqs >= lo) & (freqs < min(hi, sr / 2.0))].sum()) for lo, hi in bands]
    return [*out, float(power.sum())]


def hit_features(
    audio: np.ndarray, sr: int, onsets_s: np.ndarray, stem: str, cfg: FeatureConfig
) -> np.ndarray:
    """(N, 7) float64 features, columns in FEATURES order, one row per onset."""
    check_stem(stem)
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    onsets_s = np.asarray(onsets_s, dtype=np.float64).reshape(-1)
    out = np.zeros((len(onsets_s), len(FEATURES)), dtype=np.float64)
    if len(onsets_s) == 0 or len(audio) == 0:
        return out
    body, brill = BANDS_HZ[stem]
    strength = onset_strength(audio, sr, cfg.hop_length, cfg.n_fft)
    env_hop = max(1, round(cfg.env_hop_ms * sr / 1000.0))
    env = _rms_envelope(audio, max(1, round(cfg.env_frame_ms * sr / 1000.0)), env_hop)
    pre = round(cfg.pre_ms * sr / 1000.0)
    length = max(2, round(cfg.window_ms * sr / 1000.0))
    for i, t in enumerate(onsets_s):
        start = max(0, round(t * sr) - pre)
        stop = min(len(audio), round(t * sr) + length)
        window = audio[start:stop] if stop > start else np.zeros(2, np.float32)
        f = round(t * sr / cfg.hop_length)
        near = strength[max(0, f - 1) : min(len(strength), f + 2)]
        e_body, e_brill, e_total = _band_energies(window, sr, (body, brill))
        body_db, brill_db = float(_db(e_body)), float(_db(e_brill))
        out[i, :6] = (
            float(near.max()) if near.size else 0.0,
            float(np.abs(window).max()),
            body_db,
            brill_db,
            float(_db(e_total)),
            (body_db + brill_db) / 2.0,
        )
        out[i, 6] = _sustain_ms(env, t, start=start, stop=stop, hop=env_hop, sr=sr, cfg=cfg)
    return out


def _sustain_ms(
    env: np.ndarray, t: float, *, start: int, stop: int, hop: int, sr: int, cfg: FeatureConfig
) -> float:
    """SustainMs of the hit at `t` whose analysis window is samples [start, stop)."""
    floor = 10.0 ** (-cfg.floor_db / 20.0)
    max_frames = int(np.ceil(cfg.max_sustain_ms / 1000.0 * sr / hop))
    a, b = start // hop, max(start // hop + 1, -(-stop // hop))
    if a >= len(env):
        return 0.0
    peak_at = a + int(np.argmax(env[a:b]))
    peak = env[peak_at]
    base_frames = max(1, round(cfg.base_ms * sr / 1000.0 / hop))
    before = env[max(0, a - base_frames) : a]
    base = min(float(before.min()) if before.size else 0.0, peak)
    if peak <= base:
        return 0.0
    tail = env[peak_at : min(len(env), peak_at + max_frames)]
    ended = np.nonzero((tail < base + (peak - base) * floor) | (tail > peak))[0]
    if ended.size:
        end = peak_at + ended[0]
    elif peak_at + max_frames >= len(env):
        end = len(env)  # the audio ends while the hit still rings: it lasts to the end
    else:
        return cfg.max_sustain_ms
    end_s = end * hop / sr
    return float(np.clip((end_s - t) * 1000.0, 0.0, cfg.max_sustain_ms))

"""Propose drum hits on a stem, and the fixed-threshold decision used when no model is given.

Detection is `librosa.onset.onset_detect` on the onset-strength envelope, without
backtracking (a hit's time is the flux peak, which matches a producer's grid better than
the energy minimum before it), with per-stem `delta` / `wait` and an absolute floor
`onset_threshold` on the envelope normalized to 0..1 over the file. It is tuned to
propose too many hits rather than too few: a false hit costs the producer a click, a
missed one a re-listen.

The fallback keeps a hit unless it is clearly weak (GeoMean below `geomean_db`) or
clearly short (SustainMs below `min_sustain_ms`); both defaults sit well below the real
hits of each stem, so it mostly removes bleed and double triggers on decays and errs
towards keeping.

Per-stem values live in `defaults.yaml` beside this module; a user YAML with the same
shape overrides any of them (`load_defaults(path)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from midiforge import audio as audiomod
from midiforge import config as cfgmod
from midiforge.classifiers.drums.features import FEATURES, onset_strength
from midiforge.classifiers.drums.kit import STEMS, check_stem
from midiforge.config import ConfigError

DEFAULTS_YAML = Path(__file__).with_name("defaults.yaml")


@dataclass
class StemThresholds:
    # Fallback decision.
    geomean_db: float = -50.0  # GeoMean (dB) below this: removed as too weak
    min_sustain_ms: float = 10.0  # SustainMs below this: removed as too short
    # Onset detection (librosa peak picking on the 0..1-normalized onset strength).
    onset_threshold: float = 0.02  # envelope floor a peak must reach
    delta: float = 0.05  # how far above the local mean a peak must rise
    wait: int = 3  # frames after a peak before the next may be picked

    def validate_config(self) -> None:
        if not 0.0 <= self.onset_threshold < 1.0:
            raise ConfigError("onset_threshold must lie in [0, 1)")
        if self.delta < 0 or self.wait < 0:
            raise ConfigError("delta and wait must be >= 0")
        if self.min_sustain_ms < 0:
            raise ConfigError("min_sustain_ms must be >= 0")


@dataclass
class DrumDefaults:
    """Use `load_defaults()`: the per-stem values come from defaults.yaml, the values in
    code are only the shape."""

    sample_rate: int = audiomod.TRANSCRIPTION_SR  # stems are analysed at this rate
    # Onset-strength frames: 512 samples (23 ms) every 128 (5.8 ms). librosa's default
    # 2048 / 512 put rendered snare hits a median 20 ms late, so a 30 ms match missed
    # a quarter of them; these put them 8 ms late.
    hop_length: int = 128
    n_fft: int = 512
    kick: StemThresholds = field(default_factory=StemThresholds)
    snare: StemThresholds = field(default_factory=StemThresholds)
    toms: StemThresholds = field(default_factory=StemThresholds)
    hihat: StemThresholds = field(default_factory=StemThresholds)
    cymbals: StemThresholds = field(default_factory=StemThresholds)

    def validate_config(self) -> None:
        if self.sample_rate < 8000 or self.hop_length < 1 or self.n_fft < self.hop_length:
            raise ConfigError("sample_rate must be >= 8000, hop_length >= 1, n_fft >= hop_length")

    def for_stem(self, stem: str) -> StemThresholds:
        return getattr(self, check_stem(stem))


def load_defaults(path: str | Path | None = None) -> DrumDefaults:
    """The shipped defaults.yaml, with a user YAML (same keys, any subset) on top."""
    return cfgmod.load(DrumDefaults, path, defaults=cfgmod.read_yaml(DEFAULTS_YAML))


def load_stem(path: str | Path, sr: int) -> np.ndarray:
    """A stem file as float32 mono at `sr`, peak-normalized to 1.0 so every level feature
    reads relative to the stem's loudest sample."""
    try:
        decoded = audiomod.decode_checked(Path(path).read_bytes(), _LIMITS)
    except audiomod.AudioError as e:
        raise audiomod.AudioError(e.reason, f"{path}: {e.detail}") from None
    return normalize_peak(audiomod.to_mono(*decoded, target_sr=sr))


_LIMITS = audiomod.AudioLimits(min_seconds=0.5, silence_dbfs=-80.0)


def normalize_peak(x: np.ndarray) -> np.ndarray:
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    return (x / peak).astype(np.float32) if peak > 0 else x.astype(np.float32)


def detect_hits(
    audio: np.ndarray, sr: int, thresholds: StemThresholds, hop_length: int = 128, n_fft: int = 512
) -> np.ndarray:
    """Proposed hit times in seconds, ascending."""
    import librosa

    env = onset_strength(audio, sr, hop_length, n_fft)
    if env.size == 0 or float(env.max() - env.min()) <= 0:
        return np.zeros(0)
    frames = librosa.onset.onset_detect(
        onset_envelope=env,
        sr=sr,
        hop_length=hop_length,
        backtrack=False,
        units="frames",
        delta=thresholds.delta,
        wait=thresholds.wait,
    )
    norm = (env - env.min()) / (env.max() - env.min())  # as onset_detect normalizes
    frames = frames[norm[frames] >= thresholds.onset_threshold]
    return librosa.frames_to_time(frames, sr=sr, hop_length=hop_length).astype(np.float64)


def fallback_keep(features: np.ndarray, thresholds: StemThresholds) -> np.ndarray:
    """True where the fixed thresholds keep a hit; `features` in FEATURES column order."""
    features = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    geomean = features[:, FEATURES.index("GeoMean")]
    sustain = features[:, FEATURES.index("SustainMs")]
    return (geomean >= thresholds.geomean_db) & (sustain >= thresholds.min_sustain_ms)


__all__ = [
    "STEMS",
    "DrumDefaults",
    "StemThresholds",
    "detect_hits",
    "fallback_keep",
    "load_defaults",
    "load_stem",
]

"""The style classifier's features: one log-mel definition for training, evaluation,
`midiforge style predict` and Serve, so a model never sees features computed differently
from those it learned on.

The log-mel is in dB against a fixed reference (1.0), floored and scaled by constants:
no per-dataset statistics exist that a model folder would have to carry. Loudness
differences are left in on purpose and handled by random gain at training time and by
the model's input BatchNorm. Clips are fixed-length windows; a recording's prediction is
the mean of its clips' probabilities.

The handcrafted features (tempo, spectral centroid, onset density) feed an optional
logistic regression (`ensemble`); they are computed on a whole recording, not per clip,
since tempo needs more than a few seconds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from midiforge.config import ConfigError

HAND_FEATURES = ("tempo_bpm", "centroid_hz_mean", "centroid_hz_std", "onsets_per_s")


@dataclass
class MelConfig:
    sample_rate: int = 22_050  # the library's mono rate (audio.TRANSCRIPTION_SR)
    n_mels: int = 64
    n_fft: int = 2048  # 93 ms: enough resolution to tell a fiddle's double stop apart
    hop_length: int = 512  # 23 ms frames
    fmin: float = 30.0
    fmax: float = 11_025.0  # Nyquist at 22,050 Hz
    clip_s: float = 5.0  # a few bars at any of the corpus tempi
    clip_hop_s: float = 2.5  # clips overlap by half
    floor_db: float = -80.0  # power below this is silence (a render's quietest bins)
    scale_db: float = 40.0  # dB per unit of the normalised feature: values lie in about [-2, 1]

    def validate_config(self) -> None:
        if self.sample_rate < 8000 or self.n_mels < 1 or self.n_fft < 16 or self.hop_length < 1:
            raise ConfigError("mel: sample_rate >= 8000, n_mels >= 1, n_fft >= 16, hop >= 1")
        if not 0 <= self.fmin < self.fmax <= self.sample_rate / 2:
            raise ConfigError(f"mel: need 0 <= fmin < fmax <= {self.sample_rate / 2:g} Hz")
        if self.clip_s * self.sample_rate < self.n_fft or self.clip_hop_s <= 0:
            raise ConfigError("mel: clip_s must hold one FFT window and clip_hop_s be > 0")
        if self.scale_db <= 0:
            raise ConfigError("mel: scale_db must be > 0")

    @property
    def clip_samples(self) -> int:
        return round(self.clip_s * self.sample_rate)

    @property
    def hop_samples(self) -> int:
        return max(1, round(self.clip_hop_s * self.sample_rate))

    @property
    def frames(self) -> int:
        """Frames per clip (librosa's centred STFT)."""
        return 1 + self.clip_samples // self.hop_length

    @property
    def floor(self) -> float:
        """The normalised value of silence: what masks and the gain floor use."""
        return self.floor_db / self.scale_db


def clips(audio: np.ndarray, sr: int, clip_s: float, hop_s: float) -> np.ndarray:
    """Mono audio -> (n_clips, clip_samples) windows every `hop_s`.

    Audio shorter than one clip is zero-padded to one clip; otherwise one more clip ends
    at the last sample, so the tail is heard whatever the hop. `sr` turns seconds into
    samples; resampling is the caller's job.
    """
    if audio.ndim != 1:
        raise ValueError(f"clips wants mono audio, got shape {audio.shape}")
    size, hop = round(clip_s * sr), max(1, round(hop_s * sr))
    if audio.size <= size:
        return np.pad(audio, (0, size - audio.size))[None, :].astype(np.float32)
    starts = list(range(0, audio.size - size + 1, hop))
    if starts[-1] + size < audio.size:
        starts.append(audio.size - size)
    return np.stack([audio[s : s + size] for s in starts]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)


def log_mel(y: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """(..., samples) -> (..., n_mels, frames) float32, normalised as `MelConfig` says."""
    import librosa

    spec = np.abs(librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length)) ** 2
    mel = _mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax) @ spec
    db = 10.0 * np.log10(np.maximum(mel, 10.0 ** (cfg.floor_db / 10.0)))
    return (db / cfg.scale_db).astype(np.float32)


def mel_clips(audio: np.ndarray, cfg: MelConfig) -> np.ndarray:
    """Mono audio at `cfg.sample_rate` -> (n_clips, 1, n_mels, frames): the model's input."""
    windows = clips(audio, cfg.sample_rate, cfg.clip_s, cfg.clip_hop_s)
    return log_mel(windows, cfg)[:, None]


def handcrafted_features(audio: np.ndarray, sr: int) -> np.ndarray:
    """One recording -> the HAND_FEATURES vector (float64)."""
    import librosa

    seconds = max(audio.size / sr, 1e-3)
    onset_env = librosa.onset.onset_strength(y=audio, sr=sr)
    tempo = librosa.feature.tempo(onset_envelope=onset_env, sr=sr)
    onsets = librosa.onset.onset_detect(onset_envelope=onset_env, sr=sr)
    centroid = librosa.feature.spectral_centroid(y=audio, sr=sr)[0]
    return np.array(
        [float(tempo[0]), float(centroid.mean()), float(centroid.std()), len(onsets) / seconds]
    )

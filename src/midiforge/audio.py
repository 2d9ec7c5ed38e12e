"""Decode, downmix, resample and validate audio; one error type with readable reasons.

Decoding matches `librosa.load(path, sr=22050, mono=True)` step for step (libsndfile
read, channel mean, soxr_hq resampling), which is what basic-pitch's own `predict()`
does, so our transcriptions equal basic-pitch's on the same file. We decode from bytes
so inputs can come from any pyarrow filesystem.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from midiforge.errors import MidiforgeError

TRANSCRIPTION_SR = 22_050
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg")
# libsndfile's frame count for a header that leaves the length open: a FLAC written to a
# pipe (`ffmpeg ... -f flac -`) has 0 total samples in its STREAMINFO.
_OPEN_LENGTH = 2**63 - 1
_BLOCK_FRAMES = 1 << 16


class AudioError(MidiforgeError, ValueError):
    """An input that is not usable audio. `reason` is a stable code for reports."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class AudioLimits:
    min_seconds: float = 1.0  # shorter clips hold too few notes to validate
    max_seconds: float = 1200.0  # one 20-minute input must not stall a worker
    silence_dbfs: float = -60.0  # a peak below this is silence (or a dead channel)


def _has_container_signature(data: bytes) -> bool:
    """Starts like a WAV, FLAC or Ogg container, whose header a cut file can break.

    MP3 is left out on purpose: it is a bare stream of frames (a cut one decodes shorter),
    and its 11-bit frame sync turns up in random bytes often enough to mislead.
    """
    return data[:4] in (b"RIFF", b"RF64", b"fLaC", b"OggS")


def _wav_declared_bytes(data: bytes) -> tuple[int, int] | None:
    """(declared size, available size) of a RIFF/WAVE `data` chunk, if there is one."""
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RF64") or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if cid == b"data":
            # 0xFFFFFFFF marks RF64 / streaming writers: size lives elsewhere, trust libsndfile.
            return None if size == 0xFFFFFFFF else (size, len(data) - pos - 8)
        pos += 8 + size + (size & 1)
    return None


def decode(
    data: bytes, max_seconds: float | None = None, mono: bool = False
) -> tuple[np.ndarray, int]:
    """Bytes of a wav/flac/mp3/ogg file -> (float32 array (channels, frames), sample rate).

    max_seconds: refuse ("too_long") a file whose header declares more, before decoding
    it: a small compressed file can declare hours of 8-channel audio, gigabytes once
    decoded. A header that leaves the length open is decoded in blocks, refused as soon
    as it passes max_seconds. Callers check the decoded length too (an MP3's declared
    length is estimated).

    mono: (1, frames), each block's channels averaged as it is decoded (`to_mono`'s mean,
    the same floats), so the file's channels never sit in memory whole: 600 s of 192 kHz
    stereo peaks at one mono copy (0.46 GB) instead of two stereo ones (1.8 GB).
    """
    if not data:
        raise AudioError("empty", "the file has 0 bytes")
    try:
        info = sf.info(io.BytesIO(data))
    except (sf.LibsndfileError, RuntimeError) as e:
        msg = str(e).split(": ", 1)[-1]
        if _has_container_signature(data):
            raise AudioError("truncated", f"the header is incomplete or corrupt ({msg})") from None
        raise AudioError("not_audio", f"not a recognised audio format ({msg})") from None
    declared = _wav_declared_bytes(data)
    if declared and declared[1] < declared[0]:
        raise AudioError(
            "truncated", f"WAV data chunk declares {declared[0]} bytes, file holds {declared[1]}"
        )
    open_length = info.frames == _OPEN_LENGTH
    if not open_length and max_seconds is not None and info.samplerate > 0:
        what = "the header declares "
        _check_max_seconds(info.frames / info.samplerate, max_seconds, what)
        _check_samples(info.frames, info.channels, info.samplerate, max_seconds, what)
    # libsndfile's MP3 samples depend on how they are read (by up to 2.4e-7): one read of
    # the whole file, no seek, as librosa.load reads it. (MP3 tops out at 48 kHz, so its
    # channels are never the gigabytes that blocks avoid.)
    if open_length or (mono and info.channels > 1 and info.format != "MP3"):
        x = _read_blocks(data, max_seconds, mono, open_length)
    else:
        x = _read_whole(data)
        if mono and x.shape[1] > 1:
            x = _mono(x)
    if x.shape[0] == 0:
        raise AudioError("empty", f"{info.format} file with no samples")
    return np.ascontiguousarray(x.T), int(info.samplerate)


def _check_samples(frames: int, channels: int, rate: int, max_seconds: float, what: str) -> None:
    """Within the length, a rate and channel count far beyond music's can still ask for
    gigabytes (8 channels at 655 kHz): allow what max_seconds of 192 kHz stereo holds."""
    most = int(max_seconds * 192_000 * 2)
    if frames * channels > most:
        raise AudioError(
            "too_large",
            f"{what}{frames} frames x {channels} channels at {rate} Hz; at "
            f"most {most} samples (192 kHz stereo for {max_seconds:g} s) are decoded",
        )


class _Stream(sf.SoundFile):
    """A SoundFile read front to back. soundfile seeks to its own position after every
    read of a seekable file, and libsndfile cannot seek in a FLAC of open length: the
    last block then fails ("psf_fseek() failed") though it was decoded."""

    def seekable(self) -> bool:
        return False


def _read_whole(data: bytes) -> np.ndarray:
    """(frames, channels) in one read."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            return f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError("truncated", f"decoding stopped early ({e})") from None


def _mono(x: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames, 1): librosa.to_mono's mean over a (channels, frames)
    array, the same floats whether it is given a whole file or a block of one."""
    return np.mean(np.ascontiguousarray(x.T), axis=0)[:, None]


def _read_blocks(
    data: bytes, max_seconds: float | None, mono: bool, open_length: bool
) -> np.ndarray:
    """(frames, channels) decoded block by block, or (frames, 1) with `mono`. A header
    that leaves the length open is read front to back (`_Stream`) and refused as soon as
    decoding passes max_seconds, which bounds the memory before the end is known."""
    frames = 0
    try:
        with (_Stream if open_length else sf.SoundFile)(io.BytesIO(data)) as f:
            rate, channels = f.samplerate, f.channels
            size = _BLOCK_FRAMES if open_length else max(f.frames, _BLOCK_FRAMES)
            out = np.empty((size, 1 if mono else channels), np.float32)
            while True:
                block = f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)
                if mono and channels > 1:
                    block = _mono(block)
                if frames + len(block) > len(out):  # an open length, or an MP3's estimate
                    size = max(2 * len(out), frames + len(block))
                    grown = np.empty((size, out.shape[1]), np.float32)
                    grown[:frames] = out[:frames]
                    out = grown
                out[frames : frames + len(block)] = block
                frames += len(block)
                if open_length and max_seconds is not None and rate > 0:
                    _check_max_seconds(frames / rate, max_seconds, "decoding passed ")
                    _check_samples(frames, channels, rate, max_seconds, "decoding passed ")
                if len(block) < _BLOCK_FRAMES:
                    break
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioError("truncated", f"decoding stopped early ({e})") from None
    return out[:frames]


def check_finite(x: np.ndarray) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        raise AudioError("nan_or_inf", f"{int(bad.sum())} NaN or infinite samples")


def to_mono(x: np.ndarray, sr: int, target_sr: int = TRANSCRIPTION_SR) -> np.ndarray:
    """(channels, frames) at `sr` -> float32 mono at `target_sr`, as librosa.load does."""
    import librosa

    y = librosa.to_mono(x) if x.shape[0] > 1 else x[0]
    if sr != target_sr:
        y = librosa.resample(y, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq")
    return np.ascontiguousarray(y, dtype=np.float32)


def to_channels(x: np.ndarray, sr: int, target_sr: int, channels: int) -> np.ndarray:
    """(channels, frames) -> (channels, frames) at `target_sr`: Demucs wants stereo 44.1 kHz."""
    import librosa

    if x.shape[0] != channels:
        x = np.repeat(x.mean(axis=0, keepdims=True), channels, axis=0)
    if sr != target_sr:
        x = librosa.resample(x, orig_sr=sr, target_sr=target_sr, res_type="soxr_hq")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_max_seconds(seconds: float, max_seconds: float, what: str = "") -> None:
    if seconds > max_seconds:
        raise AudioError("too_long", f"{what}{seconds:.1f} s > maximum {max_seconds:g} s")


def check_content(x: np.ndarray, sr: int, limits: AudioLimits) -> None:
    seconds = x.shape[-1] / sr
    if seconds < limits.min_seconds:
        raise AudioError("too_short", f"{seconds:.2f} s < minimum {limits.min_seconds:g} s")
    _check_max_seconds(seconds, limits.max_seconds)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    peak_db = 20 * np.log10(peak) if peak > 0 else -np.inf
    if peak_db < limits.silence_dbfs:
        raise AudioError("silence", f"peak {peak_db:.1f} dBFS < {limits.silence_dbfs:g} dBFS")


def decode_checked(data: bytes, limits: AudioLimits) -> tuple[np.ndarray, int]:
    """decode() plus every content check: (channels, frames) at the file's own rate."""
    x, sr = decode(data, limits.max_seconds)
    check_finite(x)
    check_content(x, sr, limits)
    return x, sr


def load_for_transcription(data: bytes, limits: AudioLimits) -> np.ndarray:
    """Bytes -> validated float32 mono at 22,050 Hz, or AudioError with the reason."""
    return to_mono(*decode_checked(data, limits))

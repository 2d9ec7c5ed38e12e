"""Decoding and validation: every kind of bad file gets its own readable reason."""

import io

import numpy as np
import pytest
import soundfile as sf

from midiforge import audio

SR = 22_050


def wav(x: np.ndarray, sr: int = SR, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x.T if x.ndim == 2 else x, sr, subtype=subtype, format=fmt)
    return buf.getvalue()


def tone(seconds=2.0, sr=SR, channels=1):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.5 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.tile(x, (channels, 1)) if channels > 1 else x


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"this is a text file, not audio\n" * 10, "not_audio"),
        (np.random.default_rng(0).bytes(4096), "not_audio"),
        (bytes.fromhex("ffe42279") + bytes(4000), "not_audio"),  # an MPEG frame sync, then junk
        (wav(tone())[: len(wav(tone())) // 2], "truncated"),
        (wav(tone())[:30], "truncated"),
        (wav(tone(), fmt="FLAC", subtype="PCM_16")[:3000], "truncated"),
    ],
)
def test_decode_rejects_with_reason(data, reason):
    with pytest.raises(audio.AudioError) as e:
        audio.decode(data)
    assert e.value.reason == reason


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "MP3", "OGG"])
def test_formats_decode(fmt):
    subtype = {"WAV": "PCM_16", "FLAC": "PCM_16", "MP3": "MPEG_LAYER_III", "OGG": "VORBIS"}[fmt]
    x, sr = audio.decode(wav(tone(), fmt=fmt, subtype=subtype))
    assert sr == SR and x.shape[0] == 1
    assert abs(x.shape[1] - 2 * SR) < 0.1 * SR


def test_nan_silence_length_limits():
    limits = audio.AudioLimits(min_seconds=1.0, max_seconds=5.0)
    x = tone()[None]
    x[0, 100] = np.nan
    with pytest.raises(audio.AudioError, match="nan_or_inf"):
        audio.check_finite(x)
    with pytest.raises(audio.AudioError, match="silence"):
        audio.check_content(np.zeros((1, 3 * SR), np.float32), SR, limits)
    with pytest.raises(audio.AudioError, match="too_short"):
        audio.check_content(tone(0.5)[None], SR, limits)
    with pytest.raises(audio.AudioError, match="too_long"):
        audio.check_content(tone(6.0)[None], SR, limits)


def test_odd_formats_become_mono_22050():
    six = tone(2.0, sr=96_000, channels=6)
    x, sr = audio.decode(wav(six, sr=96_000))
    assert x.shape == (6, 192_000) and sr == 96_000
    y = audio.to_mono(x, sr)
    assert y.dtype == np.float32 and abs(len(y) - 2 * SR) <= 1
    spec = np.abs(np.fft.rfft(y))
    assert abs(np.fft.rfftfreq(len(y), 1 / SR)[np.argmax(spec)] - 440) < 2


def test_matches_librosa_load(tmp_path):
    import librosa

    path = tmp_path / "x.wav"
    path.write_bytes(wav(tone(3.0, sr=44_100, channels=2), sr=44_100))
    ours = audio.load_for_transcription(path.read_bytes(), audio.AudioLimits())
    theirs, _ = librosa.load(str(path), sr=SR, mono=True)
    np.testing.assert_array_equal(ours, theirs)
    # libsndfile's MP3 samples depend on how the file is read: librosa reads it whole.
    rng = np.random.default_rng(0)
    path = tmp_path / "x.mp3"
    path.write_bytes(
        wav(0.3 * rng.standard_normal((2, 3 * SR)), subtype="MPEG_LAYER_III", fmt="MP3")
    )
    theirs, _ = librosa.load(str(path), sr=None, mono=False)
    for mono in (False, True):
        ours, _ = audio.decode(path.read_bytes(), mono=mono)
        np.testing.assert_array_equal(
            ours, np.mean(theirs, axis=0, keepdims=True) if mono else theirs
        )


def _flac_declaring(total_samples: int, seconds=2.0, sr=8_000) -> bytes:
    """A short silent FLAC whose STREAMINFO claims `total_samples` frames (36-bit field)."""
    return _declare(
        wav(np.zeros((8, int(seconds * sr)), np.float32), sr, fmt="FLAC"), total_samples
    )


def _declare(flac: bytes, total_samples: int) -> bytes:
    data = bytearray(flac)
    # "fLaC", a 4-byte block header, then STREAMINFO: the count is its bits 108..143.
    data[21] = (data[21] & 0xF0) | (total_samples >> 32)
    data[22:26] = (total_samples & 0xFFFFFFFF).to_bytes(4, "big")
    return bytes(data)


def test_a_flac_of_open_length_decodes_in_full():
    """A FLAC written to a pipe has 0 total samples in its header, which libsndfile reads
    as 2**63 - 1 frames: it used to be refused as too long, and soundfile's own reader
    failed on its last block."""
    x = tone(3.3, channels=2)  # over one decoding block, ending in a partial one
    full = wav(x, fmt="FLAC")
    piped = _declare(full, 0)
    assert sf.info(io.BytesIO(piped)).frames == 2**63 - 1
    got, sr = audio.decode(piped, max_seconds=600)
    want, _ = audio.decode(full, max_seconds=600)
    assert sr == SR and got.shape == x.shape and np.array_equal(got, want)
    assert got.shape == audio.decode_checked(piped, audio.AudioLimits())[0].shape
    # The limit still holds: decoding stops once it is passed.
    with pytest.raises(audio.AudioError, match=r"too_long: decoding passed 3\.0 s > maximum 2 s"):
        audio.decode(piped, max_seconds=2.0)


@pytest.mark.parametrize(("fmt", "channels"), [("WAV", 2), ("FLAC", 6), ("MP3", 2), ("OGG", 2)])
def test_mono_decoding_averages_each_block_to_the_same_floats(fmt, channels):
    rng = np.random.default_rng(channels)
    x = (0.3 * rng.standard_normal((channels, int(3.3 * SR)))).astype(np.float32)
    subtype = {"WAV": "FLOAT", "FLAC": "PCM_24", "MP3": "MPEG_LAYER_III", "OGG": "VORBIS"}[fmt]
    data = wav(x, subtype=subtype, fmt=fmt)  # 3.3 s: two decoding blocks and a part
    whole, sr = audio.decode(data)
    got, got_sr = audio.decode(data, mono=True)
    assert got_sr == sr and got.shape == (1, whole.shape[1]) and got.flags.c_contiguous
    assert np.array_equal(got[0], np.mean(whole, axis=0))  # librosa.to_mono's mean
    assert np.array_equal(audio.to_mono(got, sr), audio.to_mono(whole, sr))
    # A mono file and a FLAC of open length take the same path to the same samples.
    assert np.array_equal(audio.decode(wav(x[0]), mono=True)[0], audio.decode(wav(x[0]))[0])
    if fmt == "FLAC":
        piped = _declare(data, 0)
        assert np.array_equal(audio.decode(piped, 600, mono=True)[0], got)


def test_mono_decoding_never_holds_the_channels_whole():
    import tracemalloc

    x = (0.1 * np.random.default_rng(0).standard_normal((4, 30 * 48_000))).astype(np.float32)
    data = wav(x, sr=48_000, subtype="FLOAT")  # 23 MB of samples, 5.8 MB once mono

    def peak(**kw) -> int:
        tracemalloc.start()
        try:
            audio.decode(data, **kw)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    assert peak() >= 2 * x.nbytes  # read as (frames, channels), then transposed
    # The mono samples, and a block of the file's channels twice (read, then transposed).
    assert peak(mono=True) < x[0].nbytes + 3 * audio._BLOCK_FRAMES * x.shape[0] * 4


def test_declared_length_is_refused_before_decoding():
    # 2**35 frames of 8 channels would be 1 TiB of float32 once decoded.
    bomb = _flac_declaring(2**35)
    assert len(bomb) < 10_000 and sf.info(io.BytesIO(bomb)).frames == 2**35
    with pytest.raises(audio.AudioError, match="too_long: the header declares"):
        audio.decode(bomb, max_seconds=600)
    with pytest.raises(audio.AudioError, match="too_long: the header declares"):
        audio.decode_checked(bomb, audio.AudioLimits())
    # An honest header under the limit decodes as before.
    x, sr = audio.decode(_flac_declaring(16_000), max_seconds=600)
    assert x.shape == (8, 16_000) and sr == 8_000


def test_a_rate_and_channels_beyond_music_are_refused_before_decoding():
    # 1 s of 8 channels at 384 kHz: 3.1M samples, over the 384k of 192 kHz stereo for 1 s.
    x = np.zeros((8, 384_000), np.float32)
    data = wav(x, sr=384_000, fmt="FLAC")
    with pytest.raises(audio.AudioError, match="too_large: the header declares 384000 frames x 8"):
        audio.decode(data, max_seconds=1.0)
    assert audio.decode(data, max_seconds=8.0)[0].shape == (8, 384_000)
    assert audio.decode(wav(tone(2.0, channels=2)), max_seconds=2.0)[0].shape == (2, 2 * SR)

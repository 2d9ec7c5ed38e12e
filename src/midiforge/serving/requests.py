"""What a request means, without Ray or HTTP: upload -> audio, notes -> response body.

Every failure is a RequestError carrying the HTTP status and a stable error code, so the
service answers `{"error": code, "detail": text}` and never crashes on a bad upload.
"""

from __future__ import annotations

import numpy as np

from midiforge import audio as audiomod
from midiforge.midi_write import notes_midi_bytes
from midiforge.serving.settings import ServeSettings


class RequestError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


# decode reasons -> (HTTP status, error code)
_AUDIO_STATUS = {
    "empty": (400, "empty_upload"),
    "not_audio": (415, "unsupported_media_type"),
    "truncated": (422, "corrupt_audio"),
    "nan_or_inf": (422, "invalid_samples"),
    "too_long": (422, "audio_too_long"),
    "too_large": (413, "audio_too_large"),
}
# basic-pitch reads one frame per 256-sample hop at 22,050 Hz and its note decoding fails
# on a clip without a whole frame (under ~12 ms). 0.1 s (8 frames) stays clear of that
# after any resampling's rounding, and nothing shorter holds a note worth transcribing.
MIN_AUDIO_SECONDS = 0.1


def check_upload_size(n_bytes: int, settings: ServeSettings) -> None:
    if n_bytes > settings.max_upload_bytes:
        raise RequestError(
            413, "upload_too_large", f"{n_bytes} bytes > limit {settings.max_upload_bytes}"
        )


def read_upload(data: bytes, settings: ServeSettings) -> tuple[np.ndarray, float]:
    """Upload bytes -> (float32 mono at 22,050 Hz, duration in seconds)."""
    check_upload_size(len(data), settings)
    try:
        x, sr = audiomod.decode(data, settings.max_audio_seconds, mono=True)
        audiomod.check_finite(x)
        seconds = x.shape[-1] / sr
        # Again on the decoded length: an MP3's header only estimates it.
        if seconds > settings.max_audio_seconds:
            raise RequestError(
                422, "audio_too_long", f"{seconds:.1f} s > limit {settings.max_audio_seconds:g} s"
            )
        if seconds < MIN_AUDIO_SECONDS:
            raise RequestError(
                422, "audio_too_short", f"{seconds:.4f} s < minimum {MIN_AUDIO_SECONDS:g} s"
            )
        return audiomod.to_mono(x, sr), seconds
    except audiomod.AudioError as e:
        status, code = _AUDIO_STATUS.get(e.reason, (422, e.reason))
        raise RequestError(status, code, e.detail) from None
    except MemoryError:
        # A header within the limits can still decode or resample to more than this
        # replica holds (many channels, a huge sample rate): refuse the file, stay up.
        raise RequestError(
            413, "audio_too_large", "decoding this file needs more memory than is available"
        ) from None


def notes_json(model: str, seconds: float, notes: np.ndarray) -> dict:
    return {
        "model": model,
        "duration_s": round(seconds, 4),
        "notes": [
            {
                "pitch": int(p),
                "start": round(float(s), 4),
                "end": round(float(e), 4),
                "velocity": int(v),
            }
            for s, e, p, v in np.asarray(notes).reshape(-1, 4)
        ],
    }


def notes_midi(notes: np.ndarray) -> bytes:
    return notes_midi_bytes(notes)

"""Training targets for one model window, as basic-pitch defines them.

A window is AUDIO_N_SAMPLES samples starting at `start_s`; output frame j is centred on
sample 256*j of the window (the CQT pads 128 samples each side), so it stands for time
start_s + j * 256 / 22,050. For each note (start, end, pitch):
- note:    1 on every frame from the onset frame up to (not including) the offset frame,
           at least one frame; key index pitch - 21 (88 keys from A0).
- onset:   1 on the onset frame only.
- contour: 1 on contour bin 3 * (pitch - 21), the bin centred on the note's frequency
           (3 bins per semitone from 27.5 Hz), on the note's frames.
Frames are binary, like basic-pitch's training data; label smoothing lives in the loss.
"""

from __future__ import annotations

import numpy as np

from midiforge.transcription import constants as bp

N_KEYS = 88
LOWEST_PITCH = 21
N_CONTOUR = 3 * N_KEYS
FRAME_S = bp.FFT_HOP / bp.AUDIO_SAMPLE_RATE
SHAPES = {"note": (bp.FRAMES_PER_WINDOW, N_KEYS), "onset": (bp.FRAMES_PER_WINDOW, N_KEYS),
          "contour": (bp.FRAMES_PER_WINDOW, N_CONTOUR)}  # fmt: skip


def window_targets(
    notes: np.ndarray, start_s: float, n_frames: int = bp.FRAMES_PER_WINDOW
) -> dict[str, np.ndarray]:
    """(N, 4) notes (start_s, end_s, pitch, velocity) -> uint8 note/onset/contour frames."""
    note = np.zeros((n_frames, N_KEYS), np.uint8)
    onset = np.zeros((n_frames, N_KEYS), np.uint8)
    contour = np.zeros((n_frames, N_CONTOUR), np.uint8)
    notes = np.asarray(notes, dtype=np.float64).reshape(-1, 4)
    for s, e, p, _ in notes:
        key = round(p) - LOWEST_PITCH
        if not 0 <= key < N_KEYS:
            continue
        on = round((s - start_s) / FRAME_S)
        off = max(on + 1, round((e - start_s) / FRAME_S))
        if off <= 0 or on >= n_frames:
            continue
        lo, hi = max(0, on), min(n_frames, off)
        note[lo:hi, key] = 1
        contour[lo:hi, 3 * key] = 1
        if on >= 0:
            onset[on, key] = 1
    return {"note": note, "onset": onset, "contour": contour}


def pack(frames: np.ndarray) -> bytes:
    """Binary frames -> bytes (one bit per cell); `unpack` with the target's shape."""
    return np.packbits(frames.astype(bool), axis=None).tobytes()


def unpack(data: bytes, shape: tuple[int, int]) -> np.ndarray:
    bits = np.unpackbits(np.frombuffer(data, np.uint8), count=shape[0] * shape[1])
    return bits.reshape(shape)

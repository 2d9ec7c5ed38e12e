"""basic-pitch's polyphonic note decoding, ported from `basic_pitch.note_creation` (0.4.0,
Apache-2.0, Spotify AB) step for step.

Why a port: importing `basic_pitch.note_creation` pulls in mir_eval, librosa, resampy
(numba) and scipy.stats for functions this decoding never calls, ~3 s of CPU in every
Ray actor and Serve replica that decodes notes. `tests/test_note_events.py` checks that
the events equal basic-pitch's own function on real model outputs and random ones, with
every option.

Unlike the original, the caller's arrays are never modified.
"""

from __future__ import annotations

import numpy as np

from midiforge.transcription import constants as bp

MIDI_OFFSET = 21  # output bin 0 is MIDI 21 (A0)
MAX_FREQ_IDX = 87  # the last of the 88 bins


def hz_to_midi(hz: float) -> float:
    return 12 * (np.log2(hz) - np.log2(440.0)) + 69  # as librosa.hz_to_midi


def model_frames_to_time(n_frames: int) -> np.ndarray:
    """Start time (s) of each unwrapped output frame, with basic-pitch's window offset."""
    original_times = np.arange(n_frames) * bp.FFT_HOP / bp.AUDIO_SAMPLE_RATE
    window_numbers = np.floor(np.arange(n_frames) / bp.ANNOT_N_FRAMES)
    # basic-pitch's own constant (+0.0018 s "magic number, needed to align properly").
    window_offset = (bp.FFT_HOP / bp.AUDIO_SAMPLE_RATE) * (
        bp.ANNOT_N_FRAMES - (bp.AUDIO_N_SAMPLES / bp.FFT_HOP)
    ) + 0.0018
    return original_times - (window_offset * window_numbers)


def _constrain_frequency(onsets, frames, max_freq, min_freq):
    if max_freq is not None:
        hi = int(np.round(hz_to_midi(max_freq) - MIDI_OFFSET))
        onsets[:, hi:] = 0
        frames[:, hi:] = 0
    if min_freq is not None:
        lo = int(np.round(hz_to_midi(min_freq) - MIDI_OFFSET))
        onsets[:, :lo] = 0
        frames[:, :lo] = 0
    return onsets, frames


def _inferred_onsets(onsets: np.ndarray, frames: np.ndarray, n_diff: int = 2) -> np.ndarray:
    """Onsets, raised where frame activations jump (rescaled to the onsets' maximum)."""
    frame_diff = None
    for n in range(1, n_diff + 1):
        frames_appended = np.concatenate([np.zeros((n, frames.shape[1])), frames])
        diff = frames_appended[n:, :] - frames_appended[:-n, :]
        # np.minimum pairwise is theirs np.min(stack, axis=0): the same reduction, no stack
        frame_diff = diff if frame_diff is None else np.minimum(frame_diff, diff)
    frame_diff[frame_diff < 0] = 0
    frame_diff[:n_diff, :] = 0
    with np.errstate(divide="ignore", invalid="ignore"):  # all-zero diffs: NaN, as theirs
        frame_diff = np.max(onsets) * frame_diff / np.max(frame_diff)
    return np.maximum(onsets, frame_diff)


def _local_maxima(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices of strict maxima along axis 0, first and last rows excluded, like
    scipy.signal.argrelmax(x, axis=0)."""
    peak = np.zeros(x.shape, dtype=bool)
    peak[1:-1] = (x[1:-1] > x[:-2]) & (x[1:-1] > x[2:])
    return np.nonzero(peak)


def output_to_notes_polyphonic(
    frames: np.ndarray,
    onsets: np.ndarray,
    *,
    onset_thresh: float,
    frame_thresh: float,
    min_note_len: int,
    infer_onsets: bool,
    max_freq: float | None,
    min_freq: float | None,
    melodia_trick: bool = True,
    energy_tol: int = 11,
) -> list[tuple[int, int, int, float]]:
    """(start_frame, end_frame, midi_pitch, amplitude) events, as basic-pitch decodes them."""
    onsets, frames = _constrain_frequency(onsets.copy(), frames.copy(), max_freq, min_freq)
    if infer_onsets:
        onsets = _inferred_onsets(onsets, frames)

    peak_thresh_mat = np.zeros(onsets.shape)
    peaks = _local_maxima(onsets)
    peak_thresh_mat[peaks] = onsets[peaks]
    onset_idx = np.where(peak_thresh_mat >= onset_thresh)

    # float64, as theirs; column-major, since every walk and maximum runs along one pitch.
    remaining_energy = np.array(frames, dtype=np.float64, order="F")
    # Onsets backwards in time, each held while the energy lasts; then (melodia trick)
    # notes without an onset, grown outward from the strongest energy left.
    note_events = _onset_notes(
        onset_idx, frames, remaining_energy, frame_thresh, min_note_len, energy_tol=energy_tol
    )
    if melodia_trick:
        note_events += _melodia_notes(
            frames, remaining_energy, frame_thresh, min_note_len, energy_tol
        )
    return note_events


def _clear(energy: np.ndarray, rows, freq_idx: int) -> None:
    """Zero a pitch's energy over `rows`, and its neighbours' a semitone either side."""
    energy[rows, max(freq_idx - 1, 0) : min(freq_idx + 1, MAX_FREQ_IDX) + 1] = 0


def _walk(col: np.ndarray, i: int, stop: int, *, step: int, thresh: float, tol: int):
    """basic-pitch's walk along one pitch: from frame i towards `stop` (exclusive) in
    steps of `step` (+1 or -1) until the energy has stayed under `thresh` for `tol`
    frames. (i, k): the first frame not visited and the run of quiet frames it ended on.

    Their loop reads one numpy element per frame; this reads the column in chunks as
    Python floats, which is the same comparisons at a fraction of the cost.
    """
    k, chunk = 0, 16
    while (i < stop if step > 0 else i > stop) and k < tol:
        end = min(i + chunk, stop) if step > 0 else max(i - chunk, stop)
        for x in col[i:end:step].tolist():
            k = k + 1 if x < thresh else 0
            i += step
            if k >= tol:
                break
        chunk *= 4
    return i, k


def _onset_notes(onset_idx, frames, remaining_energy, frame_thresh, min_note_len, *, energy_tol):
    n_frames = frames.shape[0]
    note_events = []
    for note_start_idx, freq_idx in zip(onset_idx[0][::-1], onset_idx[1][::-1], strict=True):
        if note_start_idx >= n_frames - 1:
            continue
        # Walk forward until the energy has stayed under the threshold for energy_tol frames.
        col = remaining_energy[:, freq_idx]
        i, k = _walk(
            col, note_start_idx + 1, n_frames - 1, step=1, thresh=frame_thresh, tol=energy_tol
        )
        i -= k
        if i - note_start_idx <= min_note_len:
            continue
        _clear(remaining_energy, slice(note_start_idx, i), freq_idx)
        amplitude = np.mean(frames[note_start_idx:i, freq_idx])
        note_events.append((note_start_idx, i, freq_idx + MIDI_OFFSET, amplitude))
    return note_events


def _argmax(energy: np.ndarray, col_max: np.ndarray) -> tuple[int, int]:
    """np.unravel_index(np.argmax(energy)) from per-column maxima: the first maximum in
    row-major order, i.e. the lowest frame, then the lowest pitch."""
    cols = np.flatnonzero(col_max == col_max.max())
    rows = [int(np.argmax(energy[:, c])) for c in cols]
    row = min(rows)
    return row, int(cols[rows.index(row)])


def _melodia_notes(frames, remaining_energy, frame_thresh, min_note_len, energy_tol):
    n_frames = frames.shape[0]
    note_events = []
    # Their loop scans the whole array twice per note (max, argmax); each note only
    # changes three pitches, so per-pitch maxima are kept and those three recomputed.
    col_max = remaining_energy.max(axis=0)
    while col_max.max() > frame_thresh:  # NaN anywhere ends it, as np.max does theirs
        i_mid, freq_idx = _argmax(remaining_energy, col_max)
        remaining_energy[i_mid, freq_idx] = 0
        col = remaining_energy[:, freq_idx]
        # Each frame walked is read, then cleared; a clear never reaches a frame still
        # to be read, so reading first and clearing the walked span after is the same.
        i, k = _walk(col, i_mid + 1, n_frames - 1, step=1, thresh=frame_thresh, tol=energy_tol)
        _clear(remaining_energy, slice(i_mid + 1, i), freq_idx)
        i_end = i - 1 - k
        i, k = _walk(col, i_mid - 1, 0, step=-1, thresh=frame_thresh, tol=energy_tol)
        _clear(remaining_energy, slice(i + 1, i_mid), freq_idx)
        i_start = i + 1 + k
        lo, hi = max(freq_idx - 1, 0), min(freq_idx + 1, MAX_FREQ_IDX) + 1
        col_max[lo:hi] = remaining_energy[:, lo:hi].max(axis=0)
        if i_end - i_start <= min_note_len:
            continue
        amplitude = np.mean(frames[i_start:i_end, freq_idx])
        note_events.append((i_start, i_end, freq_idx + MIDI_OFFSET, amplitude))
    return note_events

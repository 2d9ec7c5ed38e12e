"""Run a basic-pitch ONNX model on many clips at once.

Every clip is cut into basic-pitch's overlapping windows; windows from all clips are
stacked and run through onnxruntime in batches of `batch_windows`, then split back per
clip and unwrapped exactly as `basic_pitch.inference.unwrap_output` does. Batching
across files is what keeps the model busy when clips are short.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from midiforge.transcription import constants as bp
from midiforge.transcription.notes import model_decoding
from midiforge.transcription.sessions import create_session

log = logging.getLogger(__name__)


def windows(audio: np.ndarray) -> np.ndarray:
    """float32 mono at 22,050 Hz -> (n_windows, AUDIO_N_SAMPLES, 1), as basic-pitch frames it."""
    padded = np.concatenate(
        [np.zeros(bp.OVERLAP_SAMPLES // 2, np.float32), audio.astype(np.float32)]
    )
    starts = range(0, padded.shape[0], bp.HOP_SAMPLES)
    out = np.zeros((len(starts), bp.AUDIO_N_SAMPLES, 1), np.float32)
    for k, i in enumerate(starts):
        chunk = padded[i : i + bp.AUDIO_N_SAMPLES]
        out[k, : len(chunk), 0] = chunk
    return out


def unwrap(output: np.ndarray, n_samples: int) -> np.ndarray:
    """(n_windows, 172, F) -> (n_frames, F) for a clip of `n_samples` at 22,050 Hz."""
    half = bp.N_OVERLAP_FRAMES // 2
    output = output[:, half:-half, :]
    n_frames = int(np.floor(n_samples * (bp.ANNOTATIONS_FPS / bp.AUDIO_SAMPLE_RATE)))
    return output.reshape(-1, output.shape[-1])[:n_frames]


class OnnxTranscriber:
    """One onnxruntime session (what a Ray Data actor holds) for a basic-pitch-shaped model."""

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        batch_windows: int = 16,
        intra_op_threads: int = 0,
    ) -> None:
        # 0 lets onnxruntime use every core it is given; Ray sets the actor's CPU share.
        self.session, self.provider = create_session(model_path, device, intra_op_threads)
        names = {o.name for o in self.session.get_outputs()}
        missing = set(bp.OUTPUT_NAMES.values()) - names
        if missing or self.session.get_inputs()[0].name != bp.INPUT_NAME:
            raise ValueError(
                f"{model_path} is not a basic-pitch-shaped model: expected input {bp.INPUT_NAME} "
                f"and outputs {sorted(bp.OUTPUT_NAMES.values())}"
            )
        # A session of fixed batch (OpenVINO's, see sessions) takes exactly that many.
        fixed = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = fixed if isinstance(fixed, int) and fixed > 0 else None
        self.batch_windows = self.fixed_batch or max(1, batch_windows)
        # The thresholds calibrated for this model (decoding.yaml beside it; {} for stock).
        self.decoding = model_decoding(model_path)
        self._keys = list(bp.OUTPUT_NAMES)
        self._outputs = [bp.OUTPUT_NAMES[k] for k in self._keys]

    def run_windows(self, win: np.ndarray) -> dict[str, np.ndarray]:
        """(n, AUDIO_N_SAMPLES, 1) -> {'note','onset','contour'}: (n, 172, F) each."""
        parts: dict[str, list[np.ndarray]] = {k: [] for k in self._keys}
        step = self.batch_windows
        for i in range(0, win.shape[0], step):
            chunk = win[i : i + step]
            n = chunk.shape[0]
            if self.fixed_batch and n < step:  # the last windows, padded to the batch
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), chunk.dtype)])
            res = self.session.run(self._outputs, {bp.INPUT_NAME: chunk})
            for k, r in zip(self._keys, res, strict=True):
                parts[k].append(r[:n])
        return {k: np.concatenate(v) for k, v in parts.items()}

    def __call__(self, clips: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Model outputs per clip: {'note': (T, 88), 'onset': (T, 88), 'contour': (T, 264)}."""
        if not clips:
            return []
        wins = [windows(c) for c in clips]
        out = self.run_windows(np.concatenate(wins))
        results, pos = [], 0
        for clip, w in zip(clips, wins, strict=True):
            n = w.shape[0]
            results.append({k: unwrap(v[pos : pos + n], clip.shape[0]) for k, v in out.items()})
            pos += n
        return results

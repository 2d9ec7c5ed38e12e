"""Which transcription model a user means, and transcription of whole audio files with it.

`extract` and `compare` take a model as a registry name (`stock` included), an `.onnx`
file or a folder holding `model.onnx`, so a freshly exported model can be scored before
it is pushed. Files are decoded exactly as the dataset job decodes them (mono, 22,050
Hz, `audio.load_for_transcription`), so a comparison measures the model, not the decoder.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from midiforge import audio
from midiforge.errors import MidiforgeError
from midiforge.registry import STOCK, Registry
from midiforge.transcription.notes import NoteDecoding, decode_notes, model_decoding

log = logging.getLogger(__name__)

MODEL_FILE = "model.onnx"
# Decoded clips go to the runner in groups of about this much audio: windows are batched
# across the clips of a group, and memory stays bounded (the runner holds every window's
# input and output at once: about 0.3 GB per 10 minutes of audio).
GROUP_SECONDS = 600.0


class ModelNotFoundError(MidiforgeError, LookupError):
    """A model argument that is neither a registry name nor an ONNX file or model folder."""


class UnusableModelError(MidiforgeError, ValueError):
    """An ONNX file that is not shaped like basic-pitch (other inputs or outputs)."""


class InputError(MidiforgeError, ValueError):
    """An input file or folder that cannot be transcribed or scored; the message names it."""


def _local_model(path: Path) -> Path | None:
    if path.is_file() and path.suffix.lower() == ".onnx":
        return path
    if path.is_dir() and (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    return None


def resolve_model(name_or_path: str, models_root: str | None = None) -> Path:
    """`stock`, a registry name, an `.onnx` file or a folder holding `model.onnx` -> the
    ONNX file to load. A local path wins over a registry name of the same spelling, since
    the user can see it; an error lists everything that was tried."""
    if name_or_path == STOCK:
        return Registry(models_root).model_file(STOCK)
    path = Path(name_or_path).expanduser()
    local = _local_model(path)
    if local is not None:
        return local
    reg = Registry(models_root)
    names = reg.names()
    if name_or_path in names:
        return reg.model_file(name_or_path)
    if path.is_file():
        as_path = f"{path} is a file but not an .onnx model"
    elif path.is_dir():
        as_path = f"{path} is a folder without {MODEL_FILE}"
    else:
        as_path = f"no file or folder {path} exists"
    raise ModelNotFoundError(
        f"model {name_or_path!r} not found: it is not a model name in the registry {reg.root} "
        f"(names there: {', '.join(names)}), and as a path: {as_path}"
    )


def load_clip(path: str | Path, limits: audio.AudioLimits | None = None) -> np.ndarray:
    """An audio file -> float32 mono at 22,050 Hz, or InputError naming the file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read audio {p}: {e.strerror or e}") from None
    try:
        return audio.load_for_transcription(data, limits or audio.AudioLimits())
    except audio.AudioError as e:
        raise InputError(f"{p}: {e}") from None


def model_outputs(
    paths_or_arrays: Sequence[str | Path | np.ndarray],
    model_path: str | Path,
    *,
    device: str = "auto",
    limits: audio.AudioLimits | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """The model's frame outputs (contour, note, onset) for each clip in order.

    Items are audio file paths or float32 mono arrays at 22,050 Hz. One onnxruntime
    session serves every clip and windows are batched across clips, as in the dataset job.
    """
    from midiforge.transcription.runner import OnnxTranscriber

    try:
        transcriber = OnnxTranscriber(model_path, device=device)
    except ValueError as e:  # the runner's check of input and output names
        raise UnusableModelError(str(e)) from None
    pending: list[np.ndarray] = []
    for item in paths_or_arrays:
        is_array = isinstance(item, np.ndarray)
        pending.append(np.asarray(item, np.float32) if is_array else load_clip(item, limits))
        if sum(c.shape[0] for c in pending) >= GROUP_SECONDS * audio.TRANSCRIPTION_SR:
            yield from transcriber(pending)
            pending.clear()
    if pending:
        yield from transcriber(pending)


def transcribe_audio(
    paths_or_arrays: Sequence[str | Path | np.ndarray],
    model_path: str | Path,
    decoding: NoteDecoding | None = None,
    *,
    device: str = "auto",
    limits: audio.AudioLimits | None = None,
) -> list[np.ndarray]:
    """Notes, (N, 4) rows of (start_s, end_s, pitch, velocity), for each clip in order.

    Thresholds the caller leaves unset come from the model's decoding.yaml (notes.py).
    """
    decoding = (decoding or NoteDecoding()).resolve(model_decoding(model_path))
    outputs = model_outputs(paths_or_arrays, model_path, device=device, limits=limits)
    notes = [decode_notes(out, decoding) for out in outputs]
    log.debug("transcribed %d clips with %s", len(notes), model_path)
    return notes

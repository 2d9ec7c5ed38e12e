"""One audio file -> one MIDI file with any transcription model (`midiforge extract`)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from midiforge import audio
from midiforge.midi_write import notes_midi_bytes
from midiforge.transcription.models import (
    InputError,
    load_clip,
    resolve_model,
    transcribe_audio,
)
from midiforge.transcription.notes import NoteDecoding, model_decoding

log = logging.getLogger(__name__)


def default_out(input_path: str | Path) -> Path:
    """`song.wav` -> `song.mid` beside it: where a user looks for the result first."""
    return Path(input_path).with_suffix(".mid")


def extract(
    input_path: str | Path,
    model: str = "stock",
    out: str | Path | None = None,
    decoding: NoteDecoding | None = None,
    models_root: str | None = None,
) -> dict[str, Any]:
    """Transcribe `input_path` with `model` and write the notes as a MIDI file.

    Returns a summary: model, model_path, input, out, notes (count), duration_s (of the
    audio), decoding. The model is resolved before the audio is decoded, so a mistyped
    name fails at once.
    """
    src = Path(input_path)
    if not src.is_file():
        raise InputError(f"no audio file {src}")
    dest = Path(out) if out else default_out(src)
    if dest.is_dir():  # `--out folder/`: the input's name inside it
        dest = dest / default_out(src).name
    if dest.resolve() == src.resolve():
        raise InputError(f"the output {dest} would overwrite the input")
    model_path = resolve_model(model, models_root)
    decoding = (decoding or NoteDecoding()).resolve(model_decoding(model_path))
    clip = load_clip(src)
    (notes,) = transcribe_audio([clip], model_path, decoding)
    if len(notes) == 0:
        log.warning("%s: the model found no notes; writing an empty MIDI file", src)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(notes_midi_bytes(notes, name=model))
    return {
        "model": model,
        "model_path": str(model_path),
        "input": str(src),
        "out": str(dest),
        "notes": len(notes),
        "duration_s": round(clip.shape[0] / audio.TRANSCRIPTION_SR, 3),
        "decoding": dataclasses.asdict(decoding),
    }

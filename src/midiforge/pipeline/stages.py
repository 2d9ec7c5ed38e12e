"""Pipeline stages: pure functions on a batch, plus thin callable classes for map_batches.

A batch is a dict of equal-length numpy arrays (Ray Data's "numpy" format). Every row
carries `status` ("ok" | "rejected") with `stage`, `reason`, `detail`; a stage only
works on rows still "ok" and never raises on a bad row: it marks it rejected instead.
Audio and model outputs travel between stages as raw float32 bytes plus their shape,
which Arrow carries unchanged whatever the lengths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from midiforge import audio as audiomod
from midiforge import midi_io
from midiforge.midi_write import notes_midi_bytes
from midiforge.pipeline import schema
from midiforge.pipeline.inputs import TooLargeError, read_bytes

log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]
OUTPUT_KEYS = ("note", "onset", "contour")


def rows_of(batch: Batch) -> list[dict[str, Any]]:
    n = len(next(iter(batch.values()))) if batch else 0
    return [{k: _py(v[i]) for k, v in batch.items()} for i in range(n)]


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def batch_of(rows: list[dict[str, Any]]) -> Batch:
    """Rows -> columns; non-numeric columns are object arrays (numpy's fixed-width bytes
    dtype would silently drop trailing NUL bytes of MIDI and audio)."""
    out: Batch = {}
    for k in rows[0] if rows else []:
        vals = [r[k] for r in rows]
        if all(isinstance(v, bool | int | float | np.number) for v in vals):
            out[k] = np.asarray(vals)
        else:
            arr = np.empty(len(vals), dtype=object)
            arr[:] = vals
            out[k] = arr
    return out


def reject(row: dict[str, Any], stage: str, reason: str, detail: str) -> None:
    row.update(status="rejected", stage=stage, reason=reason, detail=detail[:2000])


def _f32(b: bytes, channels: int) -> np.ndarray:
    x = np.frombuffer(b, dtype=np.float32)
    return x.reshape(channels, -1) if channels > 1 else x


# --- 1. read + decode (CPU) ---------------------------------------------------------------


def load_inputs(
    batch: Batch,
    limits: audiomod.AudioLimits,
    separator_format: tuple[int, int] | None = None,
    *,
    max_bytes: int | None = None,
) -> Batch:
    """Read each input; decode and validate audio. Audio leaves as mono 22,050 Hz, or as
    (channels, frames) at the separator's rate when `separator_format` = (rate, channels).
    A file over `max_bytes` is rejected from its size, before it is read."""
    rows = rows_of(batch)
    for r in rows:
        r.update(audio=b"", channels=1, midi=b"", audio_seconds=0.0)
        if r["status"] != "ok":
            continue
        if r["kind"] == "unknown":
            reject(r, "list", "unsupported_extension", "not one of .wav .flac .mp3 .ogg .mid .midi")
            continue
        try:
            data = read_bytes(r["source_uri"], max_bytes)
        except TooLargeError as e:
            reject(r, "read", "too_large", str(e))
            continue
        except Exception as e:  # pyarrow raises ValueErrors too (a bad URI): one file's
            # read failure is that file's reject, never the batch's (and so the job's) end
            reject(r, "read", "read_failed", f"{type(e).__name__}: {e}")
            continue
        if r["kind"] == "midi":
            r["midi"] = data
            continue
        try:
            x, sr = audiomod.decode_checked(data, limits)
            r["audio_seconds"] = x.shape[-1] / sr
            if separator_format:
                y = audiomod.to_channels(x, sr, *separator_format)
                r["channels"] = y.shape[0]
            else:
                y = audiomod.to_mono(x, sr)
            r["audio"] = y.tobytes()
        except audiomod.AudioError as e:
            reject(r, "decode", e.reason, e.detail)
        except Exception as e:  # a decoder crash on one odd file must not end the job
            reject(r, "decode", "decode_failed", f"{type(e).__name__}: {e}")
    return batch_of(rows)


# --- 2. separation (model) -----------------------------------------------------------------


def separate(batch: Batch, separator) -> Batch:
    """Replace each audio row with the chosen stem, as mono 22,050 Hz."""
    rows = rows_of(batch)
    for r in rows:
        if r["status"] != "ok" or r["kind"] != "audio":
            continue
        try:
            stem = separator(_f32(r["audio"], r["channels"]).reshape(r["channels"], -1))
            r["audio"] = audiomod.to_mono(stem, separator.samplerate).tobytes()
            r["channels"] = 1
        except Exception as e:
            reject(r, "separate", "separation_failed", f"{type(e).__name__}: {e}")
    return batch_of(rows)


class Separate:
    """map_batches wrapper: loads the Demucs model once per actor."""

    def __init__(
        self, spec: str, stem: str, device: str, segment_s: float | None, threads: int
    ) -> None:
        import torch

        from midiforge.separation import DemucsSeparator

        # torch would start one thread per core of the machine, oversubscribing the CPUs
        # that Ray gave the other actors on the node.
        torch.set_num_threads(max(1, threads))
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        dev = "cuda" if cuda else "cpu"
        self.separator = DemucsSeparator(spec, stem=stem, device=dev, segment=segment_s)

    def __call__(self, batch: Batch) -> Batch:
        return separate(batch, self.separator)


# --- 3. transcription (model) --------------------------------------------------------------


def transcribe(batch: Batch, transcriber) -> Batch:
    """Run the ONNX model on all audio rows of the batch together (windows batched)."""
    rows = rows_of(batch)
    todo = [r for r in rows if r["status"] == "ok" and r["kind"] == "audio"]
    for r in rows:
        r.update(dict.fromkeys(OUTPUT_KEYS, b""), n_frames=0)
    for r, out in zip(todo, _model_outputs(todo, transcriber), strict=True):
        if out is not None:
            r.update({k: out[k].astype(np.float32).tobytes() for k in OUTPUT_KEYS})
            r["n_frames"] = out["note"].shape[0]
    for r in rows:
        r["audio"] = b""  # the audio is no longer needed downstream
    return batch_of(rows)


def _model_outputs(todo: list[dict[str, Any]], transcriber) -> list[dict | None]:
    """The model's outputs for each row, in one call; None for a row it failed on, which
    is then rejected. A failed call is retried row by row: one bad input (or one too
    long for the device's memory) fails the whole call, and must not take the others."""
    if not todo:
        return []
    try:
        outputs = list(transcriber([_f32(r["audio"], 1) for r in todo]))
        if len(outputs) != len(todo):
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(todo)} clips")
    except Exception as e:
        if len(todo) == 1:
            reject(todo[0], "transcribe", "model_failed", f"{type(e).__name__}: {e}")
            return [None]
        log.warning("model failed on a batch of %d (%s); retrying each alone", len(todo), e)
        return [_model_outputs([r], transcriber)[0] for r in todo]
    return outputs


class Transcribe:
    """map_batches wrapper: one onnxruntime session per actor, on the model file in its own
    node's cache (`model`: a registry.ModelRef, or a local path on a single machine)."""

    def __init__(self, model, device: str, batch_windows: int, threads: int) -> None:
        from midiforge.transcription.runner import OnnxTranscriber

        path = model.local_file() if hasattr(model, "local_file") else model
        # One onnxruntime thread per CPU that Ray reserved for this actor: its default of
        # one per core would compete with the decode tasks running beside it.
        self.transcriber = OnnxTranscriber(
            path, device=device, batch_windows=batch_windows, intra_op_threads=threads
        )

    def __call__(self, batch: Batch) -> Batch:
        return transcribe(batch, self.transcriber)


# --- 4. notes, validation, tokens (CPU) ----------------------------------------------------


def _model_output(r: dict[str, Any]) -> dict[str, np.ndarray]:
    n = r["n_frames"]
    return {k: np.frombuffer(r[k], dtype=np.float32).reshape(n, -1) for k in OUTPUT_KEYS}


def _reference_metrics(r: dict[str, Any], notes: np.ndarray) -> None:
    # Imported here: mir_eval pulls in scipy.stats (~1.4 s per actor start), and only runs
    # that score against reference MIDI need it.
    from midiforge import evaluation

    try:
        ref = midi_io.notes_array(midi_io.load_midi(read_bytes(r["reference_uri"])))
    except (OSError, ValueError) as e:
        log.warning("reference MIDI %s unreadable: %s", r["reference_uri"], e)
        return
    m = evaluation.note_metrics(ref, notes)
    r.update(
        ref_precision=m["precision"],
        ref_recall=m["recall"],
        ref_f1=m["f1"],
        ref_f1_offset=m["f1_offset"],
    )


@contextlib.contextmanager
def _row_guard(r: dict[str, Any], stage: str, reason: str) -> Iterator[None]:
    """One row's step: an exception there rejects that row, naming the exception. Left
    to rise, it would fail the batch, then (after Ray's retries) the whole job."""
    try:
        yield
    except Exception as e:
        reject(r, stage, reason, f"{type(e).__name__}: {e}")


STAT_KEYS = tuple(f.name for f in schema.STATS)
# A rejected row still fills every stats column: "", 0.0 or 0 by the column's type.
_EMPTY_STATS = {
    f.name: "" if pa.types.is_string(f.type) else 0.0 if pa.types.is_floating(f.type) else 0
    for f in schema.STATS
}


def _notes_to_midi(r: dict[str, Any], note_cfg) -> None:
    """One audio row: model outputs -> notes (scored against its reference) -> MIDI."""
    from midiforge.transcription.notes import decode_notes

    notes = decode_notes(_model_output(r), note_cfg)
    if r["reference_uri"]:
        _reference_metrics(r, notes)
    if len(notes) == 0:
        reject(r, "transcribe", "no_notes", "the transcription holds no notes")
    else:
        r["midi"] = notes_midi_bytes(notes)


def _validate(r: dict[str, Any], validate_cfg, key_profiles) -> None:
    from midiforge.symbolic import validate

    vcfg = validate_cfg.for_style(r["style"])
    if r["kind"] == "audio":
        vcfg = dataclasses.replace(vcfg, overlap_tolerance_s=vcfg.overlap_tolerance_transcribed_s)
    stats, reason, detail = validate.assess(r["midi"], vcfg, key_profiles=key_profiles)
    if stats:
        r.update({k: stats[k] for k in STAT_KEYS})
    if reason:
        reject(r, "validate", reason, detail)


def _tokenize(r: dict[str, Any], tokenizer) -> None:
    from midiforge.symbolic import tokenize

    ids, reason, detail = tokenize.encode(tokenizer, r["midi"])
    if reason:
        reject(r, "tokenize", reason, detail)
    else:
        r["tokens"] = np.asarray(ids, dtype=np.int32).tobytes()


def postprocess(
    batch: Batch, note_cfg, validate_cfg, tokenizer, models_json: str, *, key_profiles=None
) -> Batch:
    """Model outputs -> notes -> MIDI; then validate and tokenize every surviving row.
    key_profiles: `validate.music21_key_profiles()`, read on the driver (None: here)."""
    rows = rows_of(batch)
    nan = float("nan")
    for r in rows:
        r.update(_EMPTY_STATS, tokens=b"", models=models_json)
        r.update(ref_precision=nan, ref_recall=nan, ref_f1=nan, ref_f1_offset=nan)
        if r["status"] == "ok" and r["kind"] == "audio":
            with _row_guard(r, "transcribe", "notes_failed"):
                _notes_to_midi(r, note_cfg)
        for k in OUTPUT_KEYS:
            r[k] = b""
        if r["status"] == "ok":
            with _row_guard(r, "validate", "validate_failed"):
                _validate(r, validate_cfg, key_profiles)
        if r["status"] == "ok":
            with _row_guard(r, "tokenize", "tokenize_failed"):
                _tokenize(r, tokenizer)
    out = batch_of(rows)
    for k in (*OUTPUT_KEYS, "n_frames", "audio", "channels"):
        out.pop(k, None)
    return out


class Postprocess:
    """map_batches wrapper: builds the tokenizer once per actor."""

    def __init__(
        self, note_cfg, validate_cfg, tokenizer_settings, models_json: str, key_profiles=None
    ) -> None:
        from midiforge.symbolic.tokenize import make_tokenizer

        self.args = (note_cfg, validate_cfg, make_tokenizer(tokenizer_settings), models_json)
        self.kwargs = {"key_profiles": key_profiles}

    def __call__(self, batch: Batch) -> Batch:
        return postprocess(batch, *self.args, **self.kwargs)


class TranscribeAndPostprocess:
    """Both model and CPU post-processing in one actor, for CPU-only runs: on a CPU node
    there is no accelerator to keep busy, and a separate stage only adds a process and a
    trip through the object store for the model outputs (~150 kB per audio-second)."""

    def __init__(self, transcribe_args: tuple, postprocess_args: tuple) -> None:
        self.transcribe = Transcribe(*transcribe_args)
        self.postprocess = Postprocess(*postprocess_args)

    def __call__(self, batch: Batch) -> Batch:
        return self.postprocess(self.transcribe(batch))


def models_json(separator: str, stem: str, transcriber: str, transcriber_version: str) -> str:
    sep = {"name": separator, "stem": stem} if separator != "none" else None
    return json.dumps(
        {"separator": sep, "transcriber": {"name": transcriber, "version": transcriber_version}},
        sort_keys=True,
    )

"""`midiforge train prepare`: a user's audio + MIDI pairs -> windows with training targets.

Fine-tuning a basic-pitch-shaped model needs what the model sees (AUDIO_N_SAMPLES of
float32 mono at 22,050 Hz) next to what it should output (`targets.window_targets`).
Audio and MIDI are paired by file stem; every pair that cannot be used becomes a
"broken" row in the manifest with one stable reason code, never a silent drop, because a
user with 200 recordings needs to know which 7 were left out and why.

Output folder D:
- `D/windows/PIECE.parquet`: one file per piece, row groups of `row_group_windows` rows,
  so a training loop can stream windows without holding a piece in memory.
- `D/manifest.json`: config, pieces, broken pairs, totals, the target definition.
- `D/config.yaml`: the resolved config, as every midiforge artifact has.

A new prepare is built in a staging folder and swapped in at the end, so re-running into
D leaves no stale windows, and a prepare that fails leaves the previous one untouched.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from midiforge import audio as audiomod
from midiforge import config as cfgmod
from midiforge import midi_io
from midiforge.errors import MidiforgeError
from midiforge.pipeline.inputs import MIDI_EXTENSIONS
from midiforge.transcription import constants as bp
from midiforge.transcription import targets

log = logging.getLogger(__name__)

STAGING = ".windows.partial"  # built here, renamed to `windows` when complete
SCHEMA = pa.schema(
    [
        ("piece", pa.string()),
        ("window", pa.int32()),
        ("start_s", pa.float64()),
        ("audio", pa.binary()),  # float32 little-endian, exactly AUDIO_N_SAMPLES samples
        ("note", pa.binary()),  # targets.pack of (172, 88) uint8
        ("onset", pa.binary()),  # targets.pack of (172, 88) uint8
        ("contour", pa.binary()),  # targets.pack of (172, 264) uint8
        ("n_note_frames", pa.int32()),  # active note cells in the window
        ("n_onsets", pa.int32()),  # onset cells in the window
    ]
)
TARGET_DEFINITION = (
    "basic-pitch targets per window of AUDIO_N_SAMPLES samples from start_s: frame j is "
    "time start_s + j * frame_s; note = 1 from onset frame to offset frame (>= 1 frame), "
    "onset = 1 on the onset frame, contour = 1 on bin 3 * (pitch - 21) on the note's "
    "frames; keys from MIDI pitch 21; drum tracks ignored; binary, no label smoothing."
)


@dataclass
class PrepareConfig:
    audio_dir: str = ""  # searched recursively for .wav .flac .mp3 .ogg
    midi_dir: str = ""  # searched recursively for .mid .midi; paired to audio by file stem
    output: str = ""  # folder D: windows/, manifest.json, config.yaml
    # |audio duration - MIDI last note-off| allowed either way; MIDI exported from a DAW
    # rarely ends exactly where the bounce does.
    duration_tolerance_s: float = 1.0
    # Audio may run longer than the MIDI by this much more: the release and reverb tail
    # after the last note-off (our own renders add 0.25 s).
    tail_allowance_s: float = 3.0
    # Window hop; windows are AUDIO_N_SAMPLES (~1.99 s), so 1.0 s gives ~50 % overlap.
    hop_s: float = 1.0
    min_notes: int = 1  # non-drum notes a MIDI file needs to be worth training on
    row_group_windows: int = 64  # windows per Parquet row group (~11 MB of audio)
    # Prepare itself draws nothing at random; the seed is recorded so that the training
    # run reading this folder can inherit it.
    seed: int = 0
    limits: audiomod.AudioLimits = field(default_factory=audiomod.AudioLimits)

    def validate_config(self) -> None:
        missing = [k for k in ("audio_dir", "midi_dir", "output") if not getattr(self, k)]
        if missing:
            flags = ", ".join("--" + k.replace("_", "-") for k in missing)
            raise cfgmod.ConfigError(f"train prepare needs {flags}")
        window_s = bp.AUDIO_N_SAMPLES / bp.AUDIO_SAMPLE_RATE
        if not 0 < self.hop_s <= window_s:
            raise cfgmod.ConfigError(
                f"hop_s must be in (0, {window_s:.3f}] so windows cover the audio: {self.hop_s}"
            )
        if self.duration_tolerance_s < 0 or self.tail_allowance_s < 0:
            raise cfgmod.ConfigError("duration_tolerance_s and tail_allowance_s must be >= 0")
        if self.min_notes < 1 or self.row_group_windows < 1:
            raise cfgmod.ConfigError("min_notes and row_group_windows must be >= 1")


class PrepareError(MidiforgeError):
    """No usable training pair, or an input folder that is not there."""


class PairError(Exception):
    """Raised by one check: `reason` is a stable code for reports, `detail` for people."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Pair:
    """Every audio and MIDI file found under one stem; a usable pair has one of each."""

    stem: str
    audio: tuple[Path, ...]
    midi: tuple[Path, ...]


@dataclass
class Piece:
    """A pair that passed every check, decoded and ready to cut."""

    pair: Pair
    audio: np.ndarray  # float32 mono at 22,050 Hz
    notes: np.ndarray  # (N, 4) non-drum notes
    midi_end_s: float


# --- pairing ---------------------------------------------------------------------------


def find_files(root: Path, extensions: tuple[str, ...]) -> dict[str, list[Path]]:
    """stem -> files under `root` (recursive) whose extension is one of `extensions`."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix.lower() in extensions:
            found.setdefault(path.stem, []).append(path)
    return found


def pair_files(audio_dir: Path, midi_dir: Path) -> list[Pair]:
    """Every stem seen in either folder, sorted, so output order never depends on the OS."""
    audio = find_files(audio_dir, audiomod.AUDIO_EXTENSIONS)
    midi = find_files(midi_dir, MIDI_EXTENSIONS)
    return [
        Pair(stem, tuple(audio.get(stem, ())), tuple(midi.get(stem, ())))
        for stem in sorted(set(audio) | set(midi))
    ]


# --- checks: each raises PairError with one reason ------------------------------------


def check_paired(pair: Pair) -> None:
    """Exactly one audio and one MIDI file: two files with one stem are ambiguous."""
    for kind, files in (("audio", pair.audio), ("MIDI", pair.midi)):
        if len(files) > 1:
            raise PairError(
                "duplicate_stem",
                f"{len(files)} {kind} files share the stem {pair.stem!r}: rename all but one",
            )
    if not pair.midi:
        raise PairError("no_midi", f"no .mid/.midi file named {pair.stem!r}")
    if not pair.audio:
        raise PairError("no_audio", f"no audio file named {pair.stem!r}")


def read_notes(path: Path, min_notes: int) -> tuple[np.ndarray, float]:
    """(non-drum notes, last note-off of any track) of a MIDI file that is worth using."""
    try:
        pm = midi_io.load_midi(path.read_bytes())
    except ValueError as e:
        raise PairError("midi_unreadable", str(e)) from None
    notes = midi_io.notes_array(pm)
    if len(notes) < min_notes:
        code = "no_notes" if len(notes) == 0 else "too_few_notes"
        drums = len(midi_io.notes_array(pm, include_drums=True)) - len(notes)
        raise PairError(code, f"{len(notes)} non-drum notes (< {min_notes}); {drums} drum notes")
    # Drums still sound in the recording, so they count for where the audio should end.
    midi_end_s = float(midi_io.notes_array(pm, include_drums=True)[:, 1].max())
    return notes, midi_end_s


def read_audio(path: Path, limits: audiomod.AudioLimits) -> np.ndarray:
    """Float32 mono at 22,050 Hz, decoded exactly as transcription decodes it."""
    try:
        return audiomod.load_for_transcription(path.read_bytes(), limits)
    except audiomod.AudioError as e:
        raise PairError(e.reason, e.detail) from None


def check_durations(audio_s: float, midi_end_s: float, cfg: PrepareConfig) -> None:
    """Audio and MIDI of one performance end together, give or take the release tail.

    A large gap means the MIDI is of another take, another tempo, or has a long silent
    intro, and its targets would teach the model wrong notes.
    """
    lo = midi_end_s - cfg.duration_tolerance_s
    hi = midi_end_s + cfg.duration_tolerance_s + cfg.tail_allowance_s
    if not lo <= audio_s <= hi:
        raise PairError(
            "duration_mismatch",
            f"audio is {audio_s:.2f} s, MIDI's last note-off is at {midi_end_s:.2f} s "
            f"(audio must be within [{lo:.2f}, {hi:.2f}] s)",
        )


def load_piece(pair: Pair, cfg: PrepareConfig) -> Piece:
    """Run every check in order of cost (MIDI before audio); the first failure wins."""
    check_paired(pair)
    notes, midi_end_s = read_notes(pair.midi[0], cfg.min_notes)
    audio = read_audio(pair.audio[0], cfg.limits)
    check_durations(len(audio) / bp.AUDIO_SAMPLE_RATE, midi_end_s, cfg)
    return Piece(pair, audio, notes, midi_end_s)


# --- windows ---------------------------------------------------------------------------


def window_starts(n_samples: int, hop_s: float) -> np.ndarray:
    """First sample of every window that overlaps the audio: 0, hop, 2 * hop, ..."""
    hop = max(1, round(hop_s * bp.AUDIO_SAMPLE_RATE))
    return np.arange(0, n_samples, hop, dtype=np.int64)


def cut_window(audio: np.ndarray, start: int) -> np.ndarray:
    """AUDIO_N_SAMPLES samples from `start`, zero-padded past the end of the audio."""
    out = np.zeros(bp.AUDIO_N_SAMPLES, np.float32)
    chunk = audio[start : start + bp.AUDIO_N_SAMPLES]
    out[: len(chunk)] = chunk
    return out


def window_rows(piece: Piece, hop_s: float) -> Iterator[dict[str, Any]]:
    """One row per window; start_s comes from the start sample so audio and targets agree."""
    for k, start in enumerate(window_starts(len(piece.audio), hop_s)):
        start_s = int(start) / bp.AUDIO_SAMPLE_RATE
        frames = targets.window_targets(piece.notes, start_s)
        yield {
            "piece": piece.pair.stem,
            "window": k,
            "start_s": start_s,
            "audio": cut_window(piece.audio, int(start)).astype("<f4").tobytes(),
            **{name: targets.pack(a) for name, a in frames.items()},
            "n_note_frames": int(frames["note"].sum()),
            "n_onsets": int(frames["onset"].sum()),
        }


def write_windows(rows: Iterator[dict[str, Any]], path: Path, per_group: int) -> int:
    """Stream rows to one Parquet file, `per_group` per row group; returns the row count."""
    n = 0
    with pq.ParquetWriter(path, SCHEMA) as writer:
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == per_group:
                writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
                n, batch = n + len(batch), []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=SCHEMA))
            n += len(batch)
    return n


# --- reading, for the training loop ----------------------------------------------------


def read_window(row: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A Parquet row -> (audio float32 (AUDIO_N_SAMPLES,), note/onset/contour uint8 frames)."""
    audio = np.frombuffer(row["audio"], dtype="<f4").astype(np.float32)
    if audio.shape != (bp.AUDIO_N_SAMPLES,):
        raise ValueError(f"window audio has {audio.size} samples, not {bp.AUDIO_N_SAMPLES}")
    frames = {name: targets.unpack(row[name], shape) for name, shape in targets.SHAPES.items()}
    return audio, frames


def load_manifest(output: str | Path) -> dict[str, Any]:
    """The manifest of a prepared folder; PrepareError if there is none."""
    path = Path(output) / "manifest.json"
    if not path.is_file():
        raise PrepareError(f"{output} holds no manifest.json: run `midiforge train prepare` first")
    return json.loads(path.read_text())


# --- the whole folder ------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _broken_row(pair: Pair, err: PairError, cfg: PrepareConfig) -> dict[str, Any]:
    def names(files: tuple[Path, ...], root: str) -> str | None:
        return ", ".join(_rel(p, Path(root)) for p in files) or None

    return {
        "piece": pair.stem,
        "audio": names(pair.audio, cfg.audio_dir),
        "midi": names(pair.midi, cfg.midi_dir),
        "reason": err.reason,
        "detail": err.detail,
    }


def _piece_row(piece: Piece, n_windows: int, cfg: PrepareConfig) -> dict[str, Any]:
    return {
        "piece": piece.pair.stem,
        "audio": _rel(piece.pair.audio[0], Path(cfg.audio_dir)),
        "midi": _rel(piece.pair.midi[0], Path(cfg.midi_dir)),
        "file": f"windows/{piece.pair.stem}.parquet",
        "n_samples": len(piece.audio),
        "duration_s": round(len(piece.audio) / bp.AUDIO_SAMPLE_RATE, 6),
        "midi_end_s": round(piece.midi_end_s, 6),
        "n_notes": len(piece.notes),
        "windows": n_windows,
    }


def _manifest(
    cfg: PrepareConfig, n_pairs: int, pieces: list[dict[str, Any]], broken: list[dict[str, Any]]
) -> dict[str, Any]:
    # Absolute: training scores its validation pieces from these files, from any folder.
    config = {**cfgmod.to_dict(cfg)}
    for key in ("audio_dir", "midi_dir"):
        config[key] = str(Path(config[key]).expanduser().absolute())
    return {
        "config": config,
        "pieces": pieces,
        "broken": broken,
        "totals": {
            "pairs_found": n_pairs,  # == pieces + broken
            "pieces": len(pieces),
            "broken": len(broken),
            "windows": sum(p["windows"] for p in pieces),
            "audio_seconds": round(sum(p["n_samples"] for p in pieces) / bp.AUDIO_SAMPLE_RATE, 3),
        },
        "targets": {
            "frames_per_window": bp.FRAMES_PER_WINDOW,
            "frame_s": targets.FRAME_S,
            "audio_n_samples": bp.AUDIO_N_SAMPLES,
            "sample_rate": bp.AUDIO_SAMPLE_RATE,
            "hop_s": cfg.hop_s,
            "shapes": {k: list(v) for k, v in targets.SHAPES.items()},
            "definition": TARGET_DEFINITION,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _no_pairs_message(cfg: PrepareConfig, broken: list[dict[str, Any]]) -> str:
    if not broken:
        return f"no audio or MIDI files under {cfg.audio_dir} and {cfg.midi_dir}"
    lines = [
        f"  {b['piece']}: {b['reason']}: {b['detail']} (audio {b['audio']}, midi {b['midi']})"
        for b in broken
    ]
    return f"no usable audio + MIDI pair; {len(broken)} broken:\n" + "\n".join(lines)


def _publish(out: Path, staging: Path, manifest: dict[str, Any], cfg: PrepareConfig) -> None:
    """Swap the new windows in and write the manifest last, so it never names stale files."""
    final = out / "windows"
    if final.exists():
        shutil.rmtree(final)
    staging.rename(final)
    cfgmod.save(cfg, out / "config.yaml")
    tmp = out / "manifest.json.partial"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out / "manifest.json")


def windows_file(folder: str | Path, stem: str) -> Path:
    """A piece's windows under a prepared folder (or its staging folder)."""
    return Path(folder) / f"{stem}.parquet"


def _prepare_all(
    pairs: list[Pair], cfg: PrepareConfig, staging: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pieces, broken = [], []
    for pair in pairs:
        try:
            piece = load_piece(pair, cfg)
        except PairError as e:
            log.warning("broken pair %s: %s", pair.stem, e)
            broken.append(_broken_row(pair, e, cfg))
            continue
        path = windows_file(staging, pair.stem)
        n = write_windows(window_rows(piece, cfg.hop_s), path, cfg.row_group_windows)
        row = _piece_row(piece, n, cfg)
        log.info(
            "%s: %.1f s, %d notes -> %d windows", pair.stem, row["duration_s"], len(piece.notes), n
        )
        pieces.append(row)
    return pieces, broken


def prepare(cfg: PrepareConfig) -> dict[str, Any]:
    """Pair, check, cut and write; returns the manifest. PrepareError if nothing is usable."""
    for name in ("audio_dir", "midi_dir"):
        if not Path(getattr(cfg, name)).is_dir():
            raise PrepareError(f"{name} {getattr(cfg, name)} is not a folder")
    pairs = pair_files(Path(cfg.audio_dir), Path(cfg.midi_dir))
    out = Path(cfg.output)
    fresh = not out.exists()
    staging = out / STAGING
    if staging.exists():
        shutil.rmtree(staging)  # left by a run that was killed
    staging.mkdir(parents=True)
    try:
        pieces, broken = _prepare_all(pairs, cfg, staging)
        if not pieces:
            raise PrepareError(_no_pairs_message(cfg, broken))
        manifest = _manifest(cfg, len(pairs), pieces, broken)
        _publish(out, staging, manifest, cfg)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if fresh and not any(out.iterdir()):
            out.rmdir()  # a failed first run leaves no empty folder behind
    log.info("prepared %s: %s", out, manifest["totals"])
    return manifest

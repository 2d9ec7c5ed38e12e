"""Labelled hits: the (features, keep/remove) rows that training, evaluation and a sweep
all start from.

A producer's material is three folders of files sharing a song name: `audio/SONG.wav`
(the stem), `raw/SONG.mid` (what detection proposed) and `edited/SONG.mid` (what they
kept). The raw MIDI's note onsets are the detections, not a fresh detection run: the
producer's decisions were made on those hits, so they are the only ones with labels.
Songs missing a file are listed with the reason, never dropped in silence.

`labelled_hits` reads such folders; `rendered_hits` renders synthetic songs first
(`synth.py`), so a sweep can name its data by a `RenderConfig` alone. Both return the
song of every row, so cross-validation can keep a song's hits in one fold.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from midiforge import audio as audiomod
from midiforge import config as cfgmod
from midiforge.classifiers.drums import hitmidi, labels
from midiforge.classifiers.drums.detect import DrumDefaults, load_stem
from midiforge.classifiers.drums.features import FeatureConfig, hit_features
from midiforge.classifiers.drums.kit import check_stem
from midiforge.classifiers.drums.model import DrumTrainConfig
from midiforge.classifiers.drums.synth import RenderConfig, render_songs
from midiforge.errors import MidiforgeError
from midiforge.registry import sha256_file

log = logging.getLogger(__name__)


class SongFolderError(MidiforgeError, ValueError):
    """Training or test folders that hold no usable songs."""


@dataclass
class Song:
    name: str
    audio: Path
    raw: Path
    edited: Path


@dataclass
class LabelledHits:
    """One row per raw detection of every paired song."""

    x: np.ndarray  # (N, 7) float64, columns in FEATURES order
    y: np.ndarray  # (N,) int64, 1 = keep (matched to an edited hit), 0 = remove
    song: np.ndarray  # (N,) int64, index into `songs`: the CV group of each row
    # Per song: name, audio, raw, edited (paths as str), detections, edited_hits, keep.
    songs: list[dict[str, Any]] = field(default_factory=list)
    unpaired: list[dict[str, Any]] = field(default_factory=list)  # names left out, and why
    data_hash: str = ""  # sha256 over every paired file: the registry's training-data hash


def _by_name(folder: Path, extensions: tuple[str, ...]) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise SongFolderError(f"no folder {folder}")
    found: dict[str, list[Path]] = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.suffix.lower() in extensions:
            found.setdefault(p.stem, []).append(p)
    return found


def pair_songs(
    raw_dir: str | Path, edited_dir: str | Path, audio_dir: str | Path
) -> tuple[list[Song], list[dict[str, Any]]]:
    """Songs with exactly one file in each folder (matched by file stem), and every other
    name with its reason: missing_audio / missing_raw / missing_edited, or duplicate_X
    when a folder holds two files of that name."""
    folders = {
        "audio": _by_name(Path(audio_dir), audiomod.AUDIO_EXTENSIONS),
        "raw": _by_name(Path(raw_dir), (".mid", ".midi")),
        "edited": _by_name(Path(edited_dir), (".mid", ".midi")),
    }
    songs, unpaired = [], []
    for name in sorted(set().union(*folders.values())):
        files = {kind: found.get(name, []) for kind, found in folders.items()}
        reasons = [f"missing_{k}" for k, v in files.items() if not v]
        reasons += [f"duplicate_{k}" for k, v in files.items() if len(v) > 1]
        if reasons:
            unpaired.append({"song": name, "reason": ", ".join(reasons),
                             "files": [str(p) for v in files.values() for p in v]})  # fmt: skip
            log.warning("%s is left out: %s", name, unpaired[-1]["reason"].replace("_", " "))
            continue
        songs.append(Song(name, files["audio"][0], files["raw"][0], files["edited"][0]))
    return songs, unpaired


def song_table(
    song: Song, stem: str, feature_cfg: FeatureConfig, sr: int, tolerance_s: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, raw onsets, edited onsets) of one song."""
    audio = load_stem(song.audio, sr)
    raw = hitmidi.read_onsets(song.raw)
    edited = hitmidi.read_onsets(song.edited)
    feats = hit_features(audio, sr, raw, stem, feature_cfg)
    return feats, labels.label_detections(raw, edited, tolerance_s), raw, edited


def data_hash(songs: list[Song]) -> str:
    h = hashlib.sha256()
    for s in songs:
        for p in (s.audio, s.raw, s.edited):
            h.update(f"{s.name}:{sha256_file(p)}\n".encode())
    return h.hexdigest()


def labelled_hits(
    stem: str,
    raw_dir: str | Path,
    edited_dir: str | Path,
    audio_dir: str | Path,
    cfg: DrumTrainConfig | None = None,
) -> LabelledHits:
    """Features and keep/remove labels of every raw detection, computed as `cfg` (its
    feature windows, sample rate and match tolerance) says. Raises SongFolderError when
    no song has all three files."""
    check_stem(stem)
    cfg = cfg or DrumTrainConfig()
    songs, unpaired = pair_songs(raw_dir, edited_dir, audio_dir)
    if not songs:
        raise SongFolderError(
            f"no song has audio, raw and edited files ({len(unpaired)} names left out: "
            f"{', '.join(u['song'] for u in unpaired[:5]) or 'the folders are empty'})"
        )
    xs, ys, table, used = [], [], [], []
    for s in songs:
        try:
            feats, y, raw, edited = song_table(
                s, stem, cfg.features, cfg.sample_rate, cfg.tolerance_ms / 1000.0
            )
        except (audiomod.AudioError, hitmidi.HitFileError) as e:
            # One unusable song (a silent stem: a song without toms) is left out and
            # listed with the unpaired ones, not the end of the whole command.
            unpaired.append({"song": s.name, "reason": f"unusable: {e}",
                             "files": [str(s.audio), str(s.raw), str(s.edited)]})  # fmt: skip
            log.warning("%s is left out: %s", s.name, e)
            continue
        used.append(s)
        xs.append(feats)
        ys.append(y)
        table.append({"song": s.name, "audio": str(s.audio), "raw": str(s.raw),
                      "edited": str(s.edited), "detections": len(raw),
                      "edited_hits": len(edited), "keep": int(y.sum())})  # fmt: skip
    if not used:
        raise SongFolderError(
            f"no usable song: {'; '.join(u['song'] + ': ' + u['reason'] for u in unpaired[:5])}"
        )
    return LabelledHits(
        x=np.vstack(xs),
        y=np.concatenate(ys).astype(np.int64),
        song=np.concatenate([np.full(len(y), i, np.int64) for i, y in enumerate(ys)]),
        songs=table,
        unpaired=unpaired,
        data_hash=data_hash(used),
    )


def ensure_rendered(
    render: RenderConfig, out_dir: str | Path, defaults: DrumDefaults | None = None
) -> Path:
    """Synthetic songs for `render.stem` in out_dir, rendered unless out_dir/render.yaml
    says the same songs are already there (renders take seconds per song; a sweep's
    driver should not pay them twice)."""
    render.validate_config()
    out = Path(out_dir)
    stamp = out / "render.yaml"
    if not (stamp.is_file() and cfgmod.read_yaml(stamp) == cfgmod.to_dict(render)):
        if (out / "audio").is_dir() and any((out / "audio").iterdir()):
            raise SongFolderError(
                f"{out} holds songs of another render (see {stamp.name}); give an empty "
                "or new folder so old songs do not mix into these"
            )
        render_songs(render.stem, render.songs, render.seconds, out, render.seed,
                     defaults=defaults)  # fmt: skip
        cfgmod.save(render, stamp)
    return out


def rendered_hits(
    render: RenderConfig,
    out_dir: str | Path,
    cfg: DrumTrainConfig | None = None,
    defaults: DrumDefaults | None = None,
) -> LabelledHits:
    """`labelled_hits` on the synthetic songs of `ensure_rendered`."""
    out = ensure_rendered(render, out_dir, defaults)
    return labelled_hits(render.stem, out / "raw", out / "edited", out / "audio", cfg)


def summary(hits: LabelledHits) -> dict[str, Any]:
    """Counts for logs and reports."""
    return {
        "songs": len(hits.songs),
        "detections": len(hits.y),
        "keep": int(hits.y.sum()),
        "remove": int(len(hits.y) - hits.y.sum()),
    }


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    Path(path).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return Path(path)

"""List the job's inputs from local paths or any pyarrow filesystem URI.

Every file found becomes one input row; a file with an extension we do not read
becomes a reject row at stage `list`, so `accepted + rejected == inputs` counts it.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

import pyarrow.fs as pafs

from midiforge.audio import AUDIO_EXTENSIONS

MIDI_EXTENSIONS = (".mid", ".midi")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Input:
    source_uri: str
    kind: str  # "audio" | "midi" | "unknown"
    tier: int
    style: str
    reference_uri: str = ""
    # Size and modification time when listed: a file changed in place since its work row
    # was made is redone on a re-run (the check make and rsync use; hashing every input
    # would read a whole bucket on each re-run).
    stamp: str = ""

    @property
    def piece_id(self) -> str:
        return piece_id(self.source_uri)


def piece_id(uri: str) -> str:
    """Stable id of a source: the same file URI always gives the same id."""
    return hashlib.sha256(uri.encode()).hexdigest()[:16]


def _is_uri(s: str) -> bool:
    return "://" in s


@functools.lru_cache(maxsize=32)
def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if _is_uri(root):
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), _local_path(root)


def _local_path(path: str) -> str:
    """Absolute, with "." and ".." folded (`../proj/midi` and `midi` from inside proj/
    name one file once), but not resolved: a symlinked file keeps the path the user gave
    as its identity (resolving would merge every link to one target into one input)."""
    # Path has no lexical-only absolute form: resolve() would follow the links
    return os.path.abspath(os.path.expanduser(path))  # noqa: PTH100, PTH111


def _join_uri(root: str, found: str) -> str:
    """The URI of a file found under `root`, in the same form the user gave."""
    if not _is_uri(root):
        return found
    scheme, rest = root.split("://", 1)
    query = ("?" + rest.split("?", 1)[1]) if "?" in rest else ""
    return f"{scheme}://{found}{query}"


def list_files(root: str) -> list[str]:
    """Every file under a folder (recursively), or the file itself, as URIs/paths."""
    return list(listing(root))


def listing(root: str) -> dict[str, str]:
    """{URI/path: stamp} of every file under a folder (recursively), or of the file itself,
    in path order. The stamp is the file's size and modification time."""
    fs, path = _filesystem(root)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"input not found: {root}")
    if info.type == pafs.FileType.File:
        return {_join_uri(root, path): _stamp(info)}
    entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    # Hidden files (.DS_Store, editor swap files) are not inputs anyone meant to give.
    files = sorted(
        (e for e in entries if e.type == pafs.FileType.File and not e.base_name.startswith(".")),
        key=lambda e: e.path,
    )
    return {_join_uri(root, e.path): _stamp(e) for e in files}


def _stamp(info: pafs.FileInfo) -> str:
    return f"{info.size}:{info.mtime_ns or 0}"


class TooLargeError(Exception):
    """A file over the size limit, found from its size before any byte is read."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"{size} bytes > maximum {limit} bytes (max_input_bytes)")


def _locate(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem (cached per bucket) and path of a local path or a URI."""
    if not _is_uri(uri):
        return pafs.LocalFileSystem(), _local_path(uri)
    scheme, rest = uri.split("://", 1)
    if scheme == "file":
        # A file URI names no bucket and takes no options: all that follows file:// is
        # the absolute path as list_files wrote it ("?" or "%20" in a name stay as is).
        return pafs.LocalFileSystem(), rest
    path, _, query = rest.partition("?")
    bucket = path.split("/", 1)[0]
    return _filesystem(f"{scheme}://{bucket}" + (f"?{query}" if query else ""))[0], path


def read_bytes(uri: str, max_bytes: int | None = None) -> bytes:
    """Whole file from a local path or a URI; TooLargeError, before reading, if the file
    holds more than `max_bytes`."""
    fs, path = _locate(uri)
    with fs.open_input_file(path) as f:
        size = f.size()
        if max_bytes is not None and size > max_bytes:
            raise TooLargeError(size, max_bytes)
        return f.read()


def _name(uri: str) -> PurePosixPath:
    return PurePosixPath(uri.split("://", 1)[-1].split("?", 1)[0])


def _style_for(uri: str, style: str | None, from_folder: bool) -> str:
    if from_folder:
        return _name(uri).parent.name or "unknown"
    return style or "unknown"


def linked_pieces(inputs: list[Input]) -> dict[str, str]:
    """{piece_id: group id} for inputs that are one song in more than one file: an audio
    file and the input matched to it as its reference MIDI, or files that differ only in
    their extension in one folder (song.wav, song.mid). The split keeps a group together,
    so a song's transcription never trains a model that is tested on its MIDI. A group's
    id is its smallest piece_id; inputs linked to nothing are left out."""
    parent = {i.piece_id: i.piece_id for i in inputs}

    def root(p: str) -> str:
        while parent[p] != p:
            parent[p] = p = parent[parent[p]]
        return p

    def union(a: str, b: str) -> None:
        ra, rb = root(a), root(b)
        parent[max(ra, rb)] = min(ra, rb)

    by_uri = {i.source_uri: i.piece_id for i in inputs}
    by_song: dict[str, str] = {}
    for i in inputs:
        if i.reference_uri in by_uri:
            union(i.piece_id, by_uri[i.reference_uri])
        song = str(_name(i.source_uri).with_suffix(""))
        union(i.piece_id, by_song.setdefault(song, i.piece_id))
    groups: dict[str, list[str]] = {}
    for p in parent:
        groups.setdefault(root(p), []).append(p)
    return {p: g for g, members in groups.items() if len(members) > 1 for p in members}


def reference_for(audio_uri: str, refs: dict[str, list[str]]) -> str:
    """The reference MIDI of an audio file: the one MIDI file with its stem, or where
    several share it (style folders a/t1.mid, b/t1.mid), the one in a folder of the same
    name as the audio's. Otherwise none, with a warning: a guess would score the piece
    against another song's notes and split the song from its own MIDI."""
    name = _name(audio_uri)
    found = refs.get(name.stem, [])
    if len(found) > 1:
        same_folder = [r for r in found if _name(r).parent.name == name.parent.name]
        if len(same_folder) != 1:
            log.warning(
                "%s has no reference MIDI: %d MIDI files share its stem, %d of them in a "
                "folder named %r",
                audio_uri, len(found), len(same_folder), name.parent.name,
            )  # fmt: skip
            return ""
        found = same_folder
    return found[0] if found else ""


def list_inputs(
    audio: list[str],
    midi: list[str],
    *,
    style: str | None,
    style_from_folder: bool,
    tier_midi: int,
    reference_midi: list[str] | None = None,
) -> list[Input]:
    """All inputs in a stable order, with reference MIDI matched to audio by file stem
    (see reference_for)."""
    refs: dict[str, list[str]] = {}
    for root in reference_midi or []:
        for f in list_files(root):
            if _name(f).suffix.lower() in MIDI_EXTENSIONS:
                refs.setdefault(_name(f).stem, []).append(f)
    # A file may be found under both flags (one folder of mixed files given as --audio
    # and --midi): its extension decides what it is, the flags only say where to look.
    found: dict[str, set[str]] = {}
    stamps: dict[str, str] = {}
    for roots, flag in ((audio, "audio"), (midi, "midi")):
        for root in roots:
            for f, stamp in listing(root).items():
                found.setdefault(f, set()).add(flag)
                stamps[f] = stamp
    out: list[Input] = []
    for f, flags in found.items():
        ext = _name(f).suffix.lower()
        st = _style_for(f, style, style_from_folder)
        if ext in AUDIO_EXTENSIONS and "audio" in flags:
            out.append(Input(f, "audio", 2, st, reference_for(f, refs), stamp=stamps[f]))
        elif ext in MIDI_EXTENSIONS and "midi" in flags:
            out.append(Input(f, "midi", tier_midi, st, stamp=stamps[f]))
        else:
            kind_tier = 2 if "audio" in flags else tier_midi
            out.append(Input(f, "unknown", kind_tier, st, stamp=stamps[f]))
    return out

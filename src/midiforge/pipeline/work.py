"""Per-input results under OUT/_work/: what makes a re-run resume.

Each processed batch is written as one Parquet file, through a temporary name and a
move, so a killed run leaves only whole files. A re-run skips every input whose
piece_id is already in a work file (unless stale_pieces says it must be redone); the
final phase (split, augment, write) reads the work files and is deterministic, so a
resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import secrets
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from midiforge.config import ConfigError, setting_changes
from midiforge.pipeline import schema
from midiforge.pipeline.inputs import _filesystem
from midiforge.pipeline.stages import Batch, rows_of

WORK_DIR = "_work"
SETTINGS_FILE = "_settings.json"  # "_": Parquet readers of the folder skip it


def _tokens(b: bytes) -> list[int]:
    return np.frombuffer(b, dtype=np.int32).tolist() if b else []


def to_work_table(batch: Batch) -> pa.Table:
    rows = rows_of(batch)
    cols = {name: [r.get(name) for r in rows] for name in schema.WORK.names}
    cols["tokens"] = [_tokens(r["tokens"]) for r in rows]
    return pa.table(cols, schema=schema.WORK)


def write_work(batch: Batch, out: str) -> None:
    """Write a batch's finished rows under OUT/_work/ as one Parquet file."""
    table = to_work_table(batch)
    fs, base = _filesystem(out)
    work = f"{base}/{WORK_DIR}"
    fs.create_dir(work, recursive=True)
    ids = sorted(table.column("piece_id").to_pylist())
    name = hashlib.sha256("\n".join(ids).encode()).hexdigest()[:20]
    buf = io.BytesIO()
    pq.write_table(table, buf)
    tmp = f"{work}/.tmp-{name}-{secrets.token_hex(4)}"
    with fs.open_output_stream(tmp) as f:
        f.write(buf.getvalue())
    fs.move(tmp, f"{work}/part-{name}.parquet")


def work_files(out: str) -> list[str]:
    fs, base = _filesystem(out)
    work = f"{base}/{WORK_DIR}"
    if fs.get_file_info(work).type == pafs.FileType.NotFound:
        return []
    entries = fs.get_file_info(pafs.FileSelector(work))
    return sorted(e.path for e in entries if e.base_name.startswith("part-"))


def file_name(path: str) -> str:
    """A work file's name: what the rules below compare, since the same file's path
    reads differently through pyarrow, Ray Data and S3 ("bucket/key" or "/abs/path")."""
    return posixpath.basename(path)


def _winners(ids_by_file: Iterable[tuple[str, list[str]]]) -> dict[str, str]:
    """{piece_id: name of the work file whose row counts}. A piece is processed twice
    when a killed run's workers finish a batch the driver never saw: the first file by
    name wins, so every reader keeps the same row. (A file never holds a piece twice:
    a run's inputs are unique.)"""
    win: dict[str, str] = {}
    for name, ids in ids_by_file:
        for i in ids:
            win.setdefault(i, name)
    return win


def read_work(out: str, columns: list[str] | None = None, *, with_file: bool = False) -> pa.Table:
    """All work rows, one per piece: its row in its winning file (see _winners).
    with_file: add `work_file`, the path of that file (what the final phase reads)."""
    fs, _ = _filesystem(out)
    names = columns or schema.WORK.names
    read = list(dict.fromkeys(["piece_id", *names]))
    paths = {file_name(p): p for p in work_files(out)}
    tables = {name: _read_columns(fs, p, read) for name, p in paths.items()}
    if not tables:
        empty = schema.WORK.empty_table().select(names)
        return empty.append_column("work_file", pa.array([], pa.string())) if with_file else empty
    win = _winners((name, t.column("piece_id").to_pylist()) for name, t in tables.items())
    kept = []
    for name, table in tables.items():
        mine = [win[i] == name for i in table.column("piece_id").to_pylist()]
        rows = table.filter(pa.array(mine, pa.bool_()))
        kept.append(
            rows.append_column("work_file", pa.array([paths[name]] * len(rows), pa.string()))
        )
    return pa.concat_tables(kept).select([*names, "work_file"] if with_file else names)


def _read_columns(fs: pafs.FileSystem, path: str, names: list[str]) -> pa.Table:
    """`names` of a work file; a column its midiforge version did not write yet (such as
    source_stamp) reads as nulls."""
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        have = set(pf.schema_arrow.names)
        table = pf.read(columns=[n for n in names if n in have])
    for n in names:
        if n not in have:
            field = schema.WORK.field(n)
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(names)


# Rejects that say more about the moment than the file (a storage hiccup, a device out of
# memory): a re-run tries these inputs again instead of keeping the reject.
RETRY_REASONS = frozenset({"read_failed", "model_failed", "separation_failed"})


def stale_pieces(out: str, listed: dict[str, tuple[str, str]]) -> set[str]:
    """Pieces of `listed` ({piece_id: (kind, stamp) as listed now}) whose work row a re-run
    must redo: the file changed since (its size or modification time, Input.stamp), a row
    made for another kind (a .mid file rejected as unsupported when only --audio listed
    it, now given under --midi), or a reject of RETRY_REASONS."""
    columns = ["piece_id", "kind", "source_stamp", "status", "reason"]
    rows = read_work(out, columns=columns).to_pylist()
    stale = set()
    for r in rows:
        if r["piece_id"] not in listed:
            continue
        kind, stamp = listed[r["piece_id"]]
        # No stamp: a row from before stamps were recorded, kept as it was.
        changed = bool(r["source_stamp"] and stamp and r["source_stamp"] != stamp)
        retry = r["status"] != "ok" and r["reason"] in RETRY_REASONS
        if changed or r["kind"] != kind or retry:
            stale.add(r["piece_id"])
    return stale


def drop_rows(out: str, pieces: set[str]) -> None:
    """Remove every work row of `pieces` (in all files, duplicates included), so that the
    rows a re-run writes for them are their only ones. Each file is replaced whole."""
    if not pieces:
        return
    fs, _ = _filesystem(out)
    for path in work_files(out):
        table = pq.read_table(path, filesystem=fs)
        keep = [i not in pieces for i in table.column("piece_id").to_pylist()]
        if all(keep):
            continue
        if not any(keep):
            fs.delete_file(path)
            continue
        buf = io.BytesIO()
        pq.write_table(table.filter(pa.array(keep, pa.bool_())), buf)
        folder, name = posixpath.split(path)
        tmp = f"{folder}/.tmp-{name}-{secrets.token_hex(4)}"  # not a "part-" file
        with fs.open_output_stream(tmp) as f:
            f.write(buf.getvalue())
        fs.move(tmp, path)


def check_settings(out: str, settings: dict[str, Any]) -> None:
    """Reuse work rows only under the settings that made them: rows of another
    transcriber, thresholds or tokenizer would otherwise be mixed silently into the new
    dataset (its tokenizer.json then describing none of their tokens). Records the
    settings when OUT holds no work yet (or work from before they were recorded)."""
    fs, base = _filesystem(out)
    path = f"{base}/{WORK_DIR}/{SETTINGS_FILE}"
    now = json.loads(json.dumps(settings))  # tuples as lists, as they read back
    if work_files(out) and fs.get_file_info(path).type == pafs.FileType.File:
        with fs.open_input_stream(path) as f:
            before = json.loads(f.read())
        changes = "; ".join(setting_changes(before, now))
        if changes:
            raise ConfigError(
                f"{out} holds work made with other settings ({changes}). Re-run with the "
                f"earlier settings, or start afresh: another --out, or delete {out}/{WORK_DIR}"
            )
        return
    fs.create_dir(f"{base}/{WORK_DIR}", recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(now, indent=1, sort_keys=True).encode())

"""The dataset job's Parquet output -> fixed-length training windows for the language model.

Each piece (and each augmented copy) becomes one or more windows of `seq_len` ids: the
conditioning prefix [BOS, Style, Key] and then a run of REMI tokens that starts on a Bar
token, so every window begins where music can begin. Windows are padded with PAD; the
loss ignores padding (label -100).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from midiforge.errors import MidiforgeError
from midiforge.lm.vocab import LMVocab

log = logging.getLogger(__name__)
IGNORE = -100


class DataError(MidiforgeError, ValueError):
    """A dataset the language model cannot train on; the message says why."""


@dataclass
class Piece:
    piece_id: str
    style: str
    key: str  # the copy's key, transposition applied
    transpose: int
    tokens: np.ndarray  # int32 REMI ids


def _fs_and_path(uri: str):
    from midiforge.pipeline.inputs import _filesystem

    return _filesystem(uri)


def load_tokenizer(dataset_uri: str, local_dir: str | Path):
    """The dataset's own tokenizer.json, copied next to the model being trained."""
    from midiforge.symbolic.tokenize import load_tokenizer as load

    fs, base = _fs_and_path(dataset_uri)
    dst = Path(local_dir) / "tokenizer.json"
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fs.open_input_stream(f"{base}/tokenizer.json") as f:
            dst.write_bytes(f.read())
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{dataset_uri}: no tokenizer.json (is it a dataset job's --out?)") from e
    return load(dst)


def read_pieces(
    dataset_uri: str,
    split: str,
    styles: list[str] | None = None,
    exclude_styles: list[str] | None = None,
) -> list[Piece]:
    """Rows of one split (train | val | test), filtered by style."""
    import pyarrow.dataset as pads

    fs, base = _fs_and_path(dataset_uri)
    try:
        ds = pads.dataset(f"{base}/dataset", filesystem=fs, format="parquet", partitioning="hive")
        cols = ["piece_id", "style", "key", "augmentation", "tokens", "split"]
        table = ds.to_table(columns=cols, filter=pads.field("split") == split)
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{dataset_uri}: no readable dataset/ folder ({e})") from e
    pieces = []
    for r in table.to_pylist():
        if styles and r["style"] not in styles:
            continue
        if exclude_styles and r["style"] in exclude_styles:
            continue
        if r["key"] and r["tokens"]:
            pieces.append(piece_from_row(r))
    pieces.sort(key=lambda p: (p.piece_id, p.transpose, len(p.tokens)))
    return pieces


def piece_from_row(r: dict) -> Piece:
    """A dataset row as a training piece. Its key column is the key estimated on the copy
    itself (so transposition is already in it); `transpose` only orders copies."""
    t = int(json.loads(r["augmentation"] or "{}").get("transpose", 0))
    return Piece(r["piece_id"], r["style"], r["key"], t, np.asarray(r["tokens"], np.int32))


def style_programs(pieces: list[Piece], tokenizer, min_share: float = 0.01) -> dict[str, list[int]]:
    """{style: GM programs} that make up at least `min_share` of each style's notes."""
    from collections import Counter

    program_of = {i: int(n.removeprefix("Program_")) for n, i in tokenizer.vocab.items()
                  if n.startswith("Program_")}  # fmt: skip
    counts: dict[str, Counter] = {}
    for p in pieces:
        c = counts.setdefault(p.style, Counter())
        c.update(program_of[t] for t in p.tokens.tolist() if t in program_of)
    return {
        s: sorted(g for g, n in c.items() if n >= min_share * sum(c.values()))
        for s, c in counts.items()
    }


def bar_starts(tokens: np.ndarray, bar_id: int) -> np.ndarray:
    return np.flatnonzero(tokens == bar_id)


def windows(pieces: list[Piece], vocab: LMVocab, seq_len: int, bar_id: int) -> np.ndarray:
    """(n, seq_len) int64 ids. A piece longer than one window yields several, each starting
    at a Bar token, stepping by about half a window so every bar is seen in context."""
    body = seq_len - 3
    if body < 16:
        raise DataError(f"seq_len {seq_len} leaves no room for music after the prefix")
    rows = []
    for p in pieces:
        prefix = vocab.prefix(p.style, p.key)
        toks = np.concatenate([p.tokens.astype(np.int64), [vocab.eos]])
        starts = bar_starts(p.tokens, bar_id)
        starts = starts if len(starts) else np.array([0])
        next_start = 0
        for s in starts:
            if s < next_start:
                continue
            chunk = toks[s : s + body]
            row = np.full(seq_len, vocab.pad, np.int64)
            row[: 3 + len(chunk)] = np.concatenate([prefix, chunk])
            rows.append(row)
            if s + body >= len(toks):
                break
            next_start = s + body // 2
    if not rows:
        return np.zeros((0, seq_len), np.int64)
    return np.stack(rows)


def labels_for(ids, pad: int):
    """Next-token labels are the ids themselves (the model shifts); padding is ignored and
    the conditioning prefix is never a target: it is given, not predicted."""
    labels = ids.clone()
    labels[ids == pad] = IGNORE
    labels[:, :3] = IGNORE
    return labels

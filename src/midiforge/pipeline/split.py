"""80/10/10 split by piece, stratified by tier and style, a song given in two forms (audio
and MIDI) kept in one split; then augmentation of the chosen splits.

The split depends only on (seed, the set of accepted pieces, their tiers, styles and links),
never on the order work finished in, so resumed and uninterrupted runs agree. Augmented copies
keep their piece's split: no piece crosses splits.
"""

from __future__ import annotations

import hashlib
import json
import logging

import numpy as np
import pyarrow as pa

from midiforge.pipeline import schema

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ORIGINAL = {"transpose": 0, "tempo_scale": 1.0, "velocity_delta": 0, "octave": 0}


def _rank(seed: int, piece_id: str) -> str:
    return hashlib.sha256(f"{seed}:{piece_id}".encode()).hexdigest()


def split_counts(n: int, fractions: tuple[float, float, float]) -> tuple[int, int, int]:
    """Pieces per split; with 3+ pieces each non-empty fraction gets at least one."""
    val = round(n * fractions[1])
    test = round(n * fractions[2])
    if n >= 3:
        val = max(val, 1 if fractions[1] > 0 else 0)
        test = max(test, 1 if fractions[2] > 0 else 0)
    # Two halves of 3 both round up to 2: never more held out than there are pieces.
    val = min(val, n)
    test = min(test, n - val)
    return n - val - test, val, test


def assign_splits(
    pieces: list[tuple],
    fractions: tuple[float, float, float],
    seed: int,
    groups: dict[str, str] | None = None,
) -> dict[str, str]:
    """{piece_id: split} for (piece_id, *stratum) tuples, e.g. (piece_id, tier, style).

    Each stratum is split on its own, so every style (of every tier) with 3+ songs has
    validation and test pieces: a style-conditioned model is evaluated on each style.
    `groups` ({piece_id: group id}, from `inputs.linked_pieces`) names pieces that are
    one song: a group is split as one piece, its lead (lowest stratum, then rank) stands
    for it in the lead's stratum, and every member takes the lead's split. Pieces in no
    group split exactly as they would without groups."""
    groups = groups or {}
    stratum_of = {p: tuple(stratum) for p, *stratum in pieces}
    members: dict[str, list[str]] = {}
    for p in stratum_of:
        members.setdefault(groups.get(p, p), []).append(p)
    lead = {
        g: min(ps, key=lambda p: (repr(stratum_of[p]), _rank(seed, p))) for g, ps in members.items()
    }
    strata: dict[tuple, set[str]] = {}
    for p in lead.values():
        strata.setdefault(stratum_of[p], set()).add(p)
    lead_split: dict[str, str] = {}
    for key in sorted(strata, key=repr):
        ids = sorted(strata[key], key=lambda p: _rank(seed, p))
        n_train, n_val, _ = split_counts(len(ids), fractions)
        for i, p in enumerate(ids):
            lead_split[p] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return {p: lead_split[lead[groups.get(p, p)]] for p in stratum_of}


def _piece_rng(seed: int, piece_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, int(piece_id[:15], 16)])


def expand(
    table: pa.Table,
    *,
    splits: dict[str, str],
    augment_splits: list[str],
    aug_cfg,
    tokenizer,
    seed: int,
    key_profiles=None,
) -> pa.Table:
    """Work rows (accepted) -> dataset rows: each piece once, plus its augmented copies.
    key_profiles: as for `validate.analyze`."""
    from midiforge.symbolic import augment, tokenize, validate

    out: list[dict] = []
    dropped = 0
    for r in table.to_pylist():
        split = splits[r["piece_id"]]
        base = {k: r[k] for k in schema.DATASET.names if k in r}
        out.append({**base, "split": split, "augmentation": json.dumps(ORIGINAL)})
        if split not in augment_splits:
            continue
        for applied, midi in augment.augment(r["midi"], _piece_rng(seed, r["piece_id"]), aug_cfg):
            ids, reason, _ = tokenize.encode(tokenizer, midi)
            if reason:
                dropped += 1  # a copy the tokenizer cannot hold is left out, not the piece
                continue
            stats = validate.analyze(midi, key_profiles=key_profiles)
            row = {**base, **{k: stats[k] for k in schema.DATASET.names if k in stats}}
            row.update(
                split=split, augmentation=json.dumps(applied), midi=midi, tokens=ids.tolist()
            )
            out.append(row)
    if dropped:
        log.info("%d augmented copies dropped: the tokenizer cannot hold them", dropped)
    return pa.Table.from_pylist(out, schema=schema.DATASET)


class Expand:
    """map_batches wrapper (pyarrow batches): one tokenizer per actor."""

    def __init__(  # noqa: PLR0917 - Ray Data passes fn_constructor_args positionally
        self, splits, augment_splits, aug_cfg, tokenizer_settings, seed, key_profiles=None
    ) -> None:
        from midiforge.symbolic.tokenize import make_tokenizer

        self.kwargs = {
            "splits": splits,
            "augment_splits": augment_splits,
            "aug_cfg": aug_cfg,
            "tokenizer": make_tokenizer(tokenizer_settings),
            "seed": seed,
            "key_profiles": key_profiles,
        }

    def __call__(self, table: pa.Table) -> pa.Table:
        return expand(table, **self.kwargs)

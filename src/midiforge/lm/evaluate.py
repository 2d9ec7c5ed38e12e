"""`midiforge lm evaluate`: generate N melodies per configuration and score them against
the style's held-out test split, or its val split for choosing settings (metrics defined
in lm.metrics).

Sample i of every configuration uses the same condition and seed: the key, tempo and
time signature of reference piece i (cycling), seed + i. That pairing is what the Wilcoxon
signed-rank tests in results.json rely on. Perplexity is each neural model's on the same
split's tokens (its own conditioning prefix given, never scored). The neural models
sample with the given temperature and top-p; the rule-based generator has neither.
"""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path
from typing import Any

from midiforge import midi_io
from midiforge.lm import data as lm_data
from midiforge.lm import metrics
from midiforge.lm.data import DataError

log = logging.getLogger(__name__)


def _bar_seconds(bpm: float, time_signature: str) -> float:
    num, _, den = (time_signature or "4/4").partition("/")
    quarters = int(num) * 4 / int(den or 4)
    return quarters * 60.0 / (bpm or 120.0)


def reference_rows(dataset: str, style: str, split: str = "test") -> list[dict[str, Any]]:
    """The style's pieces in `split`, original copies only (augmented copies are not the
    music)."""
    import json

    import pyarrow.dataset as pads

    from midiforge.pipeline.inputs import _filesystem

    fs, base = _filesystem(dataset)
    ds = pads.dataset(f"{base}/dataset", filesystem=fs, format="parquet", partitioning="hive")
    cols = ["piece_id", "style", "key", "bpm", "time_signature", "augmentation", "midi", "tokens"]
    flt = (pads.field("split") == split) & (pads.field("style") == style)
    rows = [
        r
        for r in ds.to_table(columns=cols, filter=flt).to_pylist()
        if json.loads(r["augmentation"] or "{}").get("transpose", 0) == 0
    ]
    rows.sort(key=lambda r: r["piece_id"])
    if not rows:
        raise DataError(f"{dataset}: no {split} pieces of style {style!r}")
    return rows


def _time_signature(tokens, inv: dict[int, str]) -> str:
    """A piece's time signature as its tokens spell it (the tokenizer writes 2/2 as 4/4,
    for one), so every generator is asked for one it can write."""
    names = (inv.get(t, "") for t in tokens)
    return next((n.removeprefix("TimeSig_") for n in names if n.startswith("TimeSig_")), "4/4")


def _piece(midi: bytes, bar_s: float, key: str) -> metrics.Piece:
    notes = midi_io.notes_array(midi_io.load_midi(midi))
    return metrics.Piece(notes=notes, bar_s=bar_s, key=key)


def _bpm(row: dict[str, Any]) -> float:
    bpm = float(row["bpm"] or 120.0)
    return bpm if math.isfinite(bpm) and bpm > 0 else 120.0


def _request_bpm(row: dict[str, Any]) -> int:
    """The piece's tempo as a generation request takes it (20..300): a dataset's bpm is
    its MIDI's first tempo, which can be anything, and one odd piece must not end the
    evaluation. The reference's own metrics keep its real tempo."""
    return min(max(round(_bpm(row)), 20), 300)


def evaluate(  # noqa: PLR0917 - mirrors the command's flags
    models: list[str],
    dataset: str,
    style: str,
    n: int,
    bars: int,
    out: str,
    models_root: str | None = None,
    seed: int = 0,
    *,
    split: str = "test",
    temperature: float | None = None,
    top_p: float | None = None,
) -> dict[str, Any]:
    from midiforge.lm.generate import GenerateRequest, Generator

    # None: the sampling `midiforge generate` and Serve use by default
    temperature = GenerateRequest.temperature if temperature is None else temperature
    top_p = GenerateRequest.top_p if top_p is None else top_p
    rows = reference_rows(dataset, style, split)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = lm_data.load_tokenizer(dataset, tmp)
    inv = {v: k for k, v in tokenizer.vocab.items()}
    timesigs = [_time_signature(r["tokens"], inv) for r in rows]
    # Each configuration plays the instruments of the style it is conditioned on (its
    # train split's), as a user of that model gets by default.
    programs = lm_data.style_programs(lm_data.read_pieces(dataset, "train"), tokenizer)
    reference = [
        _piece(r["midi"], _bar_seconds(_bpm(r), r["time_signature"]), r["key"]) for r in rows
    ]
    configs: dict[str, list[metrics.Piece]] = {}
    perplexity: dict[str, float | None] = {}
    conditioning: dict[str, str] = {}
    for name in models:
        gen = Generator.load(name, models_root=models_root)
        cond_style = gen.style_for(style)
        conditioning[name] = cond_style
        pieces = []
        for i in range(n):
            r = rows[i % len(rows)]
            req = GenerateRequest(
                style=cond_style, key=r["key"], bpm=_request_bpm(r), bars=bars,
                time_signature=timesigs[i % len(rows)],
                programs=programs.get(cond_style), seed=seed + i,
                temperature=temperature, top_p=top_p,
            )  # fmt: skip
            res = gen.generate(req)
            pieces.append(_piece(res.midi, _bar_seconds(req.bpm, req.time_signature), req.key))
        configs[name] = pieces
        perplexity[name] = gen.perplexity(
            [r["tokens"] for r in rows], cond_style, [r["key"] for r in rows]
        )
        log.info("%s: %d melodies, perplexity %s", name, n, perplexity[name])
    results = metrics.evaluate_configs(reference, configs, perplexity)
    results = {"style": style, **results, "conditioning": conditioning, "bars": bars,
               "programs": {name: programs.get(s) for name, s in conditioning.items()},
               "reference_pieces": len(reference), "seed": seed, "split": split,
               "temperature": temperature, "top_p": top_p}  # fmt: skip
    Path(out).mkdir(parents=True, exist_ok=True)
    metrics.write_results(results, out)
    return results

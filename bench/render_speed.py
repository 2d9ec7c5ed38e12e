"""Rendering speed: audio-seconds per wall-second for midiforge's renderer and, as the
baseline, pretty_midi's own PrettyMIDI.fluidsynth() (one synth per instrument, summed),
on the same excerpts in the same run.

    .venv/bin/python bench/render_speed.py [--seconds 30] [--repeats 3]
"""

from __future__ import annotations

import argparse
import random
import time

from midiforge import corpus, render


def _pieces(seconds: float):
    cands = [
        corpus.Candidate("quartet", "haydn/opus74no1/movement1.mxl"),
        corpus.Candidate("chorale", "bach/bwv1.6.mxl"),
        corpus.select("fiddle", 0)[0],
    ]
    out = []
    for c in cands:
        pm, _ = corpus.score_to_midi(c, seconds)
        corpus.assign_programs(pm, c.style, vary=False, rng=random.Random(0))
        out.append((c.piece_id, pm))
    return out


def _rate(fn, pieces, repeats: int) -> float:
    best = float("inf")
    audio_s = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        audio_s = sum(len(fn(pm)) / render.DEFAULT_SAMPLE_RATE for _, pm in pieces)
        best = min(best, time.perf_counter() - t0)
    return audio_s / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    pieces = _pieces(args.seconds)
    sf2 = str(render.default_soundfont())
    ours = _rate(lambda pm: render.render_midi(pm, sf2), pieces, args.repeats)
    base = _rate(
        lambda pm: pm.fluidsynth(fs=render.DEFAULT_SAMPLE_RATE, sf2_path=sf2), pieces, args.repeats
    )
    names = ", ".join(p for p, _ in pieces)
    print(f"pieces: {names} ({args.seconds:g} s each), best of {args.repeats}")
    print(f"midiforge.render.render_midi     {ours:8.1f} audio-s per wall-s")
    print(f"baseline PrettyMIDI.fluidsynth   {base:8.1f} audio-s per wall-s")
    print(f"speed-up                         {ours / base:8.2f}x")


if __name__ == "__main__":
    main()

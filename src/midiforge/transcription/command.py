"""Flags of `midiforge extract` and `midiforge compare`; each run_* calls one library
function and prints its result (the CLI is the only place that prints)."""

from __future__ import annotations

import argparse

from midiforge import config as cfgmod


def _decoding_flags(p: argparse.ArgumentParser) -> None:
    # Unset: the model's own (its decoding.yaml), else basic-pitch's.
    own = "default: the model's decoding.yaml, else"
    p.add_argument("--onset-threshold", type=float, help=f"note onset threshold ({own} 0.5)")
    p.add_argument("--frame-threshold", type=float, help=f"note frame threshold ({own} 0.3)")
    p.add_argument("--min-note-ms", type=float, help=f"shortest note kept ({own} 127.7 ms)")
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")


def add_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="audio file (.wav .flac .mp3 .ogg)")
    p.add_argument(
        "--model", default="stock", help="'stock', a registry name, an .onnx file or a folder"
    )
    p.add_argument("--out", help="output .mid (default: the input's name with .mid, beside it)")
    _decoding_flags(p)


def run_extract(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.transcription.extract import extract
    from midiforge.transcription.notes import NoteDecoding

    del overrides  # extract has no config file; cli.py refuses overrides without --config
    given = {
        "onset_threshold": args.onset_threshold,
        "frame_threshold": args.frame_threshold,
        "minimum_note_ms": args.min_note_ms,
    }
    decoding = NoteDecoding(**{k: v for k, v in given.items() if v is not None})
    s = extract(
        args.input, model=args.model, out=args.out, decoding=decoding, models_root=args.models_root
    )
    print(
        f"{s['out']}: {s['notes']} notes from {s['duration_s']:.1f} s of audio "
        f"({s['model']}: {s['model_path']})"
    )
    return 0


def add_compare(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models", help="comma list: 'stock', registry names, .onnx files, model folders"
    )
    p.add_argument("--input", help="audio file or folder (searched recursively)")
    p.add_argument("--reference", help="MIDI file or folder, paired to audio by file name")
    p.add_argument("--out", help="folder for results.json, config.yaml and piano rolls")
    p.add_argument("--plots", type=int, help="piano rolls per model (default 3)")
    p.add_argument("--config", help="YAML config file")
    _decoding_flags(p)


def run_compare(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.transcription.compare import CompareConfig, compare, format_table

    cfg = cfgmod.load(
        CompareConfig,
        args.config,
        overrides,
        models=args.models,
        input=args.input,
        reference=args.reference,
        out=args.out,
        plots=args.plots,
        onset_threshold=args.onset_threshold,
        frame_threshold=args.frame_threshold,
        min_note_ms=args.min_note_ms,
        models_root=args.models_root,
    )
    results = compare(cfg)
    print(format_table(results))
    for u in results["unpaired"]:
        print(f"not scored ({u['reason'].replace('_', ' ')}): {u['input']}")
    if cfg.out:
        print(f"results: {cfg.out}/results.json")
    return 0

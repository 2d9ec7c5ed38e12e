"""Flags of `midiforge drums extract|train|evaluate|render`; each run_* calls one library
function in `workflow` (or `synth`) and prints its result (the CLI is the only place that
prints). A model is named by a folder or a registry name."""

from __future__ import annotations

import argparse
from pathlib import Path

from midiforge import config as cfgmod
from midiforge.classifiers.drums.kit import STEMS


def _root(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")


def _defaults_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--defaults", help="YAML over the shipped per-stem thresholds (defaults.yaml)")


def add_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("stem_wav", help="the drum stem (.wav .flac .mp3 .ogg)")
    p.add_argument("--stem", required=True, choices=STEMS)
    p.add_argument("--out", help="output .mid (default: the stem's name with .mid, beside it)")
    p.add_argument("--use-ml-model", metavar="NAME", help="drum-filter model (registry name or "
                   "folder); without it the stem's fallback thresholds decide")  # fmt: skip
    _defaults_flag(p)
    _root(p)


def run_extract(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.classifiers.drums.workflow import extract, resolve_model

    del overrides  # extract has no config file; cli.py refuses overrides without --config
    model = resolve_model(args.use_ml_model, args.models_root) if args.use_ml_model else None
    out = args.out or str(Path(args.stem_wav).with_suffix(".mid"))
    s = extract(args.stem_wav, args.stem, out, model_folder=model, defaults=args.defaults)
    by = f"model {args.use_ml_model}" if model else f"{args.stem} fallback thresholds"
    print(f"{s['out']}: kept {s['kept']} of {s['detected']} detected hits "
          f"in {s['duration_s']:.1f} s ({by})")  # fmt: skip
    return 0


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stem", required=True, choices=STEMS)
    p.add_argument("--raw-dir", required=True, help="MIDI as detection proposed it")
    p.add_argument("--edited-dir", required=True, help="the same MIDI after the producer's edits")
    p.add_argument("--audio-dir", required=True, help="the stems, named as the MIDI files")
    p.add_argument("--output", required=True, help="registry name of the trained filter")
    p.add_argument("--model", choices=("forest", "logistic"), help="default forest")
    p.add_argument("--work-dir", help="where the model folder is written (default "
                   "out/drums/OUTPUT)")  # fmt: skip
    p.add_argument("--no-register", action="store_true", help="write the folder only")
    p.add_argument("--config", help="YAML config file (DrumTrainConfig)")
    p.add_argument("--seed", type=int, help="random seed (same seed, same model)")
    _root(p)


def run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.classifiers.drums.model import DrumTrainConfig
    from midiforge.classifiers.drums.workflow import register, train
    from midiforge.registry import validate_name

    validate_name(args.output)  # before minutes of feature extraction, not after
    flags = {"model": args.model, "seed": args.seed}
    cfg = cfgmod.load(
        DrumTrainConfig,
        args.config,
        overrides,
        filter={k: v for k, v in flags.items() if v is not None} or None,
    )
    folder = Path(args.work_dir or Path("out/drums") / args.output)
    r = train(args.stem, args.raw_dir, args.edited_dir, args.audio_dir, folder, cfg)
    m = r["metrics"]
    print(f"{args.stem} filter ({cfg.filter.model}) on {m['songs']} songs, {m['detections']} "
          f"detections ({m['keep']} keep / {m['remove']} remove)")  # fmt: skip
    for k in ("accuracy", "precision", "recall", "f1"):
        print(f"  cv {k:9s} {m[f'cv_{k}']:.3f} +- {m[f'cv_{k}_std']:.3f}")
    print("  importance: " + ", ".join(f"{k} {v:.3f}" for k, v in r["importance"].items()))
    for u in r["unpaired"]:
        print(f"  left out {u['song']}: {u['reason'].replace('_', ' ')}")
    print(f"  importance plot: {folder / 'importance.png'}")
    if not args.no_register:
        manifest = register(folder, args.output, r, args.models_root)
        print(f"registered {manifest.name} version {manifest.version} (from {folder})")
    else:
        print(f"wrote {folder}")
    return 0


def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="drum-filter model (registry name or folder); without it "
                   "only the fallback thresholds are scored")  # fmt: skip
    p.add_argument("--test-dir", required=True, help="folder with audio/, raw/, edited/")
    p.add_argument("--stem", choices=STEMS, help="default: the model's stem")
    p.add_argument("--out", help="folder for results.json and confusion.png")
    _defaults_flag(p)
    _root(p)


def run_evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.classifiers.drums.workflow import evaluate, resolve_model

    del overrides
    model = resolve_model(args.model, args.models_root) if args.model else None
    r = evaluate(model, args.test_dir, args.stem, out=args.out, defaults=args.defaults)
    print(f"{r['stem']}: {r['songs']} songs, {r['detections']} detections, {r['edited_hits']} "
          f"edited hits (detection found {r['detection_recall']:.1%})")  # fmt: skip
    print(f"{'':9s} {'P':>6s} {'R':>6s} {'F1':>6s}   tp   fp   fn   tn")
    for k in ("model", "fallback"):
        if r[k] is None:
            continue
        c = r["confusion"][k]
        print(f"{k:9s} {r[k]['precision']:6.3f} {r[k]['recall']:6.3f} {r[k]['f1']:6.3f} "
              f"{c['tp']:4d} {c['fp']:4d} {c['fn']:4d} {c['tn']:4d}")  # fmt: skip
    if r["f1_gain"] is not None:
        print(f"model F1 - fallback F1: {100 * r['f1_gain']:+.1f} points")
    for u in r["unpaired"]:
        print(f"left out {u['song']}: {u['reason'].replace('_', ' ')}")
    if args.out:
        print(f"wrote {Path(args.out) / 'results.json'} and confusion.png")
    return 0


def add_render(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stem", required=True, choices=STEMS)
    p.add_argument("--songs", type=int, default=12)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--out", required=True, help="folder for audio/, raw/, edited/")
    p.add_argument("--seed", type=int, default=0)
    _defaults_flag(p)


def run_render(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.classifiers.drums.detect import load_defaults
    from midiforge.classifiers.drums.synth import RenderConfig, render_songs

    del overrides
    r = RenderConfig(stem=args.stem, songs=args.songs, seconds=args.seconds, seed=args.seed)
    r.validate_config()
    songs = render_songs(r.stem, r.songs, r.seconds, args.out, r.seed,
                         defaults=load_defaults(args.defaults))  # fmt: skip
    hits = sum(s["hits"] for s in songs)
    detections = sum(s["detections"] for s in songs)
    print(f"{len(songs)} {args.stem} songs: {hits} hits, {detections} detections -> {args.out}")
    return 0

"""Flags of `midiforge style train | evaluate | predict`; each run_* calls the library."""

from __future__ import annotations

import argparse
import json

from midiforge import config as cfgmod


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models-root", help="model registry root (default $MIDIFORGE_MODELS)")


def add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", required=True, help="registry name (pushed), or a folder path with a '/'"
    )
    p.add_argument("--styles", help="corpus styles, comma-separated (default all four)")
    p.add_argument(
        "--user-styles", action="append", help="folder of STYLE_NAME/*.wav to add; repeatable"
    )
    p.add_argument("--pieces-per-style", type=int, help="corpus pieces per style (default 40)")
    p.add_argument("--data", help="render folder (default out/style/renders/HASH, reused)")
    p.add_argument("--config", help="YAML config file (StyleConfig; train.* are the sweep keys)")
    p.add_argument("--seed", type=int, help="same seed, same renders, split and model")
    _common(p)


def run_train(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.classifiers.style.run import StyleConfig, train_and_export

    seed = [f"--train.seed={args.seed}"] if args.seed is not None else []
    cfg = cfgmod.load(
        StyleConfig,
        args.config,
        [*seed, *overrides],
        out=args.out,
        styles=args.styles,
        user_styles=args.user_styles,
        pieces_per_style=args.pieces_per_style,
        data_dir=args.data,
        seed=args.seed,
        models_root=args.models_root,
    )
    s = train_and_export(cfg)
    test = s.get("test")
    print(
        f"{cfg.out}: {len(s['labels'])} styles ({', '.join(s['labels'])}), "
        f"{s['parameters']:,} parameters, {s['clips']['train']} training clips, "
        f"best val accuracy {s['val_accuracy']:.3f} (epoch {s['best_epoch']})"
    )
    if test:
        f1 = "  ".join(f"{k} {v:.2f}" for k, v in test["per_class_f1"].items())
        print(
            f"held out: accuracy {test['accuracy']:.3f} over {test['recordings']} recordings of "
            f"{test['pieces']} pieces; F1 {f1}"
        )
    print(f"model folder: {s['folder']}")
    return 0


def add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="registry name or model folder")
    p.add_argument(
        "--data", help="folder of STYLE_NAME/*.wav to score (default: the model's test pieces)"
    )
    p.add_argument("--out", help="folder for results.json and confusion.png")
    _common(p)


def run_evaluate(args: argparse.Namespace, overrides: list[str]) -> int:
    from midiforge.classifiers.style.run import evaluate_model

    if overrides:
        raise cfgmod.ConfigError(f"style evaluate takes no --key=value overrides: {overrides}")
    r = evaluate_model(args.model, data=args.data, out=args.out, models_root=args.models_root)
    print(
        f"accuracy {r['accuracy']:.3f} over {r['recordings']} recordings "
        f"({r['pieces']} pieces; per piece {r['piece_accuracy']:.3f})"
    )
    for style, f1 in r["per_class_f1"].items():
        print(f"  {style:12s} F1 {f1:.3f}")
    print(json.dumps(r["confusion"]))
    if args.out:
        print(f"results: {args.out}/results.json, confusion.png")
    return 0


def add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("audio", help="an audio file (wav, flac, mp3, ogg)")
    p.add_argument("--model", required=True, help="registry name or model folder")
    p.add_argument("--top", type=int, default=3, help="how many styles to list")
    _common(p)


def run_predict(args: argparse.Namespace, overrides: list[str]) -> int:
    from pathlib import Path

    from midiforge import audio
    from midiforge.classifiers.style.classifier import (
        StyleClassifier,
        StyleInputError,
        resolve_model_dir,
    )

    if overrides:
        raise cfgmod.ConfigError(f"style predict takes no --key=value overrides: {overrides}")
    path = Path(args.audio)
    try:
        x, sr = audio.decode(path.read_bytes())
    except (OSError, audio.AudioError) as e:
        raise StyleInputError("unreadable", f"{path}: {e}") from None
    clf = StyleClassifier.load(resolve_model_dir(args.model, args.models_root))
    for style, prob in clf.predict(x, sr, top=args.top):
        print(f"{style:12s} {prob:.3f}")
    return 0
